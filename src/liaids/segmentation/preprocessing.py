"""From a CT volume to the segmentation network's grid and back.

The model grid is the canonical orientation (:meth:`liaids.types.Volume.to_canonical`) resampled to the
plan's voxel size, with HU clipped to a window and scaled to [-1, 1]. Resampling uses grids that span the
same physical extent both ways (``align_corners=False``), so a prediction maps back onto the input exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from liaids.types import Volume


@dataclass(frozen=True)
class SegmentationPlan:
    """Preprocessing decisions, saved with every model (``config.json``) so inference repeats them.

    Args:
        pixel_mm: in-plane voxel size of the model grid.
        slice_mm: slice spacing of the model grid.
        hu_window: HU range kept before scaling to [-1, 1].
        divisor: in-plane sizes are padded to a multiple of this (the network pools 3 times).
    """

    pixel_mm: float = 3.0
    slice_mm: float = 5.0
    hu_window: tuple[float, float] = (-150.0, 250.0)
    divisor: int = 8

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> SegmentationPlan:
        return cls(
            pixel_mm=float(data["pixel_mm"]),
            slice_mm=float(data["slice_mm"]),
            hu_window=(float(data["hu_window"][0]), float(data["hu_window"][1])),
            divisor=int(data["divisor"]),
        )


@dataclass(frozen=True)
class GridMapping:
    """How a canonical volume was mapped to the model grid: resampled shape, then padding."""

    canonical_shape: tuple[int, int, int]
    resampled_shape: tuple[int, int, int]
    padded_shape: tuple[int, int, int]


def model_shape(volume: Volume, plan: SegmentationPlan) -> tuple[int, int, int]:
    """Shape ``(K, J, I)`` of a canonical volume on the model grid, before padding."""
    sk, sj, si = volume.spacing_kji
    k, j, i = volume.shape
    return (
        max(1, round(k * sk / plan.slice_mm)),
        max(1, round(j * sj / plan.pixel_mm)),
        max(1, round(i * si / plan.pixel_mm)),
    )


def normalise(hu: torch.Tensor, plan: SegmentationPlan) -> torch.Tensor:
    lo, hi = plan.hu_window
    return (hu.clamp(lo, hi) - lo) / (hi - lo) * 2.0 - 1.0


def resample(array: torch.Tensor, shape: tuple[int, int, int], mode: str = "trilinear") -> torch.Tensor:
    """Resample ``(C, K, J, I)`` to ``(C, *shape)``; extents are kept (pixel centres aligned)."""
    if tuple(array.shape[1:]) == tuple(shape):
        return array
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(array[None], size=shape, mode=mode, **kwargs)[0]


def to_model_grid(canonical: Volume, plan: SegmentationPlan) -> tuple[torch.Tensor, GridMapping]:
    """Normalised image ``(1, K', J', I')`` on the model grid, padded in-plane to ``plan.divisor``.

    Args:
        canonical: CT volume in canonical orientation (HU).
        plan: the model's preprocessing plan.
    """
    shape = model_shape(canonical, plan)
    image = torch.from_numpy(np.ascontiguousarray(canonical.array, dtype=np.float32))[None]
    image = normalise(resample(image, shape), plan)
    padded = (
        shape[0],
        -(-shape[1] // plan.divisor) * plan.divisor,
        -(-shape[2] // plan.divisor) * plan.divisor,
    )
    image = F.pad(image, (0, padded[2] - shape[2], 0, padded[1] - shape[1]), value=-1.0)
    return image, GridMapping(canonical.shape, shape, padded)


def masks_to_model_grid(masks: list[np.ndarray], mapping: GridMapping) -> torch.Tensor:
    """Binary masks ``(C, K, J, I)`` (canonical) to the model grid: area-weighted, threshold 0.5, padded."""
    stack = torch.from_numpy(np.stack([m.astype(np.float32) for m in masks]))
    out = (resample(stack, mapping.resampled_shape) >= 0.5).to(torch.uint8)
    pad = (
        0,
        mapping.padded_shape[2] - mapping.resampled_shape[2],
        0,
        mapping.padded_shape[1] - mapping.resampled_shape[1],
    )
    return F.pad(out, pad)


def from_model_grid(probabilities: torch.Tensor, mapping: GridMapping) -> torch.Tensor:
    """Probabilities ``(C, K', J', I')`` on the padded model grid back to the canonical grid."""
    k, j, i = mapping.resampled_shape
    return resample(probabilities[:, :k, :j, :i], mapping.canonical_shape)
