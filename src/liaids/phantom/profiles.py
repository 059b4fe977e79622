"""Centre profiles: how one hospital's scanners, protocols and patients look to the phantom.

A profile is a JSON or YAML file; every field is documented in ``docs/phantom-profiles.md``. Built-in
profiles live in ``profiles/`` beside this module: ``internal`` (the training mix of many centres),
``internal_balanced`` (the same centres with every lesion type equally likely, for training the lesion
models) and three external centres shaped like the paper's external cohorts (``zzh``, ``qzh``, ``nbh``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from liaids.codes import LESION_TYPES
from liaids.errors import ProfileError

BUILTIN_PROFILES: tuple[str, ...] = ("internal", "internal_balanced", "zzh", "qzh", "nbh")


@dataclass(frozen=True)
class Profile:
    """Validated centre profile. See ``docs/phantom-profiles.md`` for the meaning of each field."""

    name: str
    description: str
    manufacturers: dict[str, float]
    kvp: dict[str, float]
    mas_range: tuple[float, float]
    slice_thickness_mm: dict[str, float]
    pixel_spacing_mm: tuple[float, float]
    kernel_blur_px: tuple[float, float]
    no_lesion_fraction: float
    primary_type_weights: dict[str, float]
    incidental_cyst_probability: float
    incidental_haemangioma_probability: float
    age_mean: float
    age_sd: float
    background_male_fraction: float
    background_hepatitis_b: float
    background_hepatitis_c: float
    background_cirrhosis: float
    background_cholangiolithiasis: float
    background_extrahepatic_tumour: float
    fatty_liver_fraction: float
    contrast_dose_sd: float
    arterial_timing_sd: float
    breathing_z_sd_mm: float
    breathing_z_max_mm: float
    breathing_xy_sd_mm: float
    scan_margin_mm: tuple[float, float]
    lesion_size_scale: float

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path | None = None) -> Profile:
        """Build and validate a profile from a parsed JSON/YAML mapping.

        Raises:
            ProfileError: on a missing or unknown field, a value of the wrong type, or out of range.
        """
        try:
            return cls._from_dict(data, source)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ProfileError(f"invalid profile value ({exc})", source) from exc

    @classmethod
    def _from_dict(cls, data: dict[str, Any], source: str | Path | None) -> Profile:
        if not isinstance(data, dict):
            raise ProfileError("a profile must be a mapping of field names to values", source)
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ProfileError(f"unknown profile field(s) {unknown}", source)
        missing = [n for n in names if n not in data]
        if missing:
            raise ProfileError(f"missing profile field(s) {missing}", source)
        values = dict(data)
        if not isinstance(values["name"], str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", values["name"]):
            raise ProfileError(
                "name must be 1-64 letters, digits, '_' or '-' (it names case folders)", source
            )
        if not isinstance(values["description"], str):
            raise ProfileError("description must be text", source)
        for name in ("mas_range", "pixel_spacing_mm", "kernel_blur_px", "scan_margin_mm"):
            pair = values[name]
            if not (isinstance(pair, list | tuple) and len(pair) == 2 and pair[0] <= pair[1]):
                raise ProfileError(
                    f"{name} must be a [low, high] pair with low <= high, got {pair!r}", source
                )
            values[name] = (float(pair[0]), float(pair[1]))
        for name in ("manufacturers", "kvp", "slice_thickness_mm", "primary_type_weights"):
            table = values[name]
            if (
                not isinstance(table, dict)
                or not table
                or any(not isinstance(v, int | float) or v < 0 for v in table.values())
            ):
                raise ProfileError(f"{name} must map choices to non-negative weights", source)
            if sum(table.values()) <= 0:
                raise ProfileError(f"{name} weights sum to zero", source)
        bad_types = sorted(set(values["primary_type_weights"]) - set(LESION_TYPES))
        if bad_types:
            raise ProfileError(f"primary_type_weights has unknown lesion types {bad_types}", source)
        for key in values["slice_thickness_mm"]:
            if not 0.5 <= float(key) <= 10.0:
                raise ProfileError(f"slice thickness {key} mm is outside 0.5-10 mm", source)
        for key in values["kvp"]:
            if not 70 <= float(key) <= 150:
                raise ProfileError(f"kVp {key} is outside 70-150", source)
        lo, hi = values["pixel_spacing_mm"]
        if not (lo >= 0.3 and hi <= 1.2):
            raise ProfileError("pixel_spacing_mm must lie within 0.3-1.2 mm", source)
        if values["mas_range"][0] < 10 or values["mas_range"][1] > 1000:
            raise ProfileError("mas_range must lie within 10-1000 mAs", source)
        for name in (
            "no_lesion_fraction",
            "incidental_cyst_probability",
            "incidental_haemangioma_probability",
            "background_male_fraction",
            "background_hepatitis_b",
            "background_hepatitis_c",
            "background_cirrhosis",
            "background_cholangiolithiasis",
            "background_extrahepatic_tumour",
            "fatty_liver_fraction",
        ):
            v = values[name]
            if not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise ProfileError(f"{name} must be a probability in [0, 1], got {v!r}", source)
        for name in (
            "age_sd",
            "contrast_dose_sd",
            "arterial_timing_sd",
            "breathing_z_sd_mm",
            "breathing_z_max_mm",
            "breathing_xy_sd_mm",
            "lesion_size_scale",
        ):
            v = values[name]
            if not isinstance(v, int | float) or v < 0:
                raise ProfileError(f"{name} must be a non-negative number, got {v!r}", source)
        if not 14 <= values["age_mean"] <= 90:
            raise ProfileError("age_mean must lie within 14-90 years", source)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (pairs as lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a built-in profile by name, or a profile file (``.json``, ``.yaml`` or ``.yml``).

    Raises:
        ProfileError: unknown name, unreadable file, or invalid content.
    """
    text_name = str(name_or_path)
    if text_name in BUILTIN_PROFILES:
        raw = resources.files("liaids.phantom").joinpath("profiles").joinpath(f"{text_name}.json").read_text()
        return Profile.from_dict(json.loads(raw), f"built-in profile {text_name}")
    path = Path(name_or_path)
    if not path.is_file():
        raise ProfileError(f"no such profile file (built-in profiles: {', '.join(BUILTIN_PROFILES)})", path)
    try:
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml  # only needed for YAML profiles

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ProfileError(f"cannot parse profile: {exc}".splitlines()[0], path) from exc
    except Exception as exc:  # yaml.YAMLError has no common base we can import eagerly
        raise ProfileError(f"cannot parse profile: {exc}".splitlines()[0], path) from exc
    return Profile.from_dict(data, path)
