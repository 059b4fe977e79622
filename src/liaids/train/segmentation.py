"""Training of the liver segmentation network (``liaids train segment``).

Steps, each leaving a JSON artefact in the output folder so a run can be repeated without hidden state:

1. ``splits.json``: training and validation cases (seeded, or from a splits file);
2. ``plan.json``: the preprocessing plan; volumes are resampled once to the model grid and kept in memory;
3. training on random slabs (biased to the liver) with augmentation (in-plane affine, salt-and-pepper
   noise, intensity jitter), loss = cross-entropy + Dice (MONAI) on the output and the deep-supervision
   heads; ``last.pt`` after every epoch (resume with ``resume=True``), ``log.csv`` / ``log.json``
   (loss and validation Dice per epoch), and the best model by validation liver Dice as a model folder
   (``model.pt``, ``config.json``) that :class:`liaids.segmentation.predictor.LiverSegmenter` loads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss

from liaids.codes import PHASES
from liaids.dataset import Dataset
from liaids.errors import LiaidsError
from liaids.networks.liver_unet import PROFILES, HybridUNet
from liaids.segmentation.predictor import MODEL_KIND
from liaids.segmentation.preprocessing import SegmentationPlan, masks_to_model_grid, to_model_grid
from liaids.train.common import (
    close_epoch,
    prepare_output,
    restore_checkpoint,
    run_epoch_steps,
    split_and_record,
)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule. ``paper``: the published settings; ``small``: what fits a 2-core CPU.

    Args:
        lr: initial learning rate (decayed linearly to 5 % of it).
        weight_decay: decoupled weight decay (AdamW).
        batch: slabs per step.
        epochs: number of epochs.
        steps_per_epoch: optimiser steps per epoch.
        crop: in-plane training crop (model-grid pixels, multiple of the network divisor).
        liver_slab_fraction: share of slabs drawn to contain liver.
        val_fraction: share of cases kept for validation.
    """

    lr: float = 0.005
    weight_decay: float = 0.05
    batch: int = 4
    epochs: int = 100
    steps_per_epoch: int = 250
    crop: int = 128
    liver_slab_fraction: float = 0.8
    val_fraction: float = 0.1


TRAIN_PROFILES: dict[str, TrainConfig] = {
    "paper": TrainConfig(),
    "small": TrainConfig(lr=0.002, weight_decay=1e-4, batch=4, epochs=40, steps_per_epoch=100, crop=128),
}
# The in-plane divisor is the network's (pooling levels x stem stride).
PLANS: dict[str, SegmentationPlan] = {
    "paper": SegmentationPlan(pixel_mm=1.5, slice_mm=5.0, divisor=8),
    "small": SegmentationPlan(pixel_mm=3.0, slice_mm=5.0, divisor=16),
}
_DEEP_WEIGHTS = (1.0, 0.5, 0.25, 0.125)


@dataclass
class _Volume:
    case_id: str
    phase: str
    image: torch.Tensor  # (1, K, J, I) normalised, float16
    target: torch.Tensor  # (2, K, J, I) uint8: liver, lesion
    liver_k: tuple[int, int]


def _prepare_case(ds: Dataset, case_id: str, plan: SegmentationPlan) -> list[_Volume]:
    case = ds.load_case(case_id)
    out = []
    for p in PHASES:
        canon = case.study[p].to_canonical()
        liver = case.study[p].with_array(case.liver[p].array).to_canonical().array > 0
        lesion = case.study[p].with_array(case.lesions[p].array).to_canonical().array > 0
        image, mapping = to_model_grid(canon, plan)
        target = masks_to_model_grid([liver | lesion, lesion], mapping)
        ks = np.nonzero(target[0].numpy().any(axis=(1, 2)))[0]
        span = (int(ks[0]), int(ks[-1])) if len(ks) else (0, image.shape[1] - 1)
        out.append(_Volume(case_id, p, image.half(), target, span))
    return out


def _prepare(
    ds: Dataset,
    case_ids: list[str],
    plan: SegmentationPlan,
    progress: Callable[[str], None],
    workers: int = 1,
) -> list[_Volume]:
    """Every phase of the cases on the model grid, in case order.

    Threads suffice for ``workers``: gzip decompression and torch's resampling release the GIL.
    """
    out: list[_Volume] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        prepared = pool.map(lambda c: _prepare_case(ds, c, plan), case_ids)
        for case_id, vols in zip(case_ids, prepared, strict=True):
            out.extend(vols)
            progress(case_id)
    return out


