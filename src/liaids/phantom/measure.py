"""Measurements on phantom cases: tissue and lesion attenuation, lesion sizes, breathing shifts.

Used by ``benchmarks/phantom_realism.py`` and ``benchmarks/phantom_difficulty.py`` and by the tests, so
the figures in the README come from one implementation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from liaids.codes import PHASES
from liaids.phantom.labels import Tissue
from liaids.phantom.synthesize import PhantomCase

REPORTED_TISSUES = {
    "aorta": Tissue.AORTA,
    "portal_vein": Tissue.PORTAL_VEIN,
    "liver": Tissue.LIVER,
    "spleen": Tissue.SPLEEN,
}


def tissue_means(case: PhantomCase) -> dict[str, dict[str, float]]:
    """Mean HU per reported tissue and phase, inside masks eroded in-plane by 2 voxels (no partial volume)."""
    out: dict[str, dict[str, float]] = {}
    structure = np.zeros((1, 5, 5), bool)
    structure[0] = True
    for name, tissue in REPORTED_TISSUES.items():
        out[name] = {}
        for p in PHASES:
            # The anatomy map has no lesion label: leave lesion voxels out of the liver.
            mask = ndimage.binary_erosion(case.anatomy[p].array == tissue, structure) & (
                case.lesions[p].array == 0
            )
            vals = case.study[p].array[mask]
            out[name][p] = float(vals.mean()) if vals.size else float("nan")
    return out


def lesion_features(case: PhantomCase) -> list[dict[str, Any]]:
    """Per lesion: type, diameter, PV volume (ml), mean HU per phase (NaN if absent), clinical fields."""
    rows = []
    for spec in case.lesion_specs:
        row: dict[str, Any] = {
            "case_id": case.case_id,
            "type": spec.lesion_type,
            "variant": spec.variant,
            "diameter_mm": spec.diameter_mm,
        }
        for p in PHASES:
            mask = case.lesions[p].array == spec.lesion_id
            row[f"mean_{p}"] = float(case.study[p].array[mask].mean()) if mask.any() else float("nan")
            if p == "PV":
                row["volume_ml"] = float(mask.sum() * np.prod(case.lesions[p].spacing) / 1000.0)
        row["clinical"] = case.plan.clinical.encode()
        rows.append(row)
    return rows


def lesion_roi_means(case: PhantomCase, min_diameter_mm: float = 10.0) -> list[dict[str, Any]]:
    """Per lesion of at least ``min_diameter_mm``: mean HU in a radiologist-style ROI per phase.

    The ROI is the lesion's cross-section on its largest slice, shrunk in-plane by a quarter of its radius,
    so that the partial-volume edge is left out (NaN where the lesion is absent or the ROI is empty).
    Haemangiomas also get ``{phase}_nodule``: an ROI on their enhancing nodules, which is what the
    reference's "nodules follow the blood pool" compares. The nodules sit at the periphery, so this ROI
    is the cross-section less only its one-pixel edge, restricted to voxels brighter than halfway between
    the lesion's unfilled centre and its nodules.
    """
    rows = []
    for spec in case.lesion_specs:
        if spec.diameter_mm < min_diameter_mm:
            continue
        row: dict[str, Any] = {
            "type": spec.lesion_type,
            "variant": spec.variant,
            "diameter_mm": spec.diameter_mm,
        }
        for p in PHASES:
            mask = case.lesions[p].array == spec.lesion_id
            row[p] = float("nan")
            if not mask.any():
                continue
            k = int(np.argmax(mask.sum(axis=(1, 2))))
            section = mask[k]
            radius_px = np.sqrt(section.sum() / np.pi)
            roi = ndimage.binary_erosion(section, iterations=max(1, round(radius_px / 4)))
            image = case.study[p].array[k]
            if roi.sum() >= 3:
                row[p] = float(image[roi].mean())
            hu = spec.hu[p]
            if "nodule" in hu and hu["nodule"] - hu["core"] > 20:  # NC: nodules not yet visible
                values = image[ndimage.binary_erosion(section)]
                bright = values[values > 0.5 * (hu["core"] + hu["nodule"])]
                row[f"{p}_nodule"] = float(bright.mean()) if bright.size >= 3 else float("nan")
        rows.append(row)
    return rows


def liver_centroid_shifts(case: PhantomCase) -> dict[str, float]:
    """Distance (mm) between liver-mask centroids of phase pairs, measured on the masks."""
    cents = {}
    for p in PHASES:
        vol = case.liver[p]
        idx = np.argwhere(vol.array > 0)[:, ::-1].mean(axis=0)  # (i, j, k)
        cents[p] = vol.index_to_physical(idx)
    return {
        f"{a}-{b}": float(np.linalg.norm(cents[a] - cents[b]))
        for a, b in (("NC", "ART"), ("NC", "PV"), ("ART", "PV"))
    }
