"""The pseudonymizer: one study in, a pseudonymized study (and its audit record) out, or a refusal.

Order of work for a study: read every instance once and gather the study's identifiers; per
instance drop (presentation states / secondary captures if the project says so), deface head
volumes and clean burned-in text and overlays where needed, apply the action table recursively
(sequences at any depth, private blocks by their creator), apply the project's conventions and
tag rules, rebuild the file meta, scan the result for residual identifiers, and write it.
Output goes to a temporary folder that is renamed into place only when every instance
succeeded: nothing partial is ever left to send.

Speed comes from repetition: within a study most elements are the same bytes in every instance,
so each distinct element's outcome is computed once and reused (``_apply_top``), and elements
left as read are copied from the input's bytes (``_file_bytes``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.filewriter import EXPLICIT_VR_LENGTH_32, write_data_element, write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from .. import __version__
from ..integrity import truncated_element
from . import phi, pixels, visual
from .keys import Pseudonyms, shift_date, shift_datetime
from .options import CID7050, OPTION_CODES, DeidOptions
from .profile import Rule, edition, safe_private, table_for

PRESENTATION_STATE_PREFIX = "1.2.840.10008.5.1.4.1.1.11."
DUMMY = {"PN": "ANONYMIZED", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED", "ST": "ANONYMIZED",
         "UT": "ANONYMIZED", "UC": "ANONYMIZED", "CS": "ANONYMIZED", "DA": "19000101", "TM": "000000",
         "DT": "19000101000000", "AS": "000Y", "DS": "0", "IS": "0", "AE": "ANONYMIZED", "UR": ""}
CONVENTION_TAGS = {0x00100010, 0x00100020, 0x00080080, 0x00080090, 0x00120050, 0x00120020, 0x00120021, 0x00080050, 0x00200010}


class DeidRefused(Exception):
    """The study cannot be made safe; it stays in quarantine. ``reason`` is for people, ``details`` are tag paths."""

    def __init__(self, reason: str, details: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details or []

    def __str__(self) -> str:
        more = f" ({'; '.join(self.details[:10])}{'; ...' if len(self.details) > 10 else ''})" if self.details else ""
        return f"{self.reason}{more}"


def _lines(text: str) -> list[tuple[str, str]]:
    out = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, sep, pattern = line.partition("=")
        if not sep:
            raise ValueError(f"rule {line!r} is not Keyword=regex")
        re.compile(pattern.strip())
        out.append((keyword.strip(), pattern.strip()))
    return out


@dataclass
class ProjectPolicy:
    """A project's de-identification settings (from the Projects registry)."""

    project: str
    options: DeidOptions = field(default_factory=DeidOptions.defaults)
    drop_presentation_states: bool = False
    drop_secondary_captures: bool = False
    pixel_exclusions: list[tuple[str, str]] = field(default_factory=list)
    tag_rules: list[tuple[str, str]] = field(default_factory=list)
    uid_root: str | None = None
    date_shift_max_days: int = 365

    @classmethod
    def from_registry(cls, record: dict, uid_root: str | None = None, date_shift_max_days: int = 365) -> "ProjectPolicy":
        chosen = [code for code in OPTION_CODES.values() if record.get(f"deid_options___{code}") == "1"]
        options = DeidOptions(**{c: True for c in chosen}) if chosen else DeidOptions.defaults()
        try:
            max_days = int(record.get("deid_date_shift_days") or date_shift_max_days)
        except ValueError:
            max_days = date_shift_max_days
        try:
            exclusions, rules = _lines(record.get("deid_pixel_exclude", "")), _lines(record.get("deid_tag_rules", ""))
        except (ValueError, re.error) as exc:
            raise DeidRefused(f"the project's de-identification rules are invalid: {exc}") from None
        return cls(project=record.get("project_name", ""), options=options,
                   drop_presentation_states=record.get("deid_drop_pr") == "1", drop_secondary_captures=record.get("deid_drop_sc") == "1",
                   pixel_exclusions=exclusions, tag_rules=rules, uid_root=(record.get("deid_uid_root") or "").strip() or uid_root,
                   date_shift_max_days=max_days)


@dataclass
class StudyResult:
    study_uid: str
    files: list[Path]
    images: int
    series: list[dict]
    study_date: str
    description: str
    modalities: list[str]
    dropped: int
    audit_path: Path
    pixel_cleaned: int
    output_dir: Path


@dataclass
class _StudyRun:
    """What the instances of one study share while the engine works through them."""

    inputs: list[Path]
    headers: list[Dataset | None]  # None: not kept (read again when its turn comes) or done
    keys: list[tuple[str, int, str]]  # sort key of each instance: series, instance number, SOP instance UID
    idents: phi.Identifiers
    allowed: set[str]  # values the residual-identifier scan accepts: the participant, project and event
    participant: str
    event: str
    classifications: dict[str, list[str]]
    partial: Path
    output_dir: Path
    files: list[Path] = field(default_factory=list)
    audit_instances: list[dict] = field(default_factory=list)
    series_info: dict[str, dict] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # instances written per output series folder
    dropped: int = 0
    cleaned: int = 0
    defaced: dict[int, Dataset] = field(default_factory=dict)  # defaced datasets waiting for their turn
    defaced_series: set[str] = field(default_factory=set)
    defaced_members: set[int] = field(default_factory=set)


