"""Validation as REDCap does it: of imported values against the dictionary, and of a dictionary itself."""

from __future__ import annotations

import datetime as dt
import re

FIELD_TYPES = {"text", "notes", "dropdown", "radio", "checkbox", "yesno", "truefalse", "file", "calc", "sql", "descriptive", "slider"}
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+'\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}$")
INT_RE = re.compile(r"^[-+]?\d+$")
NUMBER_RE = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
PHONE_RE = re.compile(r"^(\+?1[-. ]?)?\(?[2-9]\d{2}\)?[-. ]?\d{3}[-. ]?\d{4}$")
ZIP_RE = re.compile(r"^\d{5}(-\d{4})?$")
FORMAT_MESSAGE = "The value you provided could not be validated because it does not follow the expected format. Please try again."

# validation type -> (kind, strptime format in storage form)
DATE_TYPES = {
    "date_ymd": "%Y-%m-%d",
    "date_mdy": "%Y-%m-%d",
    "date_dmy": "%Y-%m-%d",
    "datetime_ymd": "%Y-%m-%d %H:%M",
    "datetime_mdy": "%Y-%m-%d %H:%M",
    "datetime_dmy": "%Y-%m-%d %H:%M",
    "datetime_seconds_ymd": "%Y-%m-%d %H:%M:%S",
    "datetime_seconds_mdy": "%Y-%m-%d %H:%M:%S",
    "datetime_seconds_dmy": "%Y-%m-%d %H:%M:%S",
}
TIME_TYPES = {"time": "%H:%M", "time_hh_mm_ss": "%H:%M:%S", "time_mm_ss": "%M:%S"}
OTHER_TYPES = {"integer", "number", "email", "phone", "zipcode", "alpha_only", "number_1dp", "number_2dp", "number_3dp", "number_4dp",
               "number_comma_decimal", "signature", "postalcode_canada", "ssn", "vmrn", "mrn_10d", "mrn_generic"}
KNOWN_VALIDATIONS = set(DATE_TYPES) | set(TIME_TYPES) | OTHER_TYPES


def parse_choices(text: str) -> list[tuple[str, str]]:
    """``1, Yes | 2, No`` → [("1", "Yes"), ("2", "No")]."""
    out = []
    for part in (text or "").split("|"):
        part = part.strip()
        if not part:
            continue
        code, sep, label = part.partition(",")
        if not sep:
            raise ValueError(f"choice {part!r} has no comma between code and label")
        out.append((code.strip(), label.strip()))
    return out


def choices_of(meta: dict) -> list[tuple[str, str]]:
    ftype = meta["field_type"]
    if ftype == "yesno":
        return [("1", "Yes"), ("0", "No")]
    if ftype == "truefalse":
        return [("1", "True"), ("0", "False")]
    if ftype in ("dropdown", "radio", "checkbox"):
        return parse_choices(meta.get("select_choices_or_calculations", ""))
    return []


def convert_date_input(value: str, date_format: str) -> str | None:
    """Dates/datetimes in the import's dateFormat (YMD, MDY, DMY) → REDCap's stored Y-M-D form."""
    m = re.match(r"^(\d{1,4})[-/](\d{1,2})[-/](\d{1,4})(.*)$", value)
    if not m:
        return None
    a, b, c, rest = m.groups()
    if date_format == "MDY":
        y, mo, d = c, a, b
    elif date_format == "DMY":
        y, mo, d = c, b, a
    else:
        y, mo, d = a, b, c
    if len(y) != 4:
        return None
    return f"{y}-{int(mo):02d}-{int(d):02d}{rest}"


