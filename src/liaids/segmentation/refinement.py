"""Refinement of the liver boundary on a finer grid: a second, cascaded stage after the segmentation network.

The ``small`` segmentation network sees the CT on a 3 mm grid (its 2D part on a 6 mm one), so its liver
edge is only as exact as that grid allows: on the zzh phantom most wrong voxels lie within 3 mm of the true
edge, and the inferior vena cava, ringed by liver, is labelled liver. The refinement network (the same
hybrid U-Net, parametrised: two input channels, one output) reads the CT on a finer grid (1.5 mm for
``small``) together with the coarse liver logit, inside the coarse liver's bounding box plus a margin, and
outputs a correction that is added to the coarse logit (a residual, so an untrained refiner changes
nothing). This is nnU-Net's cascade idea: global context from the coarse stage, the edge from the fine one.

A refiner belongs to one segmentation model: it lives in that model folder's ``refinement/`` subfolder,
and its ``config.json`` records the checksum of the coarse weights it learned to correct.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from liaids.errors import ModelLoadError
from liaids.model_store import load_model_files
from liaids.networks.liver_unet import HybridUNet, UNetConfig
from liaids.segmentation.preprocessing import GridMapping, SegmentationPlan, resample, to_model_grid
from liaids.types import Volume

REFINER_KIND = "liver-refinement"
REFINEMENT_DIR = "refinement"
# The coarse logit enters as a channel scaled to [-1, 1] and is the base of the residual; beyond +-8 a voxel
# is certain either way (sigmoid 0.9997).
LOGIT_CLAMP = 8.0

Region = tuple[slice, slice, slice]


def coarse_to_fine(coarse_logit: torch.Tensor, coarse: GridMapping, fine: GridMapping) -> torch.Tensor:
    """The coarse model's logit ``(C, K', J', I')`` (padded coarse grid) on the padded fine grid, clamped.

    Both grids span the canonical volume's physical extent, so resampling one onto the other is exact up
    to interpolation; the fine grid's padding gets "certainly not liver".
    """
    k, j, i = coarse.resampled_shape
    out = resample(coarse_logit[:, :k, :j, :i].float(), fine.resampled_shape)
    pad = (0, fine.padded_shape[2] - out.shape[3], 0, fine.padded_shape[1] - out.shape[2])
    return F.pad(out, pad, value=-LOGIT_CLAMP).clamp(-LOGIT_CLAMP, LOGIT_CLAMP)


def refinement_region(
    liver: torch.Tensor, margin_px: int, margin_slices: int, divisor: int, min_depth: int
) -> Region | None:
    """Bounding box of a coarse liver mask ``(K, J, I)`` plus margins, sized for the network.

    Args:
        liver: boolean mask on the padded fine grid.
        margin_px: in-plane margin (fine-grid pixels).
        margin_slices: margin along z (slices).
        divisor: the box's in-plane sides are rounded up to a multiple of this.
        min_depth: the box has at least this many slices (the network's slab), if the volume has them.

    Returns:
        Slices along ``(K, J, I)``, or None when the mask is empty.
    """
    nz = torch.nonzero(liver)
    if len(nz) == 0:
        return None
    lo = (nz.min(dim=0).values - torch.tensor([margin_slices, margin_px, margin_px])).tolist()
    hi = (nz.max(dim=0).values + 1 + torch.tensor([margin_slices, margin_px, margin_px])).tolist()
    out = []
    for axis, size in enumerate(liver.shape):
        a, b = max(0, lo[axis]), min(size, hi[axis])
        need = min_depth if axis == 0 else -(-(b - a) // divisor) * divisor
        need = min(max(need, b - a), size)
        if b - a < need:  # grow the box, towards the far end first, then back
            b = min(size, a + need)
            a = max(0, b - need)
        out.append(slice(a, b))
    return out[0], out[1], out[2]


def refiner_input(image: torch.Tensor, coarse_logit: torch.Tensor) -> torch.Tensor:
    """The refiner's input: normalised CT ``(1, ...)`` and the clamped coarse logit scaled to [-1, 1]."""
    return torch.cat([image, coarse_logit / LOGIT_CLAMP], dim=0)


@dataclass
class LiverRefiner:
    """A loaded refinement stage.

    Attributes:
        network: hybrid U-Net with two input channels and one output (the logit correction).
        plan: the fine grid.
        margin_mm: margin around the coarse liver's bounding box, in-plane.
        margin_slices: margin along z.
        config: the model folder's ``config.json``.
        device: where the network runs.
    """

    network: HybridUNet
    plan: SegmentationPlan
    margin_mm: float
    margin_slices: int
    config: dict[str, Any]
    device: torch.device

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> LiverRefiner:
        """Load a refinement model folder (``<segmentation model>/refinement``).

        Raises:
            ModelLoadError: missing, truncated or foreign model files, or weights that do not fit.
        """
        path = Path(folder)
        state, config = load_model_files(path, REFINER_KIND)
        try:
            net_cfg = config["network"]
            network = HybridUNet(UNetConfig(**{**net_cfg, "channels": tuple(net_cfg["channels"])}))
            network.load_state_dict(state)
            plan = SegmentationPlan.from_dict(config["plan"])
            margin_mm, margin_slices = float(config["margin_mm"]), int(config["margin_slices"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(
                f"weights do not fit the configured network ({type(exc).__name__}: {exc})".splitlines()[0],
                path,
            ) from exc
        if network.config.in_channels != 2 or network.config.out_channels != 1:
            raise ModelLoadError("a refiner takes 2 input channels and gives 1 output", path)
        dev = torch.device(device)
        network.to(dev).eval()
        return cls(network, plan, margin_mm, margin_slices, config, dev)

    def region(self, coarse_liver: torch.Tensor) -> Region | None:
        """Where the refiner runs on the fine grid (see :func:`refinement_region`)."""
        return refinement_region(
            coarse_liver,
            round(self.margin_mm / self.plan.pixel_mm),
            self.margin_slices,
            self.network.divisor,
            self.network.config.slab,
        )

    @torch.no_grad()
    def correction(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logit correction ``(1, K, J, I)`` for the refiner's input ``(2, K, J, I)`` (one region)."""
        slab, depth = self.network.config.slab, inputs.shape[1]
        if depth < slab:  # a short scan: pad along z with air and "not liver"
            inputs = F.pad(inputs, (0, 0, 0, 0, 0, slab - depth), value=-1.0)
        roi = (slab, inputs.shape[2], inputs.shape[3])
        return (
            sliding_window_inference(
                inputs[None].to(self.device),
                roi,
                sw_batch_size=8,
                predictor=self.network,
                overlap=0.25,
                mode="gaussian",
            )[0, :, :depth]
            .float()
            .cpu()
        )

    def refine(
        self, canonical: Volume, coarse_logit: torch.Tensor, coarse: GridMapping
    ) -> tuple[torch.Tensor, GridMapping]:
        """Refined liver logit on the fine grid and its mapping.

        Args:
            canonical: the CT in canonical orientation (HU).
            coarse_logit: the segmentation network's liver logit ``(1, K', J', I')`` on its padded grid.
            coarse: how the canonical volume was mapped to that grid.

        Returns:
            ``(1, K'', J'', I'')`` logit on the padded fine grid, and the fine grid's mapping, as a tuple.
        """
        image, fine = to_model_grid(canonical, self.plan)
        logit = coarse_to_fine(coarse_logit, coarse, fine)
        region = self.region(logit[0] > 0)
        if region is not None:
            index = (slice(None), *region)
            logit[index] += self.correction(refiner_input(image[index], logit[index]))
        return logit, fine
