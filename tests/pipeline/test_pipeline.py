"""End to end with real parts: storescu → fiona scp → Incoming → assignment → scheduler → Orthanc."""

import json


from fiona_redcap.state import client, transfers
from tests.fixtures.dicom import Identity
from tests.pipeline.conftest import study_files_identifiers


def assert_pseudonymized_in_pacs(pipeline, study, participant, mapped_uid):
    instances = pipeline.pacs.instances_of(mapped_uid)
    assert len(instances) == len(study.files)
    forbidden = study_files_identifiers(study)
    for inst in instances:
        tags = pipeline.pacs.get(f"/instances/{inst['ID']}/tags?simplify")
        text = json.dumps(tags)
        assert tags["PatientID"] == participant
        leaked = [v for v in forbidden if v in text]
        assert not leaked, f"identifiers in the research PACS: {leaked}"


def test_coupling_list_study_arrives_pseudonymized_verified_and_in_project_redcap(pipeline, new_study):
    rc = pipeline.research_project("STUDY_A", regex=r"SA[0-9]{3}")
    study = new_study(series=2, images=3)
    pipeline.couple(study.identity.accession, "STUDY_A", "SA001")
    pipeline.send(study)
    pipeline.wait_incoming(study.study_uid)

    pipeline.run("create-transfer-requests", "anonymize-and-send")

    (t,) = pipeline.transfers(study.study_uid)
    assert (t.state, t.source, t.participant, t.images_sent, t.images_verified) == ("verified", "coupling", "SA001", 6, 6), t.last_error
    assert t.mapped_study_uid and t.mapped_study_uid != study.study_uid and not t.lease
    assert_pseudonymized_in_pacs(pipeline, study, "SA001", t.mapped_study_uid)
    imaging = [r for r in rc.export_records() if r.get("redcap_repeat_instrument") == "imaging"]
    assert [(r["record_id"], r["imaging_study_uid"], r["imaging_images"]) for r in imaging] == [("SA001", t.mapped_study_uid, "6")]

    # Running everything again changes nothing: no second request, no second Imaging instance.
    pipeline.run("create-transfer-requests", "anonymize-and-send", "resend-project", "verify", "populate-projects")
    assert len(pipeline.transfers(study.study_uid)) == 1
    assert len([r for r in rc.export_records() if r.get("redcap_repeat_instrument") == "imaging"]) == 1
    assert len(pipeline.pacs.instances_of(t.mapped_study_uid)) == 6


def test_assignment_made_as_a_redcap_form_entry_is_sent(pipeline, new_study):
    pipeline.research_project("FORMPROJ", regex=r"F[0-9]{2}", redcap=False)
    study = new_study(series=1, images=2)
    pipeline.send(study)
    pipeline.wait_incoming(study.study_uid)
    # What a person filling the transfers form produces: project, participant, requested date; no state.
    proj = client.control_project(pipeline.cfg, "incoming")
    proj.import_records([{"study_uid": study.study_uid, "redcap_repeat_instrument": "transfers", "redcap_repeat_instance": "new",
                          "transfer_requested_at": transfers.now_text(), "transfer_project": "FORMPROJ",
                          "transfer_participant": "F07", "transfer_source": "form", "transfers_complete": "2"}])
    pipeline.run("anonymize-and-send")
    (t,) = pipeline.transfers(study.study_uid)
    assert t.state == "verified", t.last_error
    assert_pseudonymized_in_pacs(pipeline, study, "F07", t.mapped_study_uid)


def test_autoid_gives_same_patient_the_same_new_id(pipeline, new_study):
    rc = pipeline.research_project("AUTOPROJ", regex=r"AU[0-9]{4}", autoid_aet="AUTOID1")
    rc.import_records([{"record_id": "AU0001"}])  # an existing participant the generator must not reuse
    port = pipeline.add_site("autoid", "AUTOID1")  # the project's own called AE title, a receiving site of its own
    first = new_study(series=1, images=2, ident=Identity(patient_id="PAT-A", accession="ACC-A1"))
    second = new_study(series=1, images=1, ident=Identity(patient_id="PAT-A", accession="ACC-A2"))
    other = new_study(series=1, images=1, ident=Identity(patient_id="PAT-B", accession="ACC-B1"))
    for s in (first, second, other):
        pipeline.send(s, called="AUTOID1", port=port)
        pipeline.wait_incoming(s.study_uid)
    pipeline.run("populate-autoid", "anonymize-and-send")
    ids = {}
    for s in (first, second, other):
        (t,) = pipeline.transfers(s.study_uid)
        assert (t.state, t.source, t.project) == ("verified", "autoid", "AUTOPROJ"), t.last_error
        ids[s.study_uid] = t.participant
        assert_pseudonymized_in_pacs(pipeline, s, t.participant, t.mapped_study_uid)
    assert ids[first.study_uid] == ids[second.study_uid] != ids[other.study_uid]
    assert all(p != "AU0001" and len(p) == 6 for p in ids.values())
    autoid_rows = client.control_project(pipeline.cfg, "autoid").export_records()
    assert len(autoid_rows) == 2
    assert not any("PAT-" in json.dumps(r) for r in autoid_rows)
    imaging = [r for r in rc.export_records() if r.get("redcap_repeat_instrument") == "imaging"]
    assert len(imaging) == 3
