"""Lesion-centred 3D patches for the classifier, the crop rule, and box jitter for training.

Boxes: ``bbox_ijk = (i0, j0, k0, i1, j1, k1)``, half-open voxel indices of one phase's volume (voxel
``(i, j, k)`` is inside when ``i0 <= i < i1`` and so on), the order of :class:`liaids.types.Volume`'s
``spacing``. Patches: ``(D, H, W)`` = (slices, rows, columns) in canonical orientation (``k`` superior,
``j`` posterior, ``i`` patient left), float32 in [0, 1].

Crop rule (the authors' code, made spacing-independent):

* in-plane: a square around the box centre, side = ``box_scale`` (1.5) x the longer box side, at least
  ``min_side_mm`` (45 mm = the reference 64 pixels at ~0.7 mm; 24 mm for ``small``). Square so that a
  lesion's shape is not distorted when the crop is resampled to the square patch;
* depth: the box's slices plus ``4 x (5 / slice spacing)`` slices when the spacing is under 5 mm, else
  plus 4 slices (about 10 mm of context above and below), half on each side;
* the crop is resampled to the plan's patch shape (linear interpolation, Gaussian pre-smoothing along axes
  that are shrunk, as scikit-image's ``resize`` does against aliasing). Outside the volume the patch is
  air (-1000 HU).
* attenuation: HU clipped to the window [-160, 240] (level 40, width 400, the usual abdominal
  soft-tissue window: fat to just above enhancing vessels) and scaled to [0, 1].
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
from scipy import ndimage

from liaids.codes import PHASES, SMALL_LESION_MM
from liaids.errors import BoxError, LiaidsError
from liaids.types import Volume

BBox = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class PatchPlan:
    """How a lesion patch is cut; saved with every classifier model (``config.json``).

    Args:
        shape: patch shape ``(D, H, W)``.
        box_scale: in-plane enlargement of the lesion box.
        min_side_mm: smallest in-plane crop side in mm.
        z_margin_slices: slices added to the box depth at ``z_reference_mm`` spacing or thicker.
        z_reference_mm: slice spacing below which the margin grows as ``z_reference_mm / spacing``.
        hu_window: HU range mapped to [0, 1].
        air_hu: value of voxels outside the volume.
    """

    shape: tuple[int, int, int] = (16, 64, 64)
    box_scale: float = 1.5
    min_side_mm: float = 45.0
    z_margin_slices: float = 4.0
    z_reference_mm: float = 5.0
    hu_window: tuple[float, float] = (-160.0, 240.0)
    air_hu: float = -1000.0

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> PatchPlan:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


PATCH_PLANS: dict[str, PatchPlan] = {
    "paper": PatchPlan(shape=(16, 64, 64)),
    # 24 mm minimum: at 45 mm a 4 mm lesion spans 4 of the 48 columns, 2 after the stem. On 255 zzh lesions
    # (ground-truth boxes), trained on the same 480 cases, the 24 mm crop (with 40 instead of 30 epochs)
    # raised accuracy under 6 mm from 0.39 to 0.50 and overall from 0.76 to 0.80.
    "small": PatchPlan(shape=(8, 48, 48), min_side_mm=24.0),
}


def check_box(bbox: Sequence[int], shape_kji: tuple[int, int, int] | None = None, what: str = "box") -> BBox:
    """Validate a ``bbox_ijk`` and return it as a tuple of ints.

    Args:
        bbox: ``(i0, j0, k0, i1, j1, k1)``.
        shape_kji: the volume's array shape; when given, the box must overlap the volume.
        what: name used in the error message.

    Raises:
        BoxError: wrong length, non-integers, empty box, or no overlap with the volume.
    """
    if len(bbox) != 6 or any(isinstance(v, bool) or not float(v).is_integer() for v in bbox):
        raise BoxError(f"{what} must be six integers (i0, j0, k0, i1, j1, k1), got {tuple(bbox)}")
    box = tuple(int(v) for v in bbox)
    if any(box[a + 3] <= box[a] for a in range(3)):
        raise BoxError(f"{what} {box} is empty (needs i0 < i1, j0 < j1, k0 < k1)")
    if shape_kji is not None:
        size_ijk = shape_kji[::-1]
        if any(box[a + 3] <= 0 or box[a] >= size_ijk[a] for a in range(3)):
            raise BoxError(f"{what} {box} lies outside the volume of shape (k, j, i) = {shape_kji}")
    return box  # type: ignore[return-value]


def boxes_from_instances(instances: np.ndarray) -> dict[int, BBox]:
    """Bounding boxes of every instance id in a ``(K, J, I)`` lesion instance mask.

    Returns:
        ``{lesion_id: bbox_ijk}`` for every id > 0 present.
    """
    out: dict[int, BBox] = {}
    labels = instances.astype(np.int64, copy=False)
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is not None:
            sk, sj, si = found
            out[index] = (si.start, sj.start, sk.start, si.stop, sj.stop, sk.stop)
    return out


def crop_region(bbox: BBox, spacing: Sequence[float], plan: PatchPlan) -> np.ndarray:
    """The crop of the rule as continuous voxel edges ``(i0, j0, k0, i1, j1, k1)`` (may exceed the volume).

    Args:
        bbox: lesion box in this volume's voxels.
        spacing: voxel size ``(i, j, k)`` in mm.
        plan: crop rule.
    """
    si, sj, sk = (float(s) for s in spacing)
    b = np.asarray(bbox, float)
    centre = (b[:3] + b[3:]) / 2.0
    side_mm = max(plan.box_scale * max((b[3] - b[0]) * si, (b[4] - b[1]) * sj), plan.min_side_mm)
    half = np.array([side_mm / si, side_mm / sj, (b[5] - b[2]) + depth_margin_slices(sk, plan)]) / 2.0
    return np.concatenate([centre - half, centre + half])


def _axis_coordinates(lo: float, hi: float, n: int) -> np.ndarray:
    """Voxel-centre coordinates of ``n`` equal cells spanning the edges ``[lo, hi]``."""
    step = (hi - lo) / n
    return lo + step * (np.arange(n) + 0.5) - 0.5


def _resample_crop(
    array: np.ndarray, region: np.ndarray, shape: tuple[int, int, int], fill: float
) -> np.ndarray:
    """Cut ``region`` (edges, ijk) from a ``(K, J, I)`` array and resample it to ``shape`` (D, H, W)."""
    lo_kji, hi_kji = region[:3][::-1], region[3:][::-1]
    # Integer voxel range needed, with one voxel of margin for interpolation, padded with air outside.
    start = np.floor(lo_kji - 1).astype(int)
    stop = np.ceil(hi_kji + 1).astype(int)
    src = [(max(a, 0), min(b, n)) for a, b, n in zip(start, stop, array.shape, strict=True)]
    sub = np.full(tuple(stop - start), fill, np.float32)
    if all(b > a for a, b in src):
        dst = tuple(slice(a - s0, b - s0) for (a, b), s0 in zip(src, start, strict=True))
        sub[dst] = array[tuple(slice(a, b) for a, b in src)]
    steps = (hi_kji - lo_kji) / np.asarray(shape)
    sigma = np.maximum((steps - 1.0) / 2.0, 0.0)
    if sigma.any():
        sub = ndimage.gaussian_filter(sub, sigma, mode="nearest")
    axes = [
        _axis_coordinates(lo - s0, hi - s0, n)
        for lo, hi, s0, n in zip(lo_kji, hi_kji, start, shape, strict=True)
    ]
    grid = np.meshgrid(*axes, indexing="ij")
    return ndimage.map_coordinates(sub, grid, order=1, mode="nearest").astype(np.float32)


def _axis_flips(volume: Volume) -> tuple[bool, bool, bool] | None:
    """Per-axis (i, j, k) flips to canonical orientation, or None when the axes are permuted."""
    d = volume.direction_matrix
    perm = [int(np.argmax(np.abs(d[:, c]))) for c in range(3)]
    if perm != [0, 1, 2]:
        return None
    return tuple(bool(d[c, c] < 0) for c in range(3))  # type: ignore[return-value]


def box_corners(box: Sequence[float]) -> np.ndarray:
    """The 8 corners ``(8, 3)`` of a box ``(a0, b0, c0, a1, b1, c1)`` (voxel edges or mm)."""
    b = np.asarray(box, float)
    return np.array([[b[3 * x], b[1 + 3 * y], b[2 + 3 * z]] for x in (0, 1) for y in (0, 1) for z in (0, 1)])


def _box_to_canonical(volume: Volume, canonical: Volume, bbox: BBox) -> BBox:
    """Map a box from a volume's own voxel grid to its canonical reorientation (no interpolation)."""
    # Voxel edges -> voxel-centre coordinates (-0.5) -> mm -> the other grid -> edges (+0.5).
    idx = canonical.physical_to_index(volume.index_to_physical(box_corners(bbox) - 0.5)) + 0.5
    lo, hi = np.rint(idx.min(axis=0)).astype(int), np.rint(idx.max(axis=0)).astype(int)
    return (*lo.tolist(), *hi.tolist())  # type: ignore[return-value]


