"""Clinical information of a patient: typed, validated, and encoded the same way everywhere."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from liaids.codes import CLINICAL_FIELDS
from liaids.errors import ClinicalInfoError

_HISTORY_FIELDS = CLINICAL_FIELDS[2:]
_AGE_RANGE = (0.0, 120.0)


@dataclass(frozen=True)
class ClinicalInfo:
    """The seven clinical fields the paper's classifier uses.

    Args:
        age: years, 0-120.
        sex: ``"M"`` or ``"F"``.
        hepatitis_b, hepatitis_c, cirrhosis, cholangiolithiasis, extrahepatic_tumour: history, True/False.
    """

    age: float
    sex: str
    hepatitis_b: bool
    hepatitis_c: bool
    cirrhosis: bool
    cholangiolithiasis: bool
    extrahepatic_tumour: bool

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path | None = None) -> ClinicalInfo:
        """Validate and convert a mapping (as found in case.json or a clinical JSON file).

        Booleans may be given as true/false, 0/1 or "yes"/"no". Nothing is filled in silently: a
        missing field is an error.

        Raises:
            ClinicalInfoError: on a missing field, an unknown field, a wrong type or an absurd value.
        """
        if not isinstance(data, dict):
            raise ClinicalInfoError(
                f"clinical information must be a JSON object, got {type(data).__name__}", source
            )
        unknown = sorted(set(data) - set(CLINICAL_FIELDS))
        if unknown:
            raise ClinicalInfoError(
                f"unknown clinical field(s) {unknown}; expected {list(CLINICAL_FIELDS)}", source
            )
        missing = [f for f in CLINICAL_FIELDS if f not in data or data[f] is None]
        if missing:
            raise ClinicalInfoError(f"missing clinical field(s) {missing}", source)
        age = data["age"]
        if isinstance(age, bool) or not isinstance(age, int | float) or not math.isfinite(age):
            raise ClinicalInfoError(f"age must be a number of years, got {age!r}", source)
        if not _AGE_RANGE[0] <= age <= _AGE_RANGE[1]:
            raise ClinicalInfoError(f"age {age} is outside the plausible range 0-120 years", source)
        sex = data["sex"]
        if not isinstance(sex, str) or sex.upper() not in ("M", "F"):
            raise ClinicalInfoError(f"sex must be 'M' or 'F', got {sex!r}", source)
        history = {name: _as_bool(name, data[name], source) for name in _HISTORY_FIELDS}
        return cls(age=float(age), sex=sex.upper(), **history)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping with the field names of :data:`liaids.codes.CLINICAL_FIELDS`."""
        return asdict(self)

    def encode(self) -> list[float]:
        """Numeric features in :data:`CLINICAL_FIELDS` order: age/100, sex (1 = male), then 0/1 flags."""
        return [self.age / 100.0, 1.0 if self.sex == "M" else 0.0] + [
            1.0 if getattr(self, name) else 0.0 for name in _HISTORY_FIELDS
        ]


def _as_bool(name: str, value: Any, source: str | Path | None) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("yes", "no", "true", "false"):
        return value.strip().lower() in ("yes", "true")
    raise ClinicalInfoError(f"{name} must be true/false (or yes/no, 1/0), got {value!r}", source)