class Pseudonymizer:
    def __init__(self, policy: ProjectPolicy, key: bytes, key_id: str) -> None:
        self.policy = policy
        self.key_id = key_id
        self.pseudo = Pseudonyms(key, policy.uid_root)
        self.table = table_for(policy.options)
        opts = policy.options
        self.shift = opts.retain_long_modified_dates and not opts.retain_long_full_dates
        self.safe = safe_private() if opts.retain_safe_private else {}
        self._overlays_ok: set = set()
        self._reset_memo()

    # -- one study ------------------------------------------------------------------------------
    def study(self, inputs: list[Path], output_dir: Path, participant: str, event: str = "",
              classifications: dict[str, list[str]] | None = None, progress: Callable[[int, int], None] | None = None) -> StudyResult:
        output_dir = Path(output_dir)
        partial = output_dir.with_name(output_dir.name + ".partial")
        audit_path = output_dir.with_name(output_dir.name + ".audit.json")
        shutil.rmtree(partial, ignore_errors=True)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        try:
            return self._study(sorted(Path(p) for p in inputs), output_dir, partial, audit_path, participant, event,
                               classifications or {}, progress)
        except DeidRefused:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        except Exception as exc:  # fail closed: any error is a refusal with a reason, nothing left behind
            shutil.rmtree(partial, ignore_errors=True)
            raise DeidRefused(f"pseudonymization failed: {type(exc).__name__}: {exc}"[:500]) from None

    def _study(self, inputs, output_dir, partial, audit_path, participant, event, classifications, progress) -> StudyResult:
        if not inputs:
            raise DeidRefused("the study has no instances")
        headers, keys, idents = self._read_headers(inputs)
        self.offset = self.pseudo.date_offset(participant, self.policy.date_shift_max_days)
        self._reset_memo()
        run = _StudyRun(inputs=inputs, headers=headers, keys=keys, idents=idents, participant=participant, event=event,
                        allowed={participant, self.policy.project, event, f"EventName:{event}"} - {""},
                        classifications=classifications, partial=partial, output_dir=output_dir)
        partial.mkdir(parents=True, mode=0o700)
        for done, i in enumerate(sorted(range(len(inputs)), key=keys.__getitem__), 1):
            self._instance(run, i)
            if progress:
                progress(done, len(inputs))
        if not run.files:
            raise DeidRefused("nothing left to send: every instance was dropped by the project's rules")
        return self._finish(run, audit_path)

    def _read_headers(self, inputs: list[Path]) -> tuple[list[Dataset | None], list[tuple[str, int, str]], phi.Identifiers]:
        """Read every instance and gather the study's identifiers. The first ``HEADERS_KEPT`` headers are kept
        for the instance loop (large values stay on disk until written); the rest are read again there, so
        memory stays bounded for studies of tens of thousands of images. Also each instance's sort key:
        (series, instance number, SOP instance UID)."""
        idents = phi.Identifiers()
        headers: list[Dataset | None] = []
        keys = []
        for n, path in enumerate(inputs):
            header = _read(path)
            missing = [k for k in REQUIRED_UIDS if not str(header.get(k, "") or "").strip()]
            if missing:
                raise DeidRefused(f"an instance lacks {', '.join(missing)}: not a storable DICOM instance")
            idents.add_dataset(header)
            if self.policy.options.clean_visual_features:
                reason = visual.refuses_visual_features(header)
                if reason:
                    raise DeidRefused(f"recognizable visual features cannot be removed: {reason}")
            keys.append((str(header.get("SeriesInstanceUID", "")), _int(header.get("InstanceNumber")), str(header.get("SOPInstanceUID", ""))))
            headers.append(header if n < HEADERS_KEPT else None)
        if self.policy.options.retain_uids:
            idents.uids.clear()  # kept on purpose: not a residual identifier
        return headers, keys, idents

    def _reset_memo(self) -> None:
        """Forget the previous study's outcomes: they depend on its identifiers and participant."""
        self._memo: dict = {}  # see _apply_top
        self._templates: dict = {}  # see _conventions
        self._creator_names: dict = {}  # see _creators
        self._misses: dict[int, int] = {}  # tag -> outcomes computed for it (see MEMO_MISSES_PER_TAG)
        self._review: dict[str, dict] = {}  # tag path -> Review entry (see _record)
        self._tally: dict[int, list] = {}  # id(shared outcome) -> [it, sightings after the first]
        self._rests: dict[tuple, "_Outcome"] = {}  # see _scan_set_values
        self._encoded: dict[int, tuple[RawDataElement, bytes]] = {}  # id(new element) -> (it, its encoded bytes)
        self._metas: dict[tuple, tuple[bytes, int, list[str]]] = {}  # see _file_meta

    def _instance(self, run: "_StudyRun", i: int) -> None:
        """One instance: drop it, or clean its pixels, apply the profile and conventions, scan, write, audit."""
        opts = self.policy.options
        path, header = run.inputs[i], run.headers[i] or _read(run.inputs[i])
        sop_class = str(header.get("SOPClassUID", ""))
        if (self.policy.drop_presentation_states and sop_class.startswith(PRESENTATION_STATE_PREFIX)
                or self.policy.drop_secondary_captures and sop_class in pixels.SECONDARY_CAPTURE):
            run.dropped += 1
            return
        series_uid = str(header.get("SeriesInstanceUID", ""))
        face_note = None
        if opts.clean_visual_features and series_uid not in run.defaced_series and visual.needs_defacing(header):
            face_note = self._deface(series_uid, run)
            run.defaced_members |= set(run.defaced)
            run.defaced_series.add(series_uid)
        raw = path.read_bytes()
        ds = run.defaced.pop(i, None) or header
        originals = {} if i in run.defaced_members else {id(e): e for e in ds.values()}
        run.headers[i] = None  # done with it
        changes: list[dict] = []
        if face_note is not None:
            changes.append({"path": "(7FE0,0010)", "action": "C", "rule": "clean_recognizable_visual_features", "series": face_note})
        pixel_note = None
        if opts.clean_pixel_data and pixels.needs_cleaning(ds, run.classifications.get(series_uid, []), self.policy.pixel_exclusions):
            try:
                pixel_note = pixels.clean(ds)
            except pixels.CannotClean as exc:
                raise DeidRefused(f"burned-in text cannot be removed: {exc}") from None
            run.cleaned += 1
            changes.append({"path": "(7FE0,0010)", "action": "C", "rule": "clean_pixel_data"})
        self._overlays_ok: set = set()
        if opts.clean_graphics and any(0x6000 <= t.group <= 0x601E for t in ds.keys()):
            try:
                for where in visual.clean_overlays(ds):
                    changes.append({"path": where, "action": "C", "rule": "clean_graphics: overlay"})
            except pixels.CannotClean as exc:
                raise DeidRefused(f"an overlay cannot be cleaned: {exc}") from None
            self._overlays_ok = {t for t in ds.keys() if 0x6000 <= t.group <= 0x601E and t.element == 0x3000}
        findings: list[str] = []
        self._apply_top(ds, changes, run.idents, run.allowed, findings)
        self._conventions(ds, run.participant, run.event, changes)
        self._tag_rules(ds, changes)
        meta_bytes, meta_findings = self._file_meta(ds, run.idents, run.allowed)
        findings += self._scan_set_values(ds, run.idents, run.allowed) + meta_findings
        if findings:
            raise DeidRefused("residual identifiers found in the pseudonymized output", findings)
        new_series = str(ds.SeriesInstanceUID)
        series_key = self.pseudo.identifier("series-folder", new_series, 12).lower()
        run.counters[series_key] = run.counters.get(series_key, 0) + 1
        out = run.partial / series_key / f"{run.counters[series_key]:05d}.dcm"
        out.parent.mkdir(exist_ok=True, mode=0o700)
        encoded = _file_bytes(ds, raw, originals, self._encoded, meta_bytes)
        out.write_bytes(encoded)
        run.files.append(run.output_dir / series_key / out.name)
        info = run.series_info.setdefault(new_series, {"series_uid": new_series, "description": str(ds.get("SeriesDescription", "")),
                                                       "modality": str(ds.get("Modality", "")), "images": 0})
        info["images"] += 1
        run.audit_instances.append({"input_sha256": hashlib.sha256(raw).hexdigest(), "output_sha256": hashlib.sha256(encoded).hexdigest(),
                                    "output": f"{series_key}/{out.name}", "pixels": pixel_note, "changes": changes})

    def _finish(self, run: "_StudyRun", audit_path: Path) -> StudyResult:
        """Write the audit record and the Review summary, then move the output into place."""
        first = dcmread(run.partial / run.files[0].relative_to(run.output_dir), stop_before_pixels=True)
        audit = {
            "software": f"FIONA {__version__}",
            "profile": f"DICOM PS3.15 Annex E Table E.1-1, edition {edition()}",
            "options": self.policy.options.enabled(),
            "project": self.policy.project,
            "key_id": self.key_id,
            "date_shift": "per participant (value not recorded)" if self.shift else "none",
            "instances": run.audit_instances,
            "dropped": run.dropped,
            "pixel_cleaned": run.cleaned,
        }
        fd = os.open(str(audit_path) + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(_audit_text(audit))
        os.replace(str(audit_path) + ".tmp", audit_path)
        review_path = run.output_dir.with_name(run.output_dir.name + ".review.json")
        review = self._review
        for outcome, later in self._tally.values():
            if later:
                _review_add(review, outcome.summary, later, first=False)
        review_path.write_text(json.dumps({"project": self.policy.project, "instances": len(run.files), "attributes": dict(sorted(review.items()))}))
        os.replace(run.partial, run.output_dir)
        date = str(first.get("StudyDate", ""))
        series = run.series_info.values()
        return StudyResult(
            study_uid=str(first.StudyInstanceUID), files=run.files, images=len(run.files), series=list(series),
            study_date=f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 and date.isdigit() else "",
            description=str(first.get("StudyDescription", "")), modalities=sorted({s["modality"] for s in series if s["modality"]}),
            dropped=run.dropped, audit_path=audit_path, pixel_cleaned=run.cleaned, output_dir=run.output_dir)

    # -- the action table, recursively ------------------------------------------------------------
    def _apply(self, ds: Dataset, path: str, changes: list[dict], idents: phi.Identifiers, top: bool = False) -> None:
        # Iterate over tags, not elements: an element is decoded only when its action needs its value;
        # untouched elements are written back byte for byte (and decoding every value costs most of the time).
        tags = list(ds.keys())
        creators = _creators(ds, tags, self._creator_names)
        kept_blocks: set[tuple[int, int]] = set()
        for tag in tags:
            if tag.is_private and tag.is_private_creator:
                continue
            if top and tag in CONVENTION_TAGS:
                continue
            block = (tag.group, tag.element >> 8)
            where = f"{path}({tag.group:04X},{tag.element:04X})"
            if self._element(ds, tag, where, changes, idents, creators.get(block, "") if tag.is_private else None) and tag.is_private:
                kept_blocks.add(block)
        _drop_unused_creators(ds, creators, kept_blocks)

    def _element(self, ds: Dataset, tag, where: str, changes: list[dict], idents: phi.Identifiers, creator: str | None) -> bool:
        """Apply the profile to one element (``creator``: its private block's creator). True if it is kept."""
        if tag.is_private:
            if (tag.group, tag.element & 0xFF) in self.safe.get(creator or "", ()):
                self._keep(ds, ds[tag], where, changes, idents, Rule("C", "retain_safe_private", "Safe private"))
                return tag in ds
            del ds[tag]
            changes.append({"path": where, "action": "X", "rule": self.table.private.source + ": private"})
            return False
        rule = self.table.lookup(int(tag))
        action = rule.action if rule else "K"
        if action in ("K", "C"):
            vr = _vr(ds, tag)
            if vr in ("SQ", "DA", "DT") or (action == "C" and vr in CLEANABLE_VRS):
                self._keep(ds, ds[tag], where, changes, idents, rule)
            return tag in ds
        label = f"{rule.source}: {rule.name}"
        if action == "X":
            del ds[tag]
            changes.append({"path": where, "action": action, "rule": label})
            return False
        elem = ds[tag]
        if action == "Z":
            elem.value = Sequence() if elem.VR == "SQ" else ("" if elem.VR not in ("US", "SS", "UL", "SL", "FL", "FD", "OB", "OW") else None)
        elif action == "D":
            if elem.VR == "SQ":
                elem.value = Sequence()
            elif elem.VR in ("DA", "DT") and self.shift:
                self._shift(elem)
            elif elem.VR == "UI":
                elem.value = self._uids(elem.value)
            elif elem.VR in ("OB", "OW", "UN", "OF", "OD", "OL", "OV"):
                elem.value = bytes(len(elem.value or b""))  # same length, content zeroed
            else:
                elem.value = DUMMY.get(elem.VR, None)
        elif action == "U":
            if elem.VR == "SQ":  # a reference sequence: its UIDs are replaced item by item
                for i, item in enumerate(elem.value or []):
                    self._apply(item, f"{where}[{i}].", changes, idents)
                return True
            elem.value = self._uids(elem.value) if elem.VR == "UI" else elem.value
        changes.append({"path": where, "action": action, "rule": label})
        return True

    # -- the top level of an instance, memoized ---------------------------------------------------
    def _apply_top(self, ds: Dataset, changes: list[dict], idents: phi.Identifiers, allowed: set[str], findings: list[str]) -> None:
        """The action table over an instance's top level, with each element's outcome remembered.

        Within a study most elements repeat byte for byte from instance to instance (patient, study,
        series and acquisition attributes), and every action is a deterministic function of the
        element's bytes, its private creator and the study's identifiers. So the outcome (the new
        bytes or a deletion, the audit entries, the residual-identifier findings and the Review
        summary) is computed once per distinct element and reused: untouched elements are never
        decoded, changed ones are written as already-encoded bytes.
        """
        items = list(ds.items())
        creators = _creators(ds, [tag for tag, _ in items], self._creator_names)
        kept_blocks: set[tuple[int, int]] = set()
        encoding = (ds.original_encoding, str(ds._character_set))
        for tag, item in items:
            group, element = tag >> 16, tag & 0xFFFF  # plain ints: Tag's own properties cost a call each
            private = group & 1
            if (private and 0x10 <= element <= 0xFF) or int(tag) in CONVENTION_TAGS or group == 0x7FE0:
                continue  # creators after their blocks; conventions are set afterwards; pixel data as is
            block = (group, element >> 8)
            creator = creators.get(block, "") if private else None
            outcome = self._outcome(ds, tag, creator, idents, allowed, encoding, item=item)
            if outcome.delete:
                del ds[tag]
            else:
                if outcome.raw is not None:
                    ds[tag] = outcome.raw
                if private:
                    kept_blocks.add(block)
            self._record(outcome, changes, findings)
        _drop_unused_creators(ds, creators, kept_blocks)
        for block in kept_blocks:
            tag = Tag(block[0], block[1])
            if tag in ds:
                self._record(self._outcome(ds, tag, None, idents, allowed, encoding, keep=True), changes, findings)

    def _outcome(self, ds: Dataset, tag, creator: str | None, idents: phi.Identifiers, allowed: set[str], encoding,
                 keep: bool = False, item=None) -> "_Outcome":
        item = ds.get_item(tag) if item is None else item
        value = _memo_value(item)
        key = None
        if value is not None:
            key = (int(tag), item.VR, value, creator, tag in self._overlays_ok, keep, encoding)
            known = self._memo.get(key)
            if known is not None:
                return known
            misses = self._misses[int(tag)] = self._misses.get(int(tag), 0) + 1
            if misses > MEMO_MISSES_PER_TAG:
                key = None  # a value new in (nearly) every instance, such as SOPInstanceUID: not worth remembering
        scratch = Dataset()
        scratch._parent_encoding = ds._character_set
        scratch.set_original_encoding(*ds.original_encoding, ds._character_set)
        scratch[tag] = item if item.value is not None or not item.is_raw else ds[tag]  # deferred values are read now
        context = None
        if creator is not None and item.VR in (None, "UN"):
            # a private element whose VR the file does not give (implicit VR): pydicom finds it in its private
            # dictionary by the block's creator, which must be in the same dataset
            context = Tag(tag.group, tag.element >> 8)
            if context in ds:
                scratch[context] = ds.get_item(context)
        changes: list[dict] = []
        if not keep:
            self._element(scratch, tag, f"({tag.group:04X},{tag.element:04X})", changes, idents, creator)
        if context is not None and context in scratch:
            del scratch[context]
        shared = key is not None
        if tag not in scratch:
            outcome = _Outcome(True, None, changes, [], [], shared)
        else:
            # unchanged elements keep their own bytes (a sequence too: re-encoding it out of its dataset's context
            # could resolve an ambiguous VR such as US or SS differently)
            raw = self._encode(scratch, tag, ds, keep=shared) if changes else None
            outcome = _Outcome(False, raw, changes, phi.scan(scratch, idents, allowed), _summary_entries(scratch), shared)
        if key is not None:
            self._memo[key] = outcome
        return outcome

    def _record(self, outcome: "_Outcome", changes: list[dict], findings: list[str]) -> None:
        """Add an outcome's audit entries and findings to the instance's, and its summary to Review: at its
        first sighting in full; a shared outcome's later sightings are only counted, and added at the end."""
        changes.extend(outcome.changes)
        findings.extend(outcome.findings)
        if not outcome.summary:
            return
        seen = self._tally.get(id(outcome)) if outcome.shared else None
        if seen is not None:
            seen[1] += 1
            return
        _review_add(self._review, outcome.summary, 1, first=True)
        if outcome.shared:
            self._tally[id(outcome)] = [outcome, 0]  # shared outcomes live in the memo: their ids stay their own

    def _encode(self, scratch: Dataset, tag, ds: Dataset, keep: bool = True) -> RawDataElement:
        """One element encoded as ``ds`` is; with ``keep`` its bytes are remembered (writing it again costs a copy)."""
        raw, data = _encode(scratch, tag, ds)
        if keep:
            self._encoded[id(raw)] = (raw, data)
        return raw

    def _keep(self, ds: Dataset, elem: DataElement, where: str, changes: list[dict], idents: phi.Identifiers, rule: Rule | None) -> None:
        """Keep an element; clean it when its rule says C; shift its dates; recurse into sequences."""
        cleaning = rule is not None and rule.action == "C"
        label = f"{rule.source}: {rule.name}" if rule else "not in profile"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                self._apply(item, f"{where}[{i}].", changes, idents)
            return
        if elem.VR in ("DA", "DT"):
            if self.shift and elem.value not in (None, ""):
                self._shift(elem)
                changes.append({"path": where, "action": "C", "rule": f"{label}: date shifted"})
            elif cleaning and not self.shift:
                elem.value = ""
                changes.append({"path": where, "action": "Z", "rule": label})
            return
        if not cleaning or elem.value in (None, ""):
            return
        if elem.VR in phi.FREE_TEXT_VRS or elem.VR in ("CS", "AE"):
            values = list(elem.value) if elem.VM > 1 else [elem.value]
            cleaned = [idents.clean(str(v)) for v in values]
            if cleaned != [str(v) for v in values]:
                elem.value = cleaned if elem.VM > 1 else cleaned[0]
                changes.append({"path": where, "action": "C", "rule": f"{label}: identifiers removed from text"})
        elif elem.VR in ("OB", "OW", "UN", "OF", "OD", "OL", "OV"):
            if elem.tag in self._overlays_ok:
                return  # an overlay bitmap visual.clean_overlays has already cleaned
            del ds[elem.tag]  # other binary content cannot be cleaned: removed
            changes.append({"path": where, "action": "X", "rule": f"{label}: binary content removed"})

    def _shift(self, elem: DataElement) -> None:
        fn = shift_date if elem.VR == "DA" else shift_datetime
        if elem.VM > 1:
            elem.value = [fn(str(v), self.offset) for v in elem.value]
        else:
            elem.value = fn(str(elem.value), self.offset)

    def _uids(self, value):
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            return [self.pseudo.uid(str(v)) for v in value]
        return self.pseudo.uid(str(value)) if value else value

    # -- FIONA's conventions ------------------------------------------------------------------------
    def _conventions(self, ds: Dataset, participant: str, event: str, changes: list[dict]) -> None:
        """FIONA's conventions: the same encoded elements for every instance of the study, plus the hashed IDs."""
        encoding = (ds.original_encoding, str(ds._character_set))
        template = self._templates.get(encoding)
        if template is None:
            template = self._templates[encoding] = self._convention_template(ds, participant, event)
        elements, summary = template
        for tag, raw in elements.items():
            ds[tag] = raw
        if not event and "ClinicalTrialTimePointID" in ds:
            del ds.ClinicalTrialTimePointID
        if ds.get("AccessionNumber"):
            ds.AccessionNumber = self.pseudo.identifier("accession", str(ds.AccessionNumber), 16)
        if ds.get("StudyID"):
            ds.StudyID = self.pseudo.identifier("study-id", str(ds.StudyID), 16)
        self._record(summary, changes, [])
        for keyword in ("PatientName", "PatientID", "InstitutionName", "ReferringPhysicianName", "AccessionNumber", "StudyID"):
            changes.append({"path": keyword, "action": "D", "rule": "FIONA convention"})

    def _convention_template(self, ds: Dataset, participant: str, event: str) -> tuple[dict, "_Outcome"]:
        project, opts = self.policy.project, self.policy.options
        values = Dataset()
        values._parent_encoding = ds._character_set
        values.PatientName = participant
        values.PatientID = participant
        values.InstitutionName = project
        values.ReferringPhysicianName = f"EventName:{event}" if event else ""
        values.ClinicalTrialProtocolID = project
        values.ClinicalTrialProtocolName = project
        if event:
            values.ClinicalTrialTimePointID = event
        values.PatientIdentityRemoved = "YES"
        values.DeidentificationMethod = [f"FIONA {__version__}", f"PS3.15 E.1-1 {edition()}"]  # options: the code sequence
        codes = Sequence()
        for name in ["basic"] + opts.enabled():
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = CID7050[name][0], "DCM", CID7050[name][1]
            codes.append(item)
        values.DeidentificationMethodCodeSequence = codes
        values.LongitudinalTemporalInformationModified = "MODIFIED" if self.shift else ("UNMODIFIED" if opts.retain_long_full_dates else "REMOVED")
        return {tag: self._encode(values, tag, ds) for tag in values.keys()}, _Outcome(False, None, [], [], _summary_entries(values), True)

    def _scan_set_values(self, ds: Dataset, idents: phi.Identifiers, allowed: set[str]) -> list[str]:
        """Scan (and summarize) what was set after the memoized pass: hashed IDs and tag rules."""
        rest = Dataset()
        rest._parent_encoding = ds._character_set
        for keyword in ["AccessionNumber", "StudyID"] + [k for k, _ in self.policy.tag_rules]:
            if keyword in ds and ds.data_element(keyword).VR != "SQ":
                rest[ds.data_element(keyword).tag] = ds.data_element(keyword)
        summary = _summary_entries(rest)
        outcome = self._rests.get(tuple(summary))
        if outcome is None:
            outcome = self._rests[tuple(summary)] = _Outcome(False, None, [], [], summary, True)
        self._record(outcome, [], [])
        return phi.scan(rest, idents, allowed)

    def _deface(self, series_uid: str, run: "_StudyRun") -> dict:
        """Read a head series whole (defacing needs the volume), remove the face, keep the datasets for the instance loop."""
        members = [i for i, key in enumerate(run.keys) if key[0] == series_uid]
        datasets = [dcmread(run.inputs[i]) for i in members]
        try:
            note = visual.deface_series(datasets)
        except pixels.CannotClean as exc:
            raise DeidRefused(f"recognizable visual features cannot be removed: {exc}") from None
        run.defaced.update(zip(members, datasets))
        return note

    def _tag_rules(self, ds: Dataset, changes: list[dict]) -> None:
        for keyword, pattern in self.policy.tag_rules:
            if keyword not in ds or ds.data_element(keyword).VR == "SQ":
                continue
            m = re.search(pattern, str(ds.data_element(keyword).value))
            value = ("".join(g for g in m.groups() if g) if m.groups() else m.group(0)) if m else ""
            setattr(ds, keyword, value)
            changes.append({"path": keyword, "action": "C", "rule": "project tag rule"})

    def _file_meta(self, ds: Dataset, idents: phi.Identifiers, allowed: set[str]) -> tuple[bytes, list[str]]:
        """Rebuild the file meta (MediaStorageSOPInstanceUID = the new SOPInstanceUID); return it encoded, and
        what the residual-identifier scan found in it.

        pydicom encodes and the scan reads it once per SOP class, transfer syntax and UID length: between
        instances only MediaStorageSOPInstanceUID differs (its value is the SOPInstanceUID, scanned there),
        so its bytes are put in place of the first instance's.
        """
        old = ds.file_meta
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = old.TransferSyntaxUID
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = f"FIONA_{__version__}"[:16]
        ds.file_meta = meta
        uid = str(meta.MediaStorageSOPInstanceUID).encode("ascii")
        uid += b"\0" * (len(uid) % 2)
        key = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID), len(uid))
        known = self._metas.get(key)
        if known is None:
            fp = DicomBytesIO()
            write_file_meta_info(fp, meta, enforce_standard=True)
            fp.seek(0)
            at = next(e.value_tell for e in data_element_generator(fp, False, True) if e.tag == 0x00020003)
            holder = Dataset()
            holder.file_meta = meta
            known = self._metas[key] = (fp.getvalue(), at, phi.scan(holder, idents, allowed))
        data, at, findings = known
        return data[:at] + uid + data[at + len(uid):], findings


REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
HEADERS_KEPT = 1000  # headers kept from the first read: about 70 MB for clinical MR headers


def _read(path: Path) -> Dataset:
    """An instance's dataset, values over MEMO_MAX_BYTES left on disk; refused if unreadable or truncated (pydicom
    reads a truncated file without complaint, and what is missing must not go out as if it were whole)."""
    try:
        ds = dcmread(path, defer_size=MEMO_MAX_BYTES)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise DeidRefused(f"an instance cannot be read ({type(exc).__name__})") from None
    tag = truncated_element(ds, path.stat().st_size)
    if tag is not None:
        raise DeidRefused(f"an instance is truncated: ({tag.group:04X},{tag.element:04X}) ends before its stated length")
    return ds


REVIEW_EXAMPLES = 5
MEMO_MAX_BYTES = 64 * 1024  # larger values (pixel data, big private blobs) are handled each time, not remembered
MEMO_MISSES_PER_TAG = 256  # distinct values remembered per tag: enough for slice positions, bounded for per-instance UIDs


@dataclass(frozen=True)
class _Outcome:
    """What the profile does to one distinct top-level element (see ``Pseudonymizer._apply_top``)."""

    delete: bool
    raw: RawDataElement | None  # the new encoded element; None: keep the original bytes
    changes: list[dict]
    findings: list[str]
    summary: list[tuple[str, str, str, str]]
    shared: bool = False  # remembered and reused (in the memo or a template): counted by identity for Review


