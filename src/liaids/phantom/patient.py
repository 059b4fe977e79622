"""A phantom patient's diagnosis, lesion list and clinical fields.

Clinical fields follow the associations of ``shared/reference/ct-appearance.md`` (HCC with hepatitis B,
cirrhosis and men; metastasis with an extra-hepatic tumour; FNH with young women; ...), drawn as
probabilities rather than rules so that clinical data alone stays a weak predictor, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liaids.clinical import ClinicalInfo
from liaids.phantom.lesions import lesion_count, sample_diameter
from liaids.phantom.profiles import Profile

# Per main diagnosis: age mean, P(male), P(hepatitis B), P(hepatitis C), P(cirrhosis), P(cholangiolithiasis),
# P(extra-hepatic tumour). None = use the profile's background rate.
_ASSOCIATIONS: dict[
    str, tuple[float, float, float | None, float | None, float | None, float | None, float | None]
] = {
    "HCC": (56, 0.72, 0.6, 0.08, 0.35, None, None),
    "ICC": (60, 0.55, 0.18, 0.05, 0.1, 0.2, None),
    "HM": (59, 0.55, None, None, None, None, 0.55),
    "FNH": (38, 0.3, None, None, None, None, None),
    "HH": (50, 0.42, None, None, None, None, None),
    "HC": (58, 0.48, None, None, None, None, None),
    "HA": (58, 0.6, None, None, None, 0.22, None),
}


@dataclass(frozen=True)
class PatientPlan:
    """What the phantom will draw for one patient."""

    main_type: str | None  # None = no focal liver lesion
    lesions: list[tuple[str, float]]  # (type, diameter mm)
    clinical: ClinicalInfo
    cirrhotic: bool
    fatty: bool


def plan_patient(rng: np.random.Generator, profile: Profile) -> PatientPlan:
    """Draw the diagnosis, the lesions and the clinical fields of one patient.

    Args:
        rng: random generator.
        profile: centre profile (prevalences and background rates).
    """
    main: str | None = None
    if rng.random() >= profile.no_lesion_fraction:
        types = list(profile.primary_type_weights)
        w = np.array([profile.primary_type_weights[t] for t in types], float)
        main = str(types[int(rng.choice(len(types), p=w / w.sum()))])
    p = profile
    if main is None:
        age_mean, male, hbv, hcv, cir, chol, ext = (
            p.age_mean,
            p.background_male_fraction,
            None,
            None,
            None,
            None,
            None,
        )
    else:
        age_mean, male, hbv, hcv, cir, chol, ext = _ASSOCIATIONS[main]

    def draw(prob: float | None, background: float) -> bool:
        return bool(rng.random() < (background if prob is None else prob))

    age = float(np.clip(round(rng.normal(age_mean, p.age_sd)), 14, 92))
    clinical = ClinicalInfo(
        age=age,
        sex="M" if rng.random() < male else "F",
        hepatitis_b=draw(hbv, p.background_hepatitis_b),
        hepatitis_c=draw(hcv, p.background_hepatitis_c),
        cirrhosis=draw(cir, p.background_cirrhosis),
        cholangiolithiasis=draw(chol, p.background_cholangiolithiasis),
        extrahepatic_tumour=draw(ext, p.background_extrahepatic_tumour),
    )
    lesions: list[tuple[str, float]] = []
    if main is not None:
        lesions += [
            (main, sample_diameter(rng, main, p.lesion_size_scale)) for _ in range(lesion_count(rng, main))
        ]
        # Incidental benign lesions beside the main diagnosis, as in real patients.
        if main != "HC" and rng.random() < p.incidental_cyst_probability:
            lesions += [
                ("HC", sample_diameter(rng, "HC", p.lesion_size_scale))
                for _ in range(int(rng.integers(1, 3)))
            ]
        if main != "HH" and rng.random() < p.incidental_haemangioma_probability:
            lesions.append(("HH", sample_diameter(rng, "HH", p.lesion_size_scale)))
    fatty = bool(rng.random() < p.fatty_liver_fraction)
    return PatientPlan(main, lesions, clinical, clinical.cirrhosis, fatty)