def _sample(
    vols: list[_Volume], cfg: TrainConfig, slab: int, rng: np.random.Generator
) -> tuple[torch.Tensor, ...]:
    images, targets = [], []
    for _ in range(cfg.batch):
        v = vols[int(rng.integers(len(vols)))]
        _, depth, height, width = v.image.shape
        if rng.random() < cfg.liver_slab_fraction:
            k0 = int(rng.integers(v.liver_k[0] - slab + 1, v.liver_k[1] + 1))
        else:
            k0 = int(rng.integers(-slab // 2, max(depth - slab // 2, 1)))
        img, tgt = _crop_z(v.image.float(), k0, slab, -1.0), _crop_z(v.target.float(), k0, slab, 0.0)
        pad_h, pad_w = max(cfg.crop - height, 0), max(cfg.crop - width, 0)
        img = F.pad(img, (0, pad_w, 0, pad_h), value=-1.0)
        tgt = F.pad(tgt, (0, pad_w, 0, pad_h))
        j0 = int(rng.integers(0, img.shape[2] - cfg.crop + 1))
        i0 = int(rng.integers(0, img.shape[3] - cfg.crop + 1))
        images.append(img[:, :, j0 : j0 + cfg.crop, i0 : i0 + cfg.crop])
        targets.append(tgt[:, :, j0 : j0 + cfg.crop, i0 : i0 + cfg.crop])
    return augment_slabs(torch.stack(images), torch.stack(targets), rng)


def _crop_z(array: torch.Tensor, k0: int, slab: int, fill: float) -> torch.Tensor:
    depth = array.shape[1]
    lo, hi = max(k0, 0), min(k0 + slab, depth)
    out = torch.full((array.shape[0], slab, *array.shape[2:]), fill, dtype=array.dtype)
    out[:, lo - k0 : hi - k0] = array[:, lo:hi]
    return out


def augment_slabs(
    inputs: torch.Tensor, target: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-plane affine (same for all slices and channels of a slab), then intensity jitter and
    salt-and-pepper noise on the CT (channel 0; further input channels, such as the refiner's coarse
    logit, are only moved).

    Args:
        inputs: ``(B, C, D, H, W)`` normalised CT (and extra channels).
        target: ``(B, T, D, H, W)`` binary masks.
        rng: random generator.

    Returns:
        Augmented inputs and target, same shapes.
    """
    b, c, d, h, w = inputs.shape
    n_target = target.shape[1]
    theta = torch.zeros(b, 2, 3)
    for n in range(b):
        angle = math.radians(rng.uniform(-15, 15))
        scale = rng.uniform(0.85, 1.15)
        theta[n, :, :2] = (
            torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) / scale
        )
    grid = F.affine_grid(theta, [b, c * d, h, w], align_corners=False)
    inputs = F.grid_sample(
        inputs.reshape(b, c * d, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False
    ).reshape(b, c, d, h, w)
    target = F.grid_sample(target.reshape(b, n_target * d, h, w), grid, mode="nearest", align_corners=False)
    target = target.reshape(b, n_target, d, h, w)
    image = inputs[:, :1]
    scale = torch.from_numpy(rng.uniform(0.9, 1.1, (b, 1, 1, 1, 1))).float()
    shift = torch.from_numpy(rng.uniform(-0.1, 0.1, (b, 1, 1, 1, 1))).float()
    image = image * scale + shift + torch.randn_like(image) * float(rng.uniform(0.0, 0.05))
    salt = torch.from_numpy(rng.random(image.shape) < 0.002)
    pepper = torch.from_numpy(rng.random(image.shape) < 0.002)
    image = image.masked_fill(salt, 1.0).masked_fill(pepper, -1.0)
    return torch.cat([image, inputs[:, 1:]], dim=1), target


def _deep_loss(
    loss_fn: DiceCELoss, logits: torch.Tensor, aux: list[torch.Tensor], target: torch.Tensor
) -> torch.Tensor:
    total = _DEEP_WEIGHTS[0] * loss_fn(logits, target)
    for weight, out in zip(_DEEP_WEIGHTS[1:], aux, strict=False):
        factor = target.shape[-1] // out.shape[-1]
        small = (F.avg_pool3d(target, (1, factor, factor)) >= 0.5).float()
        total = total + weight * loss_fn(out, small)
    return total / sum(_DEEP_WEIGHTS[: 1 + len(aux)])


@torch.no_grad()
def _validate(net: HybridUNet, vols: list[_Volume]) -> dict[str, float]:
    net.eval()
    device = next(net.parameters()).device
    dices: dict[str, list[float]] = {"liver": [], "lesion": []}
    for v in vols:
        image = v.image.float()
        depth = image.shape[1]
        if depth < net.config.slab:
            image = F.pad(image, (0, 0, 0, 0, 0, net.config.slab - depth), value=-1.0)
        logits = sliding_window_inference(
            image[None],
            (net.config.slab, *image.shape[2:]),
            sw_batch_size=16,
            predictor=net,
            overlap=0.25,
            sw_device=device,
            device="cpu",
        )[0, :, :depth]
        pred = logits > 0
        truth = v.target.bool()
        for c, name in enumerate(("liver", "lesion")):
            inter = (pred[c] & truth[c]).sum().item()
            total = pred[c].sum().item() + truth[c].sum().item()
            if name == "liver" or truth[c].any():
                dices[name].append(2 * inter / total if total else 1.0)
    net.train()
    return {f"val_{k}_dice": float(np.mean(v)) if v else float("nan") for k, v in dices.items()}


def train_segmentation(
    data: str | Path,
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
    """Train the liver segmentation network on a dataset in the LiAIDS format.

    Args:
        data: dataset folder.
        out: output folder (model folder plus training artefacts).
        profile: ``small`` or ``paper`` (network size, plan and optimiser settings).
        epochs, steps_per_epoch: override the profile's schedule.
        seed: seeds the split, sampling, augmentation and initialisation.
        resume: continue from ``out/last.pt``.
        max_cases: use only the first N cases (quick runs).
        splits_file: JSON file with ``train`` and ``val`` case lists (nnU-Net's custom splits); None: the
            seeded split.
        device: ``cpu`` or ``cuda``.
        workers: threads that read and resample the cases before training.
        progress: called with a message and the fraction done.

    Returns:
        The output folder, holding ``model.pt`` and ``config.json`` of the best epoch.
    """
    if profile not in PROFILES:
        raise LiaidsError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    cfg = TRAIN_PROFILES[profile]
    cfg = replace(cfg, epochs=epochs or cfg.epochs, steps_per_epoch=steps_per_epoch or cfg.steps_per_epoch)
    net_cfg, plan = PROFILES[profile], PLANS[profile]
    out = prepare_output(out, resume)
    report = progress or (lambda _msg, _frac: None)
    if plan.divisor % HybridUNet(net_cfg).divisor:
        raise LiaidsError(f"plan divisor {plan.divisor} is not a multiple of the network's divisor")
    ds = Dataset(data)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    case_ids, splits = split_and_record(
        out, ds, plan.to_dict(), cfg.val_fraction, seed, splits_file, max_cases
    )

    done = [0]

    def prep_progress(case_id: str) -> None:
        done[0] += 1
        report(f"preparing {case_id}", done[0] / len(case_ids))

    train_vols = _prepare(ds, splits["train"], plan, prep_progress, workers)
    val_vols = _prepare(ds, splits["val"], plan, prep_progress, workers)

    net = HybridUNet(net_cfg).to(device)
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
        "kind": MODEL_KIND,
        "profile": profile,
        "network": net_cfg.to_dict(),
        "plan": plan.to_dict(),
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
            image, target = _sample(train_vols, cfg, net_cfg.slab, rng)
            logits, aux = net(image.to(device))
            return _deep_loss(loss_fn, logits, aux, target.to(device))

        losses = run_epoch_steps(opt, sched, step_loss, epoch, cfg.epochs, cfg.steps_per_epoch, report)
        row = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            "lr": sched.get_last_lr()[0],
            **_validate(net, val_vols),
            "seconds": round(time.time() - t0, 1),
        }
        best = close_epoch(out, net, opt, sched, rng, log, row, config, "val_liver_dice", best)
    return out
