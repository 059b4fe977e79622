"""From a CT volume and its liver mask to the detector's grid, and boxes back again.

The detection grid is the canonical orientation (:meth:`liaids.types.Volume.to_canonical`) cropped to the
liver's bounding box plus a margin and resampled to the plan's voxel size. HU are clipped to the window
and quantised to 8 bits (2 HU steps at the default window, far below CT noise): training caches and
inference then see exactly the same numbers. Each grid slice is detected with ``n`` neighbours on each
side (a slab of ``2n+1`` slices; the first and last slices are repeated at the edges).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from liaids.masks import bounding_box
from liaids.types import Volume


@dataclass(frozen=True)
class DetectionPlan:
    """Preprocessing decisions, saved with every detector so inference repeats them.

    Args:
        pixel_mm: in-plane voxel size of the detection grid.
        slice_mm: slice spacing of the detection grid.
        hu_window: HU range kept (the authors' window: level 45, width 510).
        margin_mm: margin around the liver's bounding box (in-plane and along z).
        test_pixel_mm: in-plane voxel sizes read at inference, each on a grid of its own, their 2D boxes
            pooled before merging (multi-scale testing); empty: ``pixel_mm`` alone. Training ignores it.
    """

    pixel_mm: float = 0.7
    slice_mm: float = 5.0
    hu_window: tuple[float, float] = (-210.0, 300.0)
    margin_mm: float = 10.0
    test_pixel_mm: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        sizes = (self.pixel_mm, self.slice_mm, *self.test_pixel_mm)
        if not all(s > 0 for s in sizes):  # also catches NaN
            raise ValueError(f"detection plan voxel sizes must be positive, got {sizes}")

    @property
    def inference_grids(self) -> list[DetectionPlan]:
        """One plan per grid read at inference (the first is the one boxes are merged on)."""
        return [replace(self, pixel_mm=px, test_pixel_mm=()) for px in self.test_pixel_mm] or [self]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> DetectionPlan:
        return cls(
            pixel_mm=float(data["pixel_mm"]),
            slice_mm=float(data["slice_mm"]),
            hu_window=(float(data["hu_window"][0]), float(data["hu_window"][1])),
            margin_mm=float(data["margin_mm"]),
            test_pixel_mm=tuple(float(v) for v in data.get("test_pixel_mm", ())),
        )


PLANS: dict[str, DetectionPlan] = {
    # Native-like pixels and the paper's 5 mm slices.
    "paper": DetectionPlan(pixel_mm=0.7, slice_mm=5.0),
    # 1 mm pixels and 2.5 mm slices: a 3 mm lesion still spans a few pixels, and the liver fits ~250 px.
    "small": DetectionPlan(pixel_mm=1.0, slice_mm=2.5),
}


@dataclass(frozen=True)
class GridCrop:
    """Where the detection grid lies in the canonical volume.

    ``start`` is the first canonical voxel of the crop and ``size`` its extent (voxels), ``shape`` the grid
    shape, all in ``(k, j, i)`` order. Grid voxel ``g`` covers canonical voxels
    ``[start + g * size / shape, start + (g + 1) * size / shape)``.
    """

    start: tuple[int, int, int]
    size: tuple[int, int, int]
    shape: tuple[int, int, int]

    def grid_to_canonical_box(self, box_kji: np.ndarray) -> np.ndarray:
        """Half-open grid box ``[k0, j0, i0, k1, j1, i1]`` -> half-open canonical box (integers, clipped)."""
        start = np.asarray(self.start, float)
        scale = np.asarray(self.size, float) / np.asarray(self.shape, float)
        lo = np.floor(start + np.asarray(box_kji[:3], float) * scale + 1e-6)
        hi = np.ceil(start + np.asarray(box_kji[3:], float) * scale - 1e-6)
        hi = np.maximum(hi, lo + 1)
        end = start + np.asarray(self.size, float)
        return np.concatenate([np.clip(lo, start, end - 1), np.clip(hi, start + 1, end)]).astype(int)


def liver_crop(
    liver: np.ndarray, spacing_kji: tuple[float, float, float], plan: DetectionPlan
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Start and size ``(k, j, i)`` of the liver's bounding box plus the plan's margin.

    Args:
        liver: boolean liver mask in canonical orientation.
        spacing_kji: canonical voxel size.
        plan: detection plan.

    Returns:
        ``(start, size)``; the whole volume when the mask is empty.
    """
    box = bounding_box(liver)
    if box is None:
        return (0, 0, 0), tuple(int(s) for s in liver.shape)  # type: ignore[return-value]
    start, size = [], []
    for axis, extent in enumerate(box):
        margin = int(np.ceil(plan.margin_mm / spacing_kji[axis]))
        lo = max(0, extent.start - margin)
        hi = min(liver.shape[axis], extent.stop + margin)
        start.append(lo)
        size.append(hi - lo)
    return tuple(start), tuple(size)  # type: ignore[return-value]


def grid_shape(
    size: tuple[int, int, int], spacing_kji: tuple[float, float, float], plan: DetectionPlan
) -> tuple[int, int, int]:
    """Grid shape ``(K, J, I)`` for a crop of ``size`` canonical voxels."""
    target = (plan.slice_mm, plan.pixel_mm, plan.pixel_mm)
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(size, spacing_kji, target, strict=True))  # type: ignore[return-value]


