"""Structured logs: one event per line, correlation ids, and no identifier or secret ever written."""

import io
import json
import logging

from fiona_redcap import logs


def capture(fmt="kv"):
    stream = io.StringIO()
    logs.setup("DEBUG", fmt, stream=stream)
    return stream


def test_key_value_lines_with_correlation_id():
    stream = capture()
    log = logs.get_logger("fiona.test")
    with logs.correlation("3f2a9c"):
        logs.log_event(log, "study.complete", images=12, note="two words")
    line = stream.getvalue().strip()
    assert "\n" not in line
    assert "event=study.complete" in line and "cid=3f2a9c" in line and "images=12" in line
    assert 'note="two words"' in line


def test_json_lines():
    stream = capture("json")
    logs.log_event(logs.get_logger("fiona.test"), "assoc.accepted", calling_aet="MODALITY")
    record = json.loads(stream.getvalue())
    assert record["event"] == "assoc.accepted" and record["calling_aet"] == "MODALITY" and record["level"] == "info"


def test_planted_identifiers_never_reach_the_log():
    stream = capture()
    log = logs.get_logger("fiona.test")
    logs.register_sensitive("DOE^JANE^Q", "PID-0042-XYZ", "ACC778899")
    logs.log_event(log, "oops", detail="patient DOE^JANE^Q with id PID-0042-XYZ, accession ACC778899")
    log.warning("free text mentioning Jane Doe and pid-0042-xyz")
    try:
        raise ValueError("cannot parse ACC778899")
    except ValueError:
        log.exception("failed")
    text = stream.getvalue()
    for planted in ("DOE^JANE", "PID-0042-XYZ", "pid-0042-xyz", "ACC778899", "JANE"):
        assert planted not in text
    assert text.count(logs.MASK) >= 4


def test_tokens_are_masked():
    stream = capture()
    logging.getLogger("fiona.test").info("calling REDCap with token 0123456789ABCDEF0123456789ABCDEF")
    logging.getLogger("fiona.test").info("super " + "ab" * 32)
    text = stream.getvalue()
    assert "0123456789ABCDEF0123456789ABCDEF" not in text and "ab" * 32 not in text


def test_tracebacks_are_reduced_to_type_and_message():
    stream = capture()
    try:
        secret_local = "should-not-appear"  # noqa: F841
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("fiona.test").exception("crash")
    text = stream.getvalue()
    assert 'error="RuntimeError: boom"' in text and "Traceback" not in text