class LesionPatches(NamedTuple):
    """Patches and where the lesion box lies in them.

    Attributes:
        images: ``(..., D, H, W)`` float32 in [0, 1].
        extents: ``(..., 3)`` share of the patch the lesion box spans along (D, H, W); the box is centred in
            its patch, so this fixes the lesion region (used by the classifier's lesion pooling).
    """

    images: np.ndarray
    extents: np.ndarray


def extract_patches(volume: Volume, boxes: Sequence[Sequence[int]], plan: PatchPlan) -> LesionPatches:
    """Cut one patch per lesion box from a CT volume.

    Args:
        volume: CT in HU, any orientation.
        boxes: lesion boxes ``bbox_ijk`` in this volume's own voxel indices.
        plan: crop rule, patch shape and window.

    Returns:
        Patches ``(len(boxes), D, H, W)`` in canonical orientation and box extents ``(len(boxes), 3)``.

    Raises:
        BoxError: a box is malformed or lies outside the volume.
    """
    checked = [check_box(b, volume.shape, f"lesion box {n}") for n, b in enumerate(boxes)]
    images = np.zeros((len(checked), *plan.shape), np.float32)
    extents = np.zeros((len(checked), 3), np.float32)
    if not checked:
        return LesionPatches(images, extents)
    flips = _axis_flips(volume)
    array, spacing = volume.array, volume.spacing
    if flips is None:
        # Permuted axes (a non-axial acquisition): reorder the whole volume once, then the boxes.
        canonical = volume.to_canonical()
        checked = [_box_to_canonical(volume, canonical, b) for b in checked]
        array, spacing, flips = canonical.array, canonical.spacing, (False, False, False)
    lo, hi = plan.hu_window
    for n, box in enumerate(checked):
        region = crop_region(box, spacing, plan)
        patch = _resample_crop(array, region, plan.shape, plan.air_hu)
        # Flipping the patch equals cropping the flipped volume: the crop is symmetric about the box.
        for axis, flip in enumerate(flips):
            if flip:
                patch = np.flip(patch, axis=2 - axis)
        images[n] = (np.clip(patch, lo, hi) - lo) / (hi - lo)
        size = np.subtract(box[3:], box[:3]) / (region[3:] - region[:3])
        extents[n] = np.clip(size[::-1], 0.0, 1.0)
    return LesionPatches(images, extents)