def check_value(meta: dict, value: str, date_format: str = "YMD") -> tuple[str | None, str]:
    """Validate one non-empty value. Returns (error or None, normalized value)."""
    ftype = meta["field_type"]
    if ftype in ("calc", "descriptive", "sql") and ftype != "sql":
        if ftype == "descriptive":
            return "This field is a descriptive field and cannot hold data.", value
    if ftype in ("dropdown", "radio", "yesno", "truefalse"):
        codes = [c for c, _ in choices_of(meta)]
        if value not in codes:
            return f"The value is not a valid category for {meta['field_name']}", value
        return None, value
    if ftype == "slider":
        if not INT_RE.match(value) or not 0 <= int(value) <= 100:
            return "The value must be an integer between 0 and 100", value
        return None, value
    if ftype not in ("text",):
        return None, value
    vtype = meta.get("text_validation_type_or_show_slider_number") or ""
    if not vtype:
        return None, value
    normalized = value
    if vtype in DATE_TYPES:
        converted = convert_date_input(value, date_format)
        fmt = DATE_TYPES[vtype]
        try:
            if converted is None:
                raise ValueError
            parsed = dt.datetime.strptime(converted, fmt)
        except ValueError:
            return FORMAT_MESSAGE, value
        normalized = parsed.strftime(fmt)
        return _range(meta, normalized, lambda s: dt.datetime.strptime(convert_date_input(s, "YMD") or "", fmt)), normalized
    if vtype in TIME_TYPES:
        try:
            dt.datetime.strptime(value, TIME_TYPES[vtype])
        except ValueError:
            return FORMAT_MESSAGE, value
        return None, value
    if vtype == "integer":
        if not INT_RE.match(value):
            return FORMAT_MESSAGE, value
        return _range(meta, value, int), str(int(value))
    if vtype.startswith("number"):
        text = value.replace(",", ".") if vtype == "number_comma_decimal" else value
        if not NUMBER_RE.match(text):
            return FORMAT_MESSAGE, value
        places = re.match(r"number_(\d)dp", vtype)
        if places and not re.match(rf"^[-+]?\d+\.\d{{{places.group(1)}}}$", text):
            return FORMAT_MESSAGE, value
        return _range(meta, text, float), value
    if vtype == "email":
        return (None if EMAIL_RE.match(value) else FORMAT_MESSAGE), value
    if vtype == "phone":
        return (None if PHONE_RE.match(value) else FORMAT_MESSAGE), value
    if vtype == "zipcode":
        return (None if ZIP_RE.match(value) else FORMAT_MESSAGE), value
    if vtype == "alpha_only":
        return (None if value.isalpha() else FORMAT_MESSAGE), value
    return None, value


def _range(meta: dict, value: str, conv) -> str | None:
    lo, hi = meta.get("text_validation_min") or "", meta.get("text_validation_max") or ""
    try:
        v = conv(value)
        if lo and lo.lower() not in ("today", "now") and v < conv(lo):
            return f"The value is less than the minimum ({lo})"
        if hi and hi.lower() not in ("today", "now") and v > conv(hi):
            return f"The value is greater than the maximum ({hi})"
    except (ValueError, TypeError):
        return None
    return None


def validate_dictionary(rows: list[dict]) -> list[str]:
    """Problems of a data dictionary, as REDCap's dictionary upload reports them."""
    errors: list[str] = []
    if not rows:
        return ["The data dictionary has no fields."]
    seen: set[str] = set()
    forms_seen: list[str] = []
    for i, row in enumerate(rows, start=2):
        name = (row.get("field_name") or "").strip()
        form = (row.get("form_name") or "").strip()
        ftype = (row.get("field_type") or "").strip()
        where = f"row {i} ({name or 'no name'})"
        if not NAME_RE.match(name):
            errors.append(f"{where}: variable names may only contain lower-case letters, digits and underscores and must begin with a letter")
        if name in seen:
            errors.append(f"{where}: the variable name {name!r} is used more than once")
        seen.add(name)
        if not NAME_RE.match(form):
            errors.append(f"{where}: form names may only contain lower-case letters, digits and underscores and must begin with a letter")
        if forms_seen and form != forms_seen[-1] and form in forms_seen:
            errors.append(f"{where}: the fields of form {form!r} are not all together")
        if not forms_seen or forms_seen[-1] != form:
            forms_seen.append(form)
        if ftype not in FIELD_TYPES:
            errors.append(f"{where}: {ftype!r} is not a valid field type")
            continue
        if ftype in ("dropdown", "radio", "checkbox"):
            try:
                choices = parse_choices(row.get("select_choices_or_calculations", ""))
            except ValueError as exc:
                errors.append(f"{where}: {exc}")
                continue
            if not choices:
                errors.append(f"{where}: a {ftype} field needs choices ('code, label | code, label')")
            codes = [c for c, _ in choices]
            if len(set(codes)) != len(codes):
                errors.append(f"{where}: choice codes must be unique")
            if ftype == "checkbox" and any(not re.match(r"^[A-Za-z0-9_.\-]+$", c) for c in codes):
                errors.append(f"{where}: checkbox codes may only contain letters, digits, '_', '.' and '-'")
        if ftype == "calc" and not (row.get("select_choices_or_calculations") or "").strip():
            errors.append(f"{where}: a calc field needs a calculation")
        vtype = (row.get("text_validation_type_or_show_slider_number") or "").strip()
        if ftype == "text" and vtype and vtype not in KNOWN_VALIDATIONS:
            errors.append(f"{where}: {vtype!r} is not a valid validation type")
        if row.get("identifier", "") not in ("", "y"):
            errors.append(f"{where}: identifier must be 'y' or empty")
        if row.get("required_field", "") not in ("", "y"):
            errors.append(f"{where}: required_field must be 'y' or empty")
    if rows[0].get("field_type") not in ("text",):
        errors.append("row 2: the first field (the record ID) must be a text field")
    return errors
