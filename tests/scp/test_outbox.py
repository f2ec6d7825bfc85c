"""The REDCap outbox: a rejected import is kept aside (never dropped) and logged without identifiers."""

import io

from fiona_redcap import logs
from fiona_redcap.quarantine import Quarantine
from scp.completion import Completion


def test_rejected_import_is_kept_and_logged_without_identifiers(fiona_control):
    stream = io.StringIO()
    logs.setup("INFO", "kv", stream=stream)
    completion = Completion(fiona_control, {"main": Quarantine(fiona_control.data_dir)})
    bad_uid = "1.2.826.0.1.99999.4711"
    completion.outbox.put("key1", {"study_key": "key1", "rows": [{"study_uid": bad_uid, "study_num_images": "many", "study_accession": "ACC-SECRET"}]})
    good = completion.outbox.put("key2", {"study_key": "key2", "rows": [{"study_uid": "1.2.3.9", "study_num_images": "3"}]})
    assert completion.flush() == 1  # the good one still goes through
    assert not good.exists() and len(completion.outbox) == 0
    kept = list((fiona_control.data_dir / "outbox" / "rejected").glob("*.json"))
    assert len(kept) == 1 and "ACC-SECRET" in kept[0].read_text()
    text = stream.getvalue()
    assert "event=redcap.rejected" in text and bad_uid not in text and "ACC-SECRET" not in text and "many" not in text
