"""The pseudonymization engine: PS3.15 Annex E profile and options, keyed pseudonyms, burned-in
text removal, audit record and residual-PHI scan. It fails closed: anything it cannot make safe
is refused with a reason and stays in quarantine.
"""

from .engine import DeidRefused, ProjectPolicy, Pseudonymizer, StudyResult
from .keys import key_from_file, project_key
from .options import OPTION_CODES, DeidOptions

__all__ = ["DeidOptions", "DeidRefused", "OPTION_CODES", "ProjectPolicy", "Pseudonymizer", "StudyResult", "key_from_file", "project_key"]