def _memo_value(item) -> object:
    """What identifies an element's value for the memo: its bytes, or a decoded scalar, or for a sequence
    its items' content; None if not worth it."""
    value = item.value
    if item.is_raw:
        return value if value is not None and len(value) <= MEMO_MAX_BYTES else None
    if item.VR == "SQ":
        budget = [MEMO_MAX_BYTES]
        content = _sequence_content(value or (), budget)
        return None if content is None else ("items", content)
    if isinstance(value, (str, int, float)):
        return ("decoded", value)
    if type(value).__name__ == "MultiValue" and all(isinstance(v, (str, int, float)) for v in value):
        return ("decoded", tuple(value))
    return None


def _sequence_content(items, budget: list[int]) -> tuple | None:
    """A sequence's items as nested tuples of (tag, VR, raw bytes or scalar): equal content, equal key.

    Used for a sequence something already decoded (one still raw is keyed by its bytes); its items' elements
    mostly stay raw, so this costs little decoding. None if an element is deferred, not simple, or the content exceeds ``budget`` bytes.
    """
    out = []
    for item in items:
        entries = []
        for tag, elem in item.items():
            if elem.VR == "SQ" and not elem.is_raw:
                value = _sequence_content(elem.value or (), budget)
            else:
                value = _memo_value(elem)
                budget[0] -= len(value) if isinstance(value, bytes) else 16
            if value is None or budget[0] < 0:
                return None
            entries.append((int(tag), elem.VR, value))
        out.append(tuple(entries))
    return tuple(out)