def extract_lesion_patches(
    phases: Mapping[str, Volume], boxes: Sequence[Mapping[str, Sequence[int]]], plan: PatchPlan
) -> LesionPatches:
    """Three-phase patches of several lesions, stacked in :data:`liaids.codes.PHASES` order.

    Args:
        phases: phase name -> CT volume (NC, ART, PV).
        boxes: per lesion, phase name -> ``bbox_ijk`` in that phase's voxels.
        plan: crop rule.

    Returns:
        Patches ``(len(boxes), 3, D, H, W)`` float32 in [0, 1] and box extents ``(len(boxes), 3, 3)``.

    Raises:
        BoxError: a lesion lacks a box for a phase, or a box is invalid.
    """
    for n, lesion in enumerate(boxes):
        missing = [p for p in PHASES if p not in lesion]
        if missing:
            raise BoxError(f"lesion {n} has no box in phase(s) {missing}; match or transfer boxes first")
    if not boxes:
        return LesionPatches(
            np.zeros((0, len(PHASES), *plan.shape), np.float32), np.zeros((0, len(PHASES), 3), np.float32)
        )
    per_phase = [extract_patches(phases[p], [lesion[p] for lesion in boxes], plan) for p in PHASES]
    return LesionPatches(
        np.stack([pp.images for pp in per_phase], axis=1), np.stack([pp.extents for pp in per_phase], axis=1)
    )


