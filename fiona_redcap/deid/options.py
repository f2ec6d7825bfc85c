"""The twelve PS3.15 Annex E options, as per-project switches, with their CID 7050 codes."""

from __future__ import annotations

from dataclasses import dataclass, fields

#: CLI option name -> REDCap checkbox code (instruments/projects: deid_options___<code>)
OPTION_CODES = {
    "clean-pixel-data": "clean_pixel_data",
    "clean-recognizable-visual-features": "clean_visual_features",
    "clean-graphics": "clean_graphics",
    "clean-structured-content": "clean_structured_content",
    "clean-descriptors": "clean_descriptors",
    "retain-longitudinal-full-dates": "retain_long_full_dates",
    "retain-longitudinal-modified-dates": "retain_long_modified_dates",
    "retain-patient-characteristics": "retain_patient_chars",
    "retain-device-identity": "retain_device_identity",
    "retain-uids": "retain_uids",
    "retain-safe-private": "retain_safe_private",
    "retain-institution-identity": "retain_institution_identity",
}

#: DICOM CID 7050 "De-identification Method" codes (scheme DCM) for the profile and each option.
CID7050 = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    "clean_visual_features": ("113102", "Clean Recognizable Visual Features Option"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_long_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_long_modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_chars": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}


@dataclass(frozen=True)
class DeidOptions:
    clean_pixel_data: bool = False
    clean_visual_features: bool = False
    clean_graphics: bool = False
    clean_structured_content: bool = False
    clean_descriptors: bool = False
    retain_long_full_dates: bool = False
    retain_long_modified_dates: bool = False
    retain_patient_chars: bool = False
    retain_device_identity: bool = False
    retain_uids: bool = False
    retain_safe_private: bool = False
    retain_institution_identity: bool = False

    @classmethod
    def defaults(cls) -> "DeidOptions":
        """What a research group expects: descriptions and protocol names survive, dates shift, pixels are cleaned."""
        return cls(retain_long_modified_dates=True, retain_patient_chars=True, retain_device_identity=True,
                   retain_safe_private=True, clean_descriptors=True, clean_structured_content=True,
                   clean_graphics=True, clean_pixel_data=True)

    @classmethod
    def from_names(cls, names: list[str]) -> "DeidOptions":
        unknown = [n for n in names if n not in OPTION_CODES]
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(unknown)} (known: {', '.join(OPTION_CODES)})")
        return cls(**{OPTION_CODES[n]: True for n in names})

    def enabled(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name)]

    def key(self) -> tuple:
        return tuple(self.enabled())
