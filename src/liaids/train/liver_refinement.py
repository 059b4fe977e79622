"""Training of the liver boundary refinement stage (``liaids train refine-liver``).

The coarse segmentation model is fixed; the refiner (:mod:`liaids.segmentation.refinement`) learns, on the
same training cases, to correct the coarse liver logit on a finer grid. Steps, each leaving a JSON
artefact in the output folder:

1. ``splits.json`` (pass the segmentation model's own ``splits.json`` so that validation cases stay unseen
   by both stages) and ``plan.json`` (the fine grid);
2. every phase of every case is read once: the coarse model's logit is computed and moved to the fine grid,
   and the region the refiner will see at inference (coarse liver box plus margin) is kept in memory;
3. training on random slabs and in-plane crops of those regions, most of them centred on a point of the
   true liver edge, with the segmentation trainer's augmentation; loss = cross-entropy + Dice (MONAI) on
   the coarse logit plus the correction; ``last.pt`` after every epoch (``resume=True`` continues),
   ``log.csv`` / ``log.json`` with the validation liver Dice of the coarse and the refined logit on the
   fine grid, and the best epoch as a model folder (``model.pt``, ``config.json``) to copy into
   ``<segmentation model>/refinement/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from scipy import ndimage

from liaids.codes import PHASES
from liaids.dataset import Dataset
from liaids.errors import LiaidsError
from liaids.model_store import WEIGHTS_FILE, sha256
from liaids.networks.liver_unet import HybridUNet, UNetConfig
from liaids.segmentation.predictor import LiverSegmenter
from liaids.segmentation.preprocessing import SegmentationPlan, masks_to_model_grid, to_model_grid
from liaids.segmentation.refinement import (
    LOGIT_CLAMP,
    REFINER_KIND,
    LiverRefiner,
    coarse_to_fine,
    refiner_input,
)
from liaids.train.common import (
    close_epoch,
    prepare_output,
    restore_checkpoint,
    run_epoch_steps,
    split_and_record,
)
from liaids.train.segmentation import augment_slabs


@dataclass(frozen=True)
class RefinerTrainConfig:
    """Optimiser and schedule of the refiner.

    Args:
        lr: initial learning rate (decayed linearly to 5 % of it).
        weight_decay: decoupled weight decay (AdamW).
        batch: slabs per step.
        epochs: number of epochs.
        steps_per_epoch: optimiser steps per epoch.
        crop: in-plane training crop (fine-grid pixels, multiple of the network divisor).
        edge_fraction: share of crops centred on a point of the true liver edge.
        margin_mm: in-plane margin around the coarse liver's box (also used at inference).
        margin_slices: margin along z, in slices.
        val_fraction: share of cases kept for validation (when no splits file is given).
    """

    lr: float = 0.002
    weight_decay: float = 1e-4
    batch: int = 8
    epochs: int = 20
    steps_per_epoch: int = 100
    crop: int = 96
    edge_fraction: float = 0.8
    margin_mm: float = 15.0
    margin_slices: int = 1
    val_fraction: float = 0.1


# Network, fine grid and schedule per profile. ``small``: 1.5 mm (twice as fine as the small segmentation
# grid), its 2D part at 3 mm; ``paper``: 0.75 mm under the paper-size segmentation network's 1.5 mm.
REFINER_PROFILES: dict[str, tuple[UNetConfig, SegmentationPlan, RefinerTrainConfig]] = {
    "small": (
        UNetConfig(
            channels=(8, 16, 32),
            slab=3,
            key_side=8,
            deep_supervision=0,
            out_channels=1,
            stem_stride=2,
            stem_skip=True,
            in_channels=2,
        ),
        SegmentationPlan(pixel_mm=1.5, slice_mm=5.0, divisor=8),
        RefinerTrainConfig(),
    ),
    "paper": (
        UNetConfig(
            channels=(16, 32, 64, 128),
            slab=5,
            key_side=16,
            deep_supervision=0,
            out_channels=1,
            in_channels=2,
        ),
        SegmentationPlan(pixel_mm=0.75, slice_mm=2.5, divisor=8),
        RefinerTrainConfig(batch=4, epochs=50, steps_per_epoch=250, crop=192),
    ),
}


@dataclass
class _Region:
    """One phase volume's refinement region on the fine grid."""

    inputs: torch.Tensor  # (2, K, J, I) float16: CT and scaled coarse logit
    target: torch.Tensor  # (1, K, J, I) uint8: true liver
    edge: np.ndarray  # (E, 3) voxel indices of the true liver edge