def jitter_box(
    bbox: BBox,
    rng: np.random.Generator,
    spacing: Sequence[float],
    shape_kji: tuple[int, int, int],
    shift: float = 0.1,
    scale: float = 0.15,
    max_shift_mm: float = 8.0,
) -> BBox:
    """Perturb a box as a detector might: centre shift and size change, independently per axis.

    Gaussian, for when no measured errors are at hand; :class:`BoxErrors` draws measured ones.

    Args:
        bbox: the true box.
        rng: random generator.
        spacing: voxel size ``(i, j, k)`` in mm (the shift is capped in mm, so small lesions stay in view).
        shape_kji: the volume's shape; the result is clipped to it.
        shift: centre shift SD as a share of the box size on that axis.
        scale: SD of the log size factor per axis.
        max_shift_mm: cap of the centre shift.

    Returns:
        A box with at least one voxel per axis, inside the volume.
    """
    b = np.asarray(bbox, float)
    size = b[3:] - b[:3]
    centre = (b[:3] + b[3:]) / 2.0
    cap = max_shift_mm / np.asarray(spacing, float)
    centre = centre + np.clip(rng.normal(0.0, shift, 3) * size, -cap, cap)
    return _clip_box(centre, size * np.exp(rng.normal(0.0, scale, 3)), shape_kji)