def window_to_uint8(hu: torch.Tensor, plan: DetectionPlan) -> torch.Tensor:
    """HU -> 0..255 over the plan's window."""
    lo, hi = plan.hu_window
    return ((hu.clamp(lo, hi) - lo) * (255.0 / (hi - lo))).round().to(torch.uint8)


def to_detection_grid(
    canonical: Volume,
    plan: DetectionPlan,
    liver: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, GridCrop, np.ndarray | None]:
    """Crop to the liver and resample a canonical CT (and optionally an instance label map).

    Args:
        canonical: CT in canonical orientation (HU).
        plan: detection plan.
        liver: canonical liver mask (crop region); None keeps the whole volume.
        labels: canonical instance label map to resample with nearest neighbour (training).

    Returns:
        ``(image, crop, grid_labels)``: ``image`` uint8 ``(K, J, I)``, the crop, labels or None.
    """
    if liver is None:
        start, size = (0, 0, 0), canonical.shape
    else:
        start, size = liver_crop(liver, canonical.spacing_kji, plan)
    shape = grid_shape(size, canonical.spacing_kji, plan)
    sl = tuple(slice(a, a + n) for a, n in zip(start, size, strict=True))
    hu = torch.from_numpy(np.ascontiguousarray(canonical.array[sl], dtype=np.float32))
    if tuple(hu.shape) != shape:
        hu = F.interpolate(hu[None, None], size=shape, mode="trilinear", align_corners=False)[0, 0]
    image = window_to_uint8(hu, plan).numpy()
    grid_labels = None
    if labels is not None:
        lab = torch.from_numpy(np.ascontiguousarray(labels[sl]).astype(np.int16))
        if tuple(lab.shape) != shape:
            # nearest-exact samples voxel centres, matching the image's align_corners=False grid.
            lab = F.interpolate(lab[None, None].float(), size=shape, mode="nearest-exact")[0, 0]
        grid_labels = lab.to(torch.int16).numpy()
    return image, GridCrop(start, size, shape), grid_labels


def slab_indices(k: int, depth: int, context: int) -> np.ndarray:
    """Indices of the ``2n+1`` slices around grid slice ``k`` (edges repeated)."""
    return np.clip(np.arange(k - context, k + context + 1), 0, depth - 1)


def slice_boxes(labels_2d: np.ndarray, min_pixels: int = 2) -> dict[int, np.ndarray]:
    """Ground-truth 2D boxes ``[x0, y0, x1, y1]`` (half-open pixels, x = column) per lesion of a slice."""
    boxes: dict[int, np.ndarray] = {}
    for lesion_id in np.unique(labels_2d):
        if lesion_id == 0:
            continue
        rows, cols = np.nonzero(labels_2d == lesion_id)
        if rows.size < min_pixels:
            continue
        boxes[int(lesion_id)] = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)
    return boxes


def canonical_box_to_stored(volume: Volume, box_kji: np.ndarray) -> list[int]:
    """A half-open box in canonical ``(k, j, i)`` voxels -> ``bbox_ijk`` of the volume as stored.

    The first and last voxel centres are mapped through physical space, which handles every axis
    permutation and flip that :meth:`Volume.to_canonical` applies.
    """
    canonical = volume.to_canonical()
    k0, j0, i0, k1, j1, i1 = (int(v) for v in box_kji)
    corners = np.array([[i0, j0, k0], [i1 - 1, j1 - 1, k1 - 1]], float)
    stored = np.rint(volume.physical_to_index(canonical.index_to_physical(corners))).astype(int)
    lo, hi = stored.min(axis=0), stored.max(axis=0) + 1
    return [int(lo[0]), int(lo[1]), int(lo[2]), int(hi[0]), int(hi[1]), int(hi[2])]