def _refiner_for(net_cfg: UNetConfig, plan: SegmentationPlan, cfg: RefinerTrainConfig) -> LiverRefiner:
    network = HybridUNet(net_cfg)
    return LiverRefiner(network, plan, cfg.margin_mm, cfg.margin_slices, {}, torch.device("cpu"))


def _prepare_case(ds: Dataset, case_id: str, coarse: LiverSegmenter, refiner: LiverRefiner) -> list[_Region]:
    case = ds.load_case(case_id)
    out = []
    for p in PHASES:
        canon = case.study[p].to_canonical()
        liver = case.study[p].with_array(case.liver[p].array).to_canonical().array > 0
        logits, coarse_map = coarse.model_logits(canon)
        image, fine = to_model_grid(canon, refiner.plan)
        logit = coarse_to_fine(logits[:1], coarse_map, fine)
        target = masks_to_model_grid([liver], fine)
        region = refiner.region(logit[0] > 0)
        if region is None:
            continue
        index = (slice(None), *region)
        truth = target[index]
        edge = truth[0].numpy().astype(bool)
        edge = edge & ~ndimage.binary_erosion(edge, structure=np.ones((1, 3, 3), bool))
        out.append(_Region(refiner_input(image[index], logit[index]).half(), truth, np.argwhere(edge)))
    return out


def _crop(
    array: torch.Tensor, k0: int, j0: int, i0: int, shape: tuple[int, int, int], fill: float
) -> torch.Tensor:
    """``array[:, k0:k0+D, j0:j0+H, i0:i0+W]`` with ``fill`` where the window leaves the array."""
    out = torch.full((array.shape[0], *shape), fill, dtype=torch.float32)
    src, dst = [], []
    for start, size, length in zip((k0, j0, i0), shape, array.shape[1:], strict=True):
        lo, hi = max(start, 0), min(start + size, length)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - start, lo - start + max(hi - lo, 0)))
    out[(slice(None), *dst)] = array[(slice(None), *src)].float()
    return out