def _file_bytes(ds: Dataset, source: bytes | None = None, originals: dict | None = None, encoded: dict | None = None,
                meta: bytes | None = None) -> bytes:
    """The instance in the DICOM file format (preamble, file meta, dataset in its transfer syntax).

    Elements still exactly as they were read are copied from the input's bytes (``source``, with the
    raw elements pydicom read from it in ``originals``, by id): most of an instance, pixel data included,
    is never re-encoded. Elements the engine encoded (``encoded``: id -> (element, bytes)) are copied
    from those bytes. Everything else is written by pydicom's writer.
    """
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    fp = DicomBytesIO()
    if syntax.is_deflated or not syntax.is_transfer_syntax:
        ds.save_as(fp, enforce_file_format=True)  # pydicom deflates
        return fp.getvalue()
    fp.write(b"\0" * 128 + b"DICM")
    if meta is not None:
        fp.write(meta)  # ``ds.file_meta`` as encoded by ``Pseudonymizer._file_meta``
    else:
        write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
    implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    if source is None or (implicit, little) != ds.original_encoding or ds.original_character_set != ds._character_set:
        write_dataset(fp, ds)  # re-encoded (e.g. a new transfer syntax after pixel cleaning)
        return fp.getvalue()
    originals = originals or {}
    encoded = encoded or {}
    charset = ds._character_set
    for tag, elem in sorted(ds.items(), key=_tag_order):
        if tag & 0xFFFF == 0 and tag >> 16 > 6:
            continue  # retired group lengths are not written (as pydicom's writer does)
        if elem.is_raw:
            # (a truncated input never gets here: _read refuses it.) Copied only if read in the encoding being written (a file may say explicit VR and hold implicit)
            if (originals.get(id(elem)) is elem and elem.length != 0xFFFFFFFF
                    and elem.is_implicit_VR == implicit and elem.is_little_endian == little):
                header = 8 if implicit or elem.VR not in EXPLICIT_VR_LENGTH_32 else 12
                fp.write(source[elem.value_tell - header:elem.value_tell + elem.length])
                continue
            known = encoded.get(id(elem))
            if known is not None and known[0] is elem:
                fp.write(known[1])
                continue
            elem = ds[tag]  # decoded (and read, if deferred) by pydicom, to be written in this encoding
        write_data_element(fp, elem, charset)
    return fp.getvalue()