@dataclass(frozen=True)
class BoxErrors:
    """Measured errors of a detector's boxes, for training the classifier on boxes like the ones it meets.

    ``benchmarks/detection.py accuracy --out FILE`` writes them (``box_error_at_2fp.samples``): for each
    true lesion found at the operating point of 2 false positives per scan, the log of detected / true
    box size and the signed centre shift as a share of the true size, per axis ``(i, j, k)``, and the
    lesion's diameter. Lesions under 1 cm and the rest are drawn from separately, because a detector's
    small-lesion hits are mostly boxes of something else that engulf them (a hit through IoM > 0.5):
    on the phantom 21 of 22, boxes about 25 times too large, centred several lesion sizes away. A patch
    cut from such a box shows the lesion as a pixel or two and teaches nothing about it, so lesions under
    1 cm draw only from errors of boxes that are their own (centre inside the true box), pooled with the
    larger lesions' own boxes when fewer than ``MIN_POOL``. Larger lesions draw from all their errors,
    engulfing boxes included: there the lesion still fills a good part of the patch.

    Args:
        samples: ``(N, 7)``: log size ratio i, j, k; centre shift / size i, j, k; diameter in mm.
        source: the file they came from.
    """

    samples: np.ndarray
    source: str = ""
    MIN_POOL: ClassVar[int] = 20

    @classmethod
    def load(cls, path: str | Path) -> BoxErrors:
        """Read a detection benchmark result, or a JSON ``{"samples": [[...7 values], ...]}``.

        Raises:
            LiaidsError: unreadable file, no samples, or rows that are not 7 finite numbers.
        """
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise LiaidsError(f"cannot read box errors: {exc}", path) from exc
        section = doc.get("box_error_at_2fp", doc) if isinstance(doc, dict) else None
        rows = section.get("samples") if isinstance(section, dict) else None
        try:
            samples = np.asarray(rows, float)
        except (TypeError, ValueError):
            samples = np.zeros((0, 0))
        if samples.ndim != 2 or samples.shape[1] != 7 or len(samples) == 0 or not np.isfinite(samples).all():
            raise LiaidsError("no box error samples (box_error_at_2fp.samples: rows of 7 numbers)", path)
        return cls(samples, str(path))

    @property
    def digest(self) -> str:
        """Checksum of the samples (names the patch cache and goes into the model's config)."""
        return hashlib.sha256(np.ascontiguousarray(self.samples, np.float64).tobytes()).hexdigest()[:16]

    @property
    def small(self) -> np.ndarray:
        """Which samples are of lesions under 1 cm."""
        return self.samples[:, 6] < SMALL_LESION_MM

    @property
    def own(self) -> np.ndarray:
        """Which samples are of boxes of the lesion itself (centre inside the true box)."""
        return (np.abs(self.samples[:, 3:6]) < 0.5).all(axis=1)

    def summary(self) -> dict:
        """What a model's ``config.json`` records of them."""
        return {
            "source": self.source,
            "sha256_16": self.digest,
            "lesions": len(self.samples),
            "lesions_under_1cm": int(self.small.sum()),
            "own_boxes_under_1cm": int((self.small & self.own).sum()),
            "log_size_ratio_median_ijk": np.round(np.median(self.samples[:, :3], axis=0), 3).tolist(),
        }

    def to_json(self) -> dict:
        return {"samples": self.samples.tolist()}

    def pool(self, diameter_mm: float) -> np.ndarray:
        """Which samples a lesion of this diameter draws from (boolean mask, never empty)."""
        if diameter_mm >= SMALL_LESION_MM:
            pool = ~self.small
        else:
            pool = self.small & self.own
            if pool.sum() < self.MIN_POOL:
                pool = self.own
        return pool if pool.any() else np.ones(len(self.samples), bool)

    def apply(
        self, bbox: BBox, rng: np.random.Generator, diameter_mm: float, shape_kji: tuple[int, int, int]
    ) -> BBox:
        """A box placed with the error of a detected lesion of the same size class, drawn at random.

        Args:
            bbox: the true box.
            rng: random generator.
            diameter_mm: the lesion's diameter (picks the under-1-cm or the larger lesions' errors).
            shape_kji: the volume's shape; the result is clipped to it.

        Returns:
            A box with at least one voxel per axis, inside the volume.
        """
        pool = self.samples[self.pool(diameter_mm)]
        row = pool[rng.integers(len(pool))]
        b = np.asarray(bbox, float)
        size = b[3:] - b[:3]
        centre = (b[:3] + b[3:]) / 2.0 + row[3:6] * size
        return _clip_box(centre, size * np.exp(row[:3]), shape_kji)


def _clip_box(centre: np.ndarray, size: np.ndarray, shape_kji: tuple[int, int, int]) -> BBox:
    lo = np.floor(centre - size / 2.0 + 0.5).astype(int)
    hi = np.maximum(np.floor(centre + size / 2.0 + 0.5).astype(int), lo + 1)
    limit = np.asarray(shape_kji[::-1])
    lo = np.clip(lo, 0, limit - 1)
    hi = np.clip(hi, lo + 1, limit)
    return (*lo.tolist(), *hi.tolist())  # type: ignore[return-value]


def patch_spacing_mm(bbox: BBox, spacing: Sequence[float], plan: PatchPlan) -> tuple[float, float, float]:
    """Voxel size ``(i, j, k)`` in mm of the patch cut for a box (for reports and tests)."""
    region = crop_region(bbox, spacing, plan)
    extent = (region[3:] - region[:3]) * np.asarray(spacing, float)
    d, h, w = plan.shape
    return (float(extent[0] / w), float(extent[1] / h), float(extent[2] / d))


def depth_margin_slices(slice_mm: float, plan: PatchPlan) -> float:
    """Slices the rule adds to a box's depth at a given slice spacing."""
    if not math.isfinite(slice_mm) or slice_mm <= 0:
        raise ValueError(f"slice spacing must be positive, got {slice_mm}")
    return plan.z_margin_slices * (plan.z_reference_mm / slice_mm if slice_mm < plan.z_reference_mm else 1.0)