def _sample(
    regions: list[_Region], cfg: RefinerTrainConfig, slab: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = [], []
    shape = (slab, cfg.crop, cfg.crop)
    for _ in range(cfg.batch):
        r = regions[int(rng.integers(len(regions)))]
        _, depth, height, width = r.inputs.shape
        if len(r.edge) and rng.random() < cfg.edge_fraction:
            k, j, i = r.edge[int(rng.integers(len(r.edge)))]
            shift = rng.integers(-cfg.crop // 4, cfg.crop // 4 + 1, 2)
            k0, j0, i0 = (
                int(k) - slab // 2,
                int(j) - cfg.crop // 2 + int(shift[0]),
                int(i) - cfg.crop // 2 + int(shift[1]),
            )
        else:
            k0 = int(rng.integers(0, max(depth - slab, 0) + 1))
            j0 = int(rng.integers(min(0, height - cfg.crop), max(height - cfg.crop, 0) + 1))
            i0 = int(rng.integers(min(0, width - cfg.crop), max(width - cfg.crop, 0) + 1))
        inputs.append(_crop(r.inputs, k0, j0, i0, shape, -1.0))
        targets.append(_crop(r.target, k0, j0, i0, shape, 0.0))
    return augment_slabs(torch.stack(inputs), torch.stack(targets), rng)


def _refined_logit(net: HybridUNet, inputs: torch.Tensor) -> torch.Tensor:
    """The coarse logit (channel 1, rescaled) plus the network's correction."""
    out = net(inputs)
    correction = out[0] if isinstance(out, tuple) else out
    return inputs[:, 1:2] * LOGIT_CLAMP + correction


def _dice(pred: torch.Tensor, truth: torch.Tensor) -> tuple[int, int]:
    return int((pred & truth).sum()), int(pred.sum() + truth.sum())


@torch.no_grad()
def _validate(refiner: LiverRefiner, regions: list[_Region]) -> dict[str, float]:
    """Liver Dice over the validation regions (fine grid), coarse and refined, pooled over voxels."""
    refiner.network.eval()
    sums = {"coarse": [0, 0], "refined": [0, 0]}
    for r in regions:
        inputs = r.inputs.float()
        coarse = inputs[1:2] * LOGIT_CLAMP
        refined = coarse + refiner.correction(inputs)
        truth = r.target.bool()
        for name, logit in (("coarse", coarse), ("refined", refined)):
            inter, total = _dice(logit > 0, truth)
            sums[name][0] += inter
            sums[name][1] += total
    refiner.network.train()
    return {f"val_{k}_liver_dice": 2 * a / b if b else float("nan") for k, (a, b) in sums.items()}


def train_liver_refinement(
    data: str | Path,
    segmenter: str | Path,
    out: str | Path,
    profile: str = "small",
    *,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    seed: int = 0,
    resume: bool = False,
    max_cases: int | None = None,
    splits_file: str | Path | None = None,
    device: str = "cpu",
    workers: int = 1,
    progress: Callable[[str, float], None] | None = None,
) -> Path:
    """Train the boundary refinement stage of a liver segmentation model.

    Args:
        data: dataset folder (the segmentation model's training data).
        segmenter: the coarse segmentation model folder (its weights stay fixed).
        out: output folder (model folder plus training artefacts).
        profile: ``small`` or ``paper``.
        epochs, steps_per_epoch: override the profile's schedule.
        seed: seeds the split, sampling, augmentation and initialisation.
        resume: continue from ``out/last.pt``.
        max_cases: use only the first N cases (quick runs).
        splits_file: JSON with ``train`` and ``val`` case lists; pass the segmentation model's
            ``splits.json`` so the validation cases are unseen by both stages.
        device: ``cpu`` or ``cuda``.
        workers: threads that read the cases and run the coarse model before training.
        progress: called with a message and the fraction done.

    Returns:
        The output folder, holding ``model.pt`` and ``config.json`` of the best epoch.
    """
    if profile not in REFINER_PROFILES:
        raise LiaidsError(f"unknown profile {profile!r}; expected one of {sorted(REFINER_PROFILES)}")
    net_cfg, plan, cfg = REFINER_PROFILES[profile]
    cfg = replace(cfg, epochs=epochs or cfg.epochs, steps_per_epoch=steps_per_epoch or cfg.steps_per_epoch)
    segmenter = Path(segmenter)
    coarse = LiverSegmenter.load(segmenter, device, refine=False)
    out = prepare_output(out, resume)
    report = progress or (lambda _msg, _frac: None)
    ds = Dataset(data)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    refiner = _refiner_for(net_cfg, plan, cfg)
    if plan.divisor % refiner.network.divisor:
        raise LiaidsError(f"plan divisor {plan.divisor} is not a multiple of the network's divisor")
    # Start as the identity: the correction head outputs zero, so epoch 0 is the coarse model itself.
    last = refiner.network.head[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    refiner.network.to(device)
    refiner.device = torch.device(device)

    _, splits = split_and_record(out, ds, plan.to_dict(), cfg.val_fraction, seed, splits_file, max_cases)
    cases = [*splits["train"], *splits["val"]]
    regions: dict[str, list[_Region]] = {"train": [], "val": []}
    # Threads suffice: gzip decompression and torch release the GIL.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        prepared = pool.map(lambda c: _prepare_case(ds, c, coarse, refiner), cases)
        for n, (case_id, case_regions) in enumerate(zip(cases, prepared, strict=True)):
            regions["train" if n < len(splits["train"]) else "val"].extend(case_regions)
            report(f"preparing {case_id}", (n + 1) / len(cases))
    if not regions["train"]:
        raise LiaidsError("the coarse model finds no liver in any training case", ds.root)

    net = refiner.network
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * cfg.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.05, 1.0 - step / total_steps))
    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    log: list[dict[str, Any]] = []
    start_epoch, best = 0, -1.0
    ckpt_path = out / "last.pt"
    if resume and ckpt_path.is_file():
        ckpt = restore_checkpoint(ckpt_path, net, opt, sched, rng)
        start_epoch, best, log = ckpt["epoch"], ckpt["best"], ckpt["log"]
    config = {
        "kind": REFINER_KIND,
        "profile": profile,
        "network": net_cfg.to_dict(),
        "plan": plan.to_dict(),
        "margin_mm": cfg.margin_mm,
        "margin_slices": cfg.margin_slices,
        "coarse_model": {"folder": str(segmenter.resolve()), "sha256": sha256(segmenter / WEIGHTS_FILE)},
        "training": {
            **asdict(cfg),
            "seed": seed,
            "data": str(Path(data).resolve()),
            "dataset": ds.meta.get("name"),
            "train_cases": len(splits["train"]),
            "val_cases": len(splits["val"]),
        },
    }
    net.train()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()

        def step_loss() -> torch.Tensor:
            inputs, target = _sample(regions["train"], cfg, net_cfg.slab, rng)
            return loss_fn(_refined_logit(net, inputs.to(device)), target.to(device))

        losses = run_epoch_steps(opt, sched, step_loss, epoch, cfg.epochs, cfg.steps_per_epoch, report)
        row = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            "lr": sched.get_last_lr()[0],
            **_validate(refiner, regions["val"]),
            "seconds": round(time.time() - t0, 1),
        }
        best = close_epoch(out, net, opt, sched, rng, log, row, config, "val_refined_liver_dice", best)
    return out
