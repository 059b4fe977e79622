"""What the candidate filter sees of one detected lesion: a lesion-centred patch and two numbers.

The detector proposes about 20 candidates per phase volume above a score of 0.2; most are the IVC, the
gallbladder and hepatic veins, which look like lesions on the few slices the detector reads. The filter
(:mod:`liaids.networks.candidate_filter`) looks again at each candidate in 3D, with the liver mask as a
second channel, so it can see that a vessel runs on beyond the box or that a fluid sac lies outside the
liver.

Patch rule: a cube centred on the box, ``context`` times the box's largest extent in mm (at least
``min_mm``, at most ``max_mm``), resampled to ``shape`` ``(k, j, i)``; the CT windowed like the detector's
input and scaled to [0, 1], the liver mask as the fraction of liver in each patch voxel. Voxels beyond the
volume are air and not liver.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CandidatePatchPlan:
    """How a candidate's patch is cut.

    Args:
        shape: patch shape ``(k, j, i)``.
        context: the cube's side relative to the box's largest extent.
        min_mm: smallest side (small lesions keep some surroundings).
        max_mm: largest side.
        hu_window: HU range mapped to [0, 1].
        min_score: candidates scoring below this are dropped before the filter (it never saw them).
    """

    shape: tuple[int, int, int] = (16, 48, 48)
    context: float = 2.0
    min_mm: float = 24.0
    max_mm: float = 160.0
    hu_window: tuple[float, float] = (-210.0, 300.0)
    min_score: float = 0.2

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> CandidatePatchPlan:
        return cls(
            shape=tuple(int(v) for v in data["shape"]),  # type: ignore[arg-type]
            context=float(data["context"]),
            min_mm=float(data["min_mm"]),
            max_mm=float(data["max_mm"]),
            hu_window=(float(data["hu_window"][0]), float(data["hu_window"][1])),
            min_score=float(data["min_score"]),
        )


def box_extent_mm(box_kji: np.ndarray, spacing_kji: tuple[float, float, float]) -> np.ndarray:
    """Extent ``(k, j, i)`` in mm of a half-open box ``[k0, j0, i0, k1, j1, i1]``."""
    box = np.asarray(box_kji, float)
    return (box[3:] - box[:3]) * np.asarray(spacing_kji, float)


def patch_side_mm(
    box_kji: np.ndarray, spacing_kji: tuple[float, float, float], plan: CandidatePatchPlan
) -> float:
    """Side of the candidate's cube in mm."""
    largest = float(box_extent_mm(box_kji, spacing_kji).max())
    return float(np.clip(plan.context * largest, plan.min_mm, plan.max_mm))


def _crop_padded(array: np.ndarray, lo: np.ndarray, hi: np.ndarray, fill: float) -> np.ndarray:
    """``array[lo:hi]`` along each axis, filled with ``fill`` where the range leaves the array."""
    out = np.full(tuple(int(b - a) for a, b in zip(lo, hi, strict=True)), fill, np.float32)
    src = tuple(slice(max(int(a), 0), min(int(b), n)) for a, b, n in zip(lo, hi, array.shape, strict=True))
    dst = tuple(slice(s.start - int(a), s.stop - int(a)) for s, a in zip(src, lo, strict=True))
    if all(s.stop > s.start for s in src):
        out[dst] = array[src]
    return out


def candidate_patch(
    hu: np.ndarray,
    liver: np.ndarray,
    spacing_kji: tuple[float, float, float],
    box_kji: np.ndarray,
    plan: CandidatePatchPlan,
) -> np.ndarray:
    """The filter's two-channel patch of one candidate.

    Args:
        hu: canonical CT ``(K, J, I)`` in HU.
        liver: canonical liver mask of the same shape.
        spacing_kji: canonical voxel size in mm.
        box_kji: the candidate's half-open canonical box.
        plan: the patch rule.

    Returns:
        float32 ``(2, *plan.shape)``: windowed CT in [0, 1], liver fraction in [0, 1].
    """
    side = patch_side_mm(box_kji, spacing_kji, plan)
    box = np.asarray(box_kji, float)
    centre = (box[:3] + box[3:]) / 2.0
    half = side / 2.0 / np.asarray(spacing_kji, float)
    lo = np.floor(centre - half).astype(int)
    hi = np.maximum(np.ceil(centre + half).astype(int), lo + 1)
    lo_hu, hi_hu = plan.hu_window
    image = (np.clip(_crop_padded(hu, lo, hi, lo_hu), lo_hu, hi_hu) - lo_hu) / (hi_hu - lo_hu)
    mask = _crop_padded(liver.astype(np.float32, copy=False), lo, hi, 0.0)
    stacked = torch.from_numpy(np.stack([image, mask]))[None]
    resized = F.interpolate(stacked, size=plan.shape, mode="trilinear", align_corners=False)[0]
    return resized.clamp(0.0, 1.0).numpy()


def candidate_scalars(
    score: float, box_kji: np.ndarray, spacing_kji: tuple[float, float, float]
) -> np.ndarray:
    """The filter's scalar inputs: the detector's score and log2 of the box's largest extent in cm."""
    largest_cm = max(float(box_extent_mm(box_kji, spacing_kji).max()) / 10.0, 0.1)
    return np.asarray([score, np.log2(largest_cm)], np.float32)