def _tag_order(entry) -> int:
    return int(entry[0])  # an int compares in C; a Tag in Python


def _review_add(review: dict[str, dict], summary, times: int, first: bool) -> None:
    """Count ``summary`` (tag path, keyword, VR, example) ``times`` into the Review: per tag path, how often it
    occurs and up to 50 example values with their counts. A value gets a place only at its first sighting
    (``first``), so counting an outcome's later sightings at the end gives the same result as counting each."""
    for key, keyword, vr, text in summary:
        entry = review.setdefault(key, {"keyword": keyword, "vr": vr, "count": 0, "values": {}})
        entry["count"] += times
        if text is not None:
            values = entry["values"]
            if text in values or (first and len(values) < 50):
                values[text] = values.get(text, 0) + times


def _audit_text(audit: dict) -> str:
    """The audit record as JSON: the study's part indented, then one line per instance (compact and readable)."""
    head = json.dumps({k: v for k, v in audit.items() if k != "instances"}, indent=1)
    lines = ",\n".join(json.dumps(i, separators=(",", ":")) for i in audit["instances"])
    return head[:-2] + ',\n "instances": [\n' + lines + "\n ]\n}\n"


def _creators(ds: Dataset, tags, names: dict) -> dict[tuple[int, int], str]:
    """Private Creator of each block, by (group, block). Values read as raw bytes are decoded once per distinct
    bytes and character set (``names`` remembers them) and left raw in ``ds``, so they are written as read."""
    out = {}
    charset = None
    for t in tags:
        if not (t.is_private and t.is_private_creator):
            continue
        item = ds.get_item(t)
        if item.is_raw and item.value is not None:
            charset = charset if charset is not None else ds._character_set  # a str or a list of them
            key = (item.value, item.VR, charset if isinstance(charset, str) else tuple(charset))
            name = names.get(key)
            if name is None:
                name = names[key] = str(convert_raw_data_element(item, encoding=charset, ds=ds).value or "").strip().upper()
        else:
            name = str(ds[t].value or "").strip().upper()
        out[(t.group, t.element)] = name
    return out


