"""Per-patient attenuation of every tissue in every phase, from ``shared/reference/ct-appearance.md``.

Values are drawn around the reference means. Three patient-level factors make phases co-vary as in real
scans: contrast dose (scales all iodine enhancement), arterial timing (early arterial: portal vein and
liver less enhanced; late arterial: more) and tube voltage (iodine is brighter at low kVp).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liaids.codes import PHASES
from liaids.phantom.labels import N_TISSUES, Tissue

# Reference (NC, ART, PV) mean HU and across-patient spread, per tissue.
_REFERENCE: dict[Tissue, tuple[tuple[float, float, float], float]] = {
    Tissue.AIR: ((-1000, -1000, -1000), 0),
    Tissue.SUBCUTANEOUS_FAT: ((-100, -100, -100), 12),
    Tissue.VISCERAL_FAT: ((-95, -95, -95), 12),
    Tissue.MUSCLE: ((50, 60, 65), 5),
    Tissue.LUNG: ((-850, -850, -850), 40),
    Tissue.BONE_CORTICAL: ((800, 800, 800), 150),
    Tissue.BONE_CANCELLOUS: ((200, 205, 210), 50),
    Tissue.DISC: ((80, 85, 90), 10),
    Tissue.SPINAL_CANAL: ((20, 22, 25), 5),
    Tissue.LIVER: ((58, 75, 115), 6),
    Tissue.SPLEEN: ((48, 120, 120), 5),
    Tissue.KIDNEY_CORTEX: ((32, 180, 170), 5),
    Tissue.KIDNEY_MEDULLA: ((32, 80, 170), 5),
    Tissue.AORTA: ((42, 280, 160), 5),
    Tissue.IVC: ((42, 55, 160), 5),
    Tissue.PORTAL_VEIN: ((42, 110, 180), 5),
    Tissue.HEPATIC_VEIN: ((42, 55, 160), 5),
    Tissue.HEPATIC_ARTERY: ((42, 250, 150), 5),
    Tissue.PANCREAS: ((42, 115, 95), 5),
    Tissue.STOMACH_WALL: ((40, 90, 90), 5),
    Tissue.BOWEL_WALL: ((40, 90, 90), 5),
    Tissue.LUMEN_FLUID: ((12, 12, 12), 5),
    Tissue.BOWEL_GAS: ((-1000, -1000, -1000), 0),
    Tissue.GALLBLADDER: ((8, 8, 8), 4),
    Tissue.HEART: ((42, 200, 150), 5),
    Tissue.ASCITES: ((8, 8, 8), 4),
    Tissue.BILE_DUCT: ((12, 13, 15), 4),
}
# How strongly each tissue's enhancement follows arterial timing t (HU per unit t; t ~ N(0, sd)):
# positive = later arterial acquisition gives higher ART values.
_TIMING: dict[Tissue, float] = {
    Tissue.AORTA: -20,
    Tissue.HEPATIC_ARTERY: -15,
    Tissue.PORTAL_VEIN: 35,
    Tissue.LIVER: 10,
    Tissue.SPLEEN: 15,
    Tissue.HEPATIC_VEIN: 12,
    Tissue.IVC: 12,
    Tissue.KIDNEY_MEDULLA: 25,
    Tissue.PANCREAS: 8,
}
_KVP_IODINE = {80: 1.35, 100: 1.15, 120: 1.0, 140: 0.9}


@dataclass(frozen=True)
class Attenuation:
    """HU look-up table per phase: ``table[phase][label]``, plus the patient factors that made it."""

    table: dict[str, np.ndarray]
    dose: float
    arterial_timing: float
    kvp: int
    fatty: bool
    cirrhotic: bool

    def hu(self, tissue: Tissue, phase: str) -> float:
        return float(self.table[phase][int(tissue)])

    def to_dict(self) -> dict[str, object]:
        return {
            "dose_factor": round(self.dose, 3),
            "arterial_timing": round(self.arterial_timing, 3),
            "kvp": self.kvp,
            "tissue_hu": {t.name.lower(): {p: round(self.hu(t, p), 1) for p in PHASES} for t in Tissue},
        }


def sample_attenuation(
    rng: np.random.Generator,
    *,
    kvp: int,
    dose_sd: float,
    timing_sd: float,
    fatty: bool,
    cirrhotic: bool,
) -> Attenuation:
    """Draw one patient's tissue attenuation table.

    Args:
        rng: random generator.
        kvp: tube voltage; lower kVp brightens iodine.
        dose_sd: spread of the contrast dose factor around 1.
        timing_sd: spread of the arterial timing factor around 0 (early <0< late).
        fatty: fatty liver (NC 20-45 HU, weaker enhancement).
        cirrhotic: cirrhotic liver values.
    """
    dose = float(np.clip(rng.normal(1.0, dose_sd), 0.6, 1.45))
    timing = float(np.clip(rng.normal(0.0, timing_sd), -1.5, 1.5))
    iodine = _KVP_IODINE.get(int(kvp), 1.0)
    table = {p: np.zeros(N_TISSUES, np.float32) for p in PHASES}
    for tissue, ((nc, art, pv), sd) in _REFERENCE.items():
        if tissue == Tissue.LIVER and cirrhotic:
            nc, art, pv = 55.0, 70.0, 100.0
        base = nc + rng.normal(0, sd)
        jitter = rng.normal(0, 0.5 * sd, 2) if sd > 0 else np.zeros(2)
        e_art = (art - nc) * dose * iodine + _TIMING.get(tissue, 0.0) * timing
        e_pv = (pv - nc) * dose * iodine
        if tissue == Tissue.LIVER and fatty:
            base = rng.uniform(20, 45)
            e_art, e_pv = 0.8 * e_art, 0.85 * e_pv
        table["NC"][tissue] = base
        table["ART"][tissue] = base + e_art + jitter[0]
        table["PV"][tissue] = base + e_pv + jitter[1]
    # Blood in the big vessels shares its NC value (same blood).
    blood = table["NC"][Tissue.AORTA]
    for t in (Tissue.IVC, Tissue.PORTAL_VEIN, Tissue.HEPATIC_VEIN, Tissue.HEPATIC_ARTERY, Tissue.HEART):
        delta = blood - table["NC"][t]
        for p in PHASES:
            table[p][t] += delta
    return Attenuation(table, dose, timing, int(kvp), fatty, cirrhotic)