def _drop_unused_creators(ds: Dataset, creators: dict[tuple[int, int], str], kept_blocks: set[tuple[int, int]]) -> None:
    for group, block in creators:
        if (group, block) not in kept_blocks and (group << 16 | block) in ds:
            del ds[group << 16 | block]


def _encode(scratch: Dataset, tag, ds: Dataset) -> tuple[RawDataElement, bytes]:
    """One element encoded as ``ds`` is (transfer syntax and character set), by pydicom's writer and reader:
    the raw element and its bytes."""
    implicit, little = ds.original_encoding
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_data_element(fp, scratch[tag], ds._character_set)
    fp.seek(0)
    return next(data_element_generator(fp, implicit, little)), fp.getvalue()


def _summary_entries(ds: Dataset, prefix: str = "") -> list[tuple[str, str, str, str | None]]:
    """Tag, keyword, VR and an example value of every element, nested ones too (for Review)."""
    out = []
    for elem in ds:
        if elem.tag == 0x7FE00010:
            continue
        key = f"{prefix}({elem.tag.group:04X},{elem.tag.element:04X})"
        keyword = elem.keyword or ("private" if elem.tag.is_private else "")
        if elem.VR == "SQ":
            out.append((key, keyword, elem.VR, None))
            for item in elem.value or []:
                out.extend(_summary_entries(item, key + ">"))
            continue
        text = "<binary>" if elem.VR in ("OB", "OW", "UN", "OF", "OD", "OL", "OV") else str(elem.value)[:80]
        out.append((key, keyword, elem.VR, text))
    return out


CLEANABLE_VRS = phi.FREE_TEXT_VRS | {"CS", "AE", "OB", "OW", "UN", "OF", "OD", "OL", "OV"}


def _vr(ds: Dataset, tag) -> str:
    """An element's VR without decoding its value (the dictionary's for implicit-VR data)."""
    vr = ds.get_item(tag).VR
    if vr in (None, "UN"):
        try:
            return dictionary_VR(tag)
        except KeyError:
            return "UN"
    return vr


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
