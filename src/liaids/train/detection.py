"""Training of the lesion detector (``liaids train detect``).

Artefacts in the output folder, so a run repeats without hidden state:

1. ``splits.json`` (training / validation cases, seeded or from a splits file) and ``plan.json``
   (detection grid);
2. a cache of every case and phase on the detection grid (``cache/CASE_PHASE.npz``: uint8 image and
   int16 lesion instance labels, cropped to the liver), shared by runs that pass the same ``cache``;
3. training on random slabs, half of them centred on a lesion, with the augmentation of the paper
   (multi-scale, flips, rotations) plus intensity jitter; ``last.pt`` after every epoch (``resume``),
   ``log.csv`` / ``log.json``; at the end the validation recall at 2 false positives per scan and the model
   folder (``model.pt``, ``config.json``) that :class:`liaids.detection.predictor.LesionDetector` loads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from liaids.codes import PHASES
from liaids.dataset import Dataset
from liaids.detection.merge import MergeSettings, merge_slices
from liaids.detection.predictor import MODEL_KIND, detect_slices
from liaids.detection.preprocessing import PLANS, DetectionPlan, slab_indices, slice_boxes, to_detection_grid
from liaids.errors import LiaidsError
from liaids.evaluate.detection import SMALL, box_diameter_mm, is_hit, size_stratum
from liaids.model_store import save_model
from liaids.networks.lesion_detector import BACKBONES, build_detector
from liaids.networks.lesion_detector import profile as detector_profile
from liaids.train.common import (
    prepare_output,
    restore_checkpoint,
    save_checkpoint,
    split_and_record,
    write_json,
    write_log,
)

LESION_SAMPLING = ("slice", "lesion", "small")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule.

    Args:
        optimizer: ``sgd`` (the paper: momentum 0.9) or ``adamw`` (the authors' repository; CPU default).
        lr: peak learning rate (linear warm-up, then steps or cosine decay).
        weight_decay: weight decay.
        batch: slabs per step.
        epochs: number of epochs.
        steps_per_epoch: optimiser steps per epoch.
        lr_steps: epochs after which the learning rate drops x0.1 (empty: cosine decay).
        crop: in-plane training crop, pixels of the detection grid (multiple of 32).
        scale_range: multi-scale training: random zoom factors.
        lesion_fraction: share of slabs centred on a lesion.
        lesion_sampling: how a lesion-centred slab is drawn. ``slice``: a slice holding a lesion, uniformly
            over all slices of a phase, so a lesion weighs by its slice count (a 40 mm lesion ~8x a 5 mm
            one); ``lesion``: a lesion instance uniformly over the training phases, then one of its slices;
            ``small``: like ``lesion`` but a lesion weighs by the inverse of its longer in-plane side (at
            least 4 pixels), so a 5 mm lesion is drawn 8x as often as a 40 mm one.
        val_fraction: share of cases kept for validation.
        val_every: also validate after every N epochs (a learning curve in the log); 0: only at the end.
    """

    optimizer: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 1e-4
    batch: int = 6
    epochs: int = 12
    steps_per_epoch: int = 2000
    lr_steps: tuple[int, ...] = (8, 11)
    crop: int = 512
    scale_range: tuple[float, float] = (0.75, 1.25)
    lesion_fraction: float = 0.5
    lesion_sampling: str = "slice"
    val_fraction: float = 0.1
    val_every: int = 4


TRAIN_PROFILES: dict[str, TrainConfig] = {
    "paper": TrainConfig(),
    "small": TrainConfig(
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.05,
        batch=4,
        # The validation recall at 2 FP per scan still rose at 40 epochs (3D CSWin: 0.37, 0.43, 0.47, 0.49
        # after 10, 20, 30, 40); 40 keeps a run within an hour on 2 cores.
        epochs=40,
        steps_per_epoch=150,
        lr_steps=(),
        crop=160,
        scale_range=(0.8, 1.25),
        # Most liver slices hold no lesion; without this bias a short CPU run learns mostly background.
        lesion_fraction=0.7,
        val_every=10,
    ),
}


@dataclass
class _Phase:
    case_id: str
    phase: str
    image: np.ndarray  # (K, J, I) uint8 on the detection grid
    labels: np.ndarray  # (K, J, I) int16 lesion instance ids
    lesion_slices: np.ndarray  # slice indices holding a lesion box
    lesion_extents: list[tuple[int, np.ndarray]]  # (instance id, its slice indices) per lesion
    lesion_sides: list[float]  # longer in-plane side of each lesion's box, grid pixels, as lesion_extents


def _cache_phase(ds: Dataset, case_id: str, plan: DetectionPlan, cache: Path) -> list[Path]:
    paths = [cache / f"{case_id}_{p}.npz" for p in PHASES]
    if all(p.is_file() for p in paths):
        return paths
    case = ds.load_case(case_id)
    for p, path in zip(PHASES, paths, strict=True):
        canonical = case.study[p].to_canonical()
        liver = case.study[p].with_array(case.liver[p].array > 0).to_canonical().array
        labels = case.study[p].with_array(case.lesions[p].array).to_canonical().array
        image, _crop, grid_labels = to_detection_grid(canonical, plan, liver | (labels > 0), labels)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, image=image, labels=grid_labels)
        tmp.replace(path)
    return paths


def _load_cached(path: Path) -> _Phase:
    data = np.load(path)
    labels = data["labels"]
    slices = np.nonzero(labels.reshape(labels.shape[0], -1).max(axis=1) > 0)[0]
    extents, sides = [], []
    boxes = ndimage.find_objects(labels)
    for lesion_id in np.unique(labels[slices]):
        if lesion_id:
            on = (labels[slices] == lesion_id).reshape(len(slices), -1).any(axis=1)
            extents.append((int(lesion_id), slices[on]))
            box = boxes[int(lesion_id) - 1]
            sides.append(float(max(box[1].stop - box[1].start, box[2].stop - box[2].start)))
    case_id, phase = path.stem.rsplit("_", 1)
    return _Phase(case_id, phase, data["image"], labels, slices, extents, sides)


def _pick_lesion(phases: list[_Phase], rng: np.random.Generator) -> tuple[_Phase, int, int] | None:
    """Phase, slice and instance id of a lesion drawn uniformly over all lesions (None: no lesion)."""
    counts = np.asarray([len(ph.lesion_extents) for ph in phases], float)
    if counts.sum() == 0:
        return None
    ph = phases[int(rng.choice(len(phases), p=counts / counts.sum()))]
    lesion_id, ks = ph.lesion_extents[int(rng.integers(len(ph.lesion_extents)))]
    return ph, int(ks[int(rng.integers(len(ks)))]), lesion_id


def _pick_small_lesion(phases: list[_Phase], rng: np.random.Generator) -> tuple[_Phase, int, int] | None:
    """Phase, slice and instance id of a lesion drawn with weight 1 / its in-plane side (None: no lesion)."""
    pairs = [(ph, i) for ph in phases for i in range(len(ph.lesion_extents))]
    if not pairs:
        return None
    weights = np.asarray([1.0 / max(ph.lesion_sides[i], 4.0) for ph, i in pairs])
    ph, i = pairs[int(rng.choice(len(pairs), p=weights / weights.sum()))]
    lesion_id, ks = ph.lesion_extents[i]
    return ph, int(ks[int(rng.integers(len(ks)))]), lesion_id


def _slab_position(
    phases: list[_Phase], cfg: TrainConfig, rng: np.random.Generator
) -> tuple[_Phase, int, tuple[float, float]]:
    """Phase, centre slice and in-plane centre (row, column) of one training slab."""
    picked: tuple[_Phase, int, int] | None = None
    if cfg.lesion_sampling in ("lesion", "small"):
        pick = _pick_lesion if cfg.lesion_sampling == "lesion" else _pick_small_lesion
        picked = pick(phases, rng) if rng.random() < cfg.lesion_fraction else None
        ph = picked[0] if picked is not None else phases[int(rng.integers(len(phases)))]
    else:
        # The draw order of the shipped detectors' training, kept so that a seed repeats them.
        ph = phases[int(rng.integers(len(phases)))]
        if len(ph.lesion_slices) > 0 and rng.random() < cfg.lesion_fraction:
            k = int(ph.lesion_slices[int(rng.integers(len(ph.lesion_slices)))])
            ids = [i for i in np.unique(ph.labels[k]) if i]
            picked = ph, k, int(ids[int(rng.integers(len(ids)))])
    if picked is None:
        k = int(rng.integers(ph.image.shape[0]))
        return ph, k, (rng.uniform(0, ph.image.shape[1]), rng.uniform(0, ph.image.shape[2]))
    ph, k, lesion_id = picked
    rows, cols = np.nonzero(ph.labels[k] == lesion_id)
    return ph, k, (float(rows.mean()), float(cols.mean()))


def _sample(
    phases: list[_Phase], cfg: TrainConfig, context: int, rng: np.random.Generator
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A batch of augmented slabs with their lesion boxes (recomputed after the geometric transform)."""
    images, targets = [], []
    crop = cfg.crop
    while len(images) < cfg.batch:
        ph, k, centre = _slab_position(phases, cfg, rng)
        depth, height, width = ph.image.shape
        slab = torch.from_numpy(ph.image[slab_indices(k, depth, context)]).float().div_(255.0)
        label = torch.from_numpy(ph.labels[k].astype(np.float32))
        scale = float(rng.uniform(*cfg.scale_range))
        angle = math.radians(rng.uniform(-15, 15)) if rng.random() < 0.5 else 0.0
        flip_x = -1.0 if rng.random() < 0.5 else 1.0
        flip_y = -1.0 if rng.random() < 0.5 else 1.0
        # The output crop sees a window of crop/scale source pixels around a jittered centre.
        jitter = crop / scale * 0.35
        cy = centre[0] + rng.uniform(-jitter, jitter)
        cx = centre[1] + rng.uniform(-jitter, jitter)
        half = crop / scale / 2.0
        cos, sin = math.cos(angle), math.sin(angle)
        # affine_grid maps output [-1, 1] to input [-1, 1] (align_corners=False).
        theta = torch.tensor(
            [
                [cos * half / width * 2 * flip_x, -sin * half / width * 2 * flip_y, (2 * cx + 1) / width - 1],
                [
                    sin * half / height * 2 * flip_x,
                    cos * half / height * 2 * flip_y,
                    (2 * cy + 1) / height - 1,
                ],
            ],
            dtype=torch.float32,
        )
        grid = F.affine_grid(theta[None], [1, 1, crop, crop], align_corners=False)
        out = F.grid_sample(slab[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        lab = F.grid_sample(
            label[None, None], grid, mode="nearest", padding_mode="zeros", align_corners=False
        )
        boxes = slice_boxes(lab[0, 0].numpy().astype(np.int16), min_pixels=3)
        gain = float(rng.uniform(0.9, 1.1))
        out = (out * gain + float(rng.uniform(-0.05, 0.05))).clamp_(0, 1)
        out = out + torch.randn_like(out) * float(rng.uniform(0.0, 0.02))
        box_array = np.stack(list(boxes.values())) if boxes else np.zeros((0, 4), np.float32)
        images.append(out)
        targets.append(
            {"boxes": torch.from_numpy(box_array), "labels": torch.ones(len(box_array), dtype=torch.int64)}
        )
    return images, targets


def _lesion_boxes_3d(labels: np.ndarray) -> np.ndarray:
    """Half-open ``[k0, j0, i0, k1, j1, i1]`` box per lesion instance of a grid label map."""
    from scipy import ndimage

    boxes = []
    for sl in ndimage.find_objects(labels.astype(np.int32)):
        if sl is not None:
            boxes.append([s.start for s in sl] + [s.stop for s in sl])
    return np.asarray(boxes, int).reshape(-1, 6)


@torch.no_grad()
def validate(
    network: Any, phases: list[_Phase], context: int, merge: MergeSettings, plan: DetectionPlan
) -> dict[str, float]:
    """Lesion recall of the merged 3D detections on the grid, at the threshold giving <= 2 FP per scan.

    Also for lesions under 1 cm, sized here by the longer in-plane side of their box on the grid of
    ``plan`` (:func:`liaids.evaluate.detection.box_diameter_mm`), a learning-curve figure rather than the
    benchmark's diameter.
    """
    network.eval()
    records = []  # (score, is_tp) per detection; lesions found at a score threshold
    lesion_best: list[float] = []
    lesion_small: list[bool] = []
    grid_mm = (plan.pixel_mm, plan.pixel_mm, plan.slice_mm)  # (i, j, k)
    for ph in phases:
        ks, boxes, scores = detect_slices(network, ph.image, context)
        found = merge_slices(ks, boxes, scores, merge)
        truth = _lesion_boxes_3d(ph.labels)
        pred = np.stack([f.box_kji for f in found]) if found else np.zeros((0, 6), int)
        hit = is_hit(pred, truth)
        for n, f in enumerate(found):
            records.append((f.score, bool(hit[n].any())))
        diameters = box_diameter_mm(truth[:, [2, 1, 0, 5, 4, 3]], grid_mm)  # kji -> ijk boxes
        lesion_small.extend(size_stratum(float(d)) == SMALL for d in diameters)
        for t in range(len(truth)):
            lesion_best.append(max((found[n].score for n in np.nonzero(hit[:, t])[0]), default=-1.0))
    network.train()
    n_scans = max(len(phases), 1)
    fp_scores = np.sort([s for s, tp in records if not tp])[::-1]
    # Lowest threshold keeping mean FP per scan at most 2.
    allowed = 2 * n_scans
    threshold = float(fp_scores[allowed]) + 1e-6 if len(fp_scores) > allowed else 0.0
    best = np.asarray(lesion_best)
    small = np.asarray(lesion_small, bool)
    recall = float((best >= threshold).mean()) if len(best) else float("nan")
    recall_small = float((best[small] >= threshold).mean()) if small.any() else float("nan")
    return {
        "val_recall_at_2fp": recall,
        "val_recall_at_2fp_small": recall_small,
        "val_lesions_small": int(small.sum()),
        "val_threshold_at_2fp": threshold,
        "val_lesions": len(best),
        "val_fp_per_scan_all": len(fp_scores) / n_scans,
    }


def train_detection(
    data: str | Path,
    out: str | Path,
    backbone: str = "cswin3d",
    profile: str = "small",
    *,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    val_every: int | None = None,
    lesion_sampling: str | None = None,
    anchor_scales: Sequence[float] | None = None,
    seed: int = 0,
    resume: bool = False,
    max_cases: int | None = None,
    splits_file: str | Path | None = None,
    cache: str | Path | None = None,
    workers: int = 1,
    device: str = "cpu",
    progress: Callable[[str, float], None] | None = None,
) -> Path:
    """Train the lesion detector on a dataset in the LiAIDS format.

    Args:
        data: dataset folder.
        out: output folder (model folder plus training artefacts).
        backbone: ``cswin3d`` (the paper's) or ``cnn2d`` (the ablation).
        profile: ``small`` or ``paper`` (network size, grid plan and optimiser settings).
        epochs, steps_per_epoch: override the profile's schedule.
        val_every: override the profile's validation interval in epochs (0: only at the end).
        lesion_sampling: override the profile's draw of lesion-centred slabs (``slice`` or ``lesion``, see
            :class:`TrainConfig`).
        anchor_scales: override the anchor sizes, as multiples of each pyramid level's stride (the
            paper's: 1 and 3); pass the same on ``resume``.
        seed: seeds the split, sampling, augmentation and initialisation.
        resume: continue from ``out/last.pt``.
        max_cases: use only the first N cases (quick runs).
        splits_file: JSON file with ``train`` and ``val`` case lists (nnU-Net's custom splits); None: the
            seeded split.
        cache: folder for the per-case grid cache (default ``out/cache``); reuse it across runs.
        workers: processes that build the cache.
        device: ``cpu`` or ``cuda``.
        progress: called with a message and the fraction done.

    Returns:
        The output folder, holding ``model.pt`` and ``config.json``.
    """
    if backbone not in BACKBONES:
        raise LiaidsError(f"unknown backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")
    if profile not in TRAIN_PROFILES:
        raise LiaidsError(f"unknown profile {profile!r}; expected one of {sorted(TRAIN_PROFILES)}")
    cfg = TRAIN_PROFILES[profile]
    cfg = replace(
        cfg,
        epochs=epochs or cfg.epochs,
        steps_per_epoch=steps_per_epoch or cfg.steps_per_epoch,
        val_every=cfg.val_every if val_every is None else val_every,
        lesion_sampling=lesion_sampling or cfg.lesion_sampling,
    )
    if cfg.lesion_sampling not in LESION_SAMPLING:
        raise LiaidsError(
            f"unknown lesion sampling {cfg.lesion_sampling!r}; expected one of {', '.join(LESION_SAMPLING)}"
        )
    det_cfg, plan = detector_profile(backbone, profile), PLANS[profile]
    if anchor_scales is not None:
        scales = tuple(float(v) for v in anchor_scales)
        if not scales or any(not (math.isfinite(v) and v > 0) for v in scales):
            raise LiaidsError(f"anchor scales must be positive numbers, got {list(anchor_scales)}")
        det_cfg = replace(det_cfg, anchor_scales=scales)
    merge = MergeSettings()
    out = prepare_output(out, resume, reusable=("cache",))
    cache_dir = Path(cache) if cache is not None else out / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_json(cache_dir / "plan.json", plan.to_dict())
    report = progress or (lambda _msg, _frac: None)
    ds = Dataset(data)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    case_ids, splits = split_and_record(
        out, ds, plan.to_dict(), cfg.val_fraction, seed, splits_file, max_cases
    )

    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            jobs = [pool.submit(_cache_phase, ds, c, plan, cache_dir) for c in case_ids]
            for n, job in enumerate(jobs):
                job.result()
                report("preparing the grid cache", (n + 1) / len(case_ids))
    else:
        for n, case_id in enumerate(case_ids):
            _cache_phase(ds, case_id, plan, cache_dir)
            report(f"preparing {case_id}", (n + 1) / len(case_ids))
    train_phases = [_load_cached(cache_dir / f"{c}_{p}.npz") for c in splits["train"] for p in PHASES]
    val_phases = [_load_cached(cache_dir / f"{c}_{p}.npz") for c in splits["val"] for p in PHASES]

    network = build_detector(det_cfg).to(device)
    params = [p for p in network.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    warmup = min(200, total // 10)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.lr_steps:
            epoch = step // cfg.steps_per_epoch
            return 0.1 ** sum(epoch >= e for e in cfg.lr_steps)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    log: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt_path = out / "last.pt"
    if resume and ckpt_path.is_file():
        ckpt = restore_checkpoint(ckpt_path, network, opt, sched, rng)
        start_epoch, log = ckpt["epoch"], ckpt["log"]

    config = {
        "kind": MODEL_KIND,
        "profile": profile,
        "network": det_cfg.to_dict(),
        "plan": plan.to_dict(),
        "merge": asdict(merge),
        "training": {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
            "seed": seed,
            "data": str(Path(data).resolve()),
            "dataset": ds.meta.get("name"),
            "train_cases": len(splits["train"]),
            "val_cases": len(splits["val"]),
        },
    }
    network.train()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        parts: dict[str, list[float]] = {}
        for step in range(cfg.steps_per_epoch):
            images, targets = _sample(train_phases, cfg, det_cfg.context, rng)
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            losses = network(images, targets)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            sched.step()
            for key, value in losses.items():
                parts.setdefault(key, []).append(value.item())
            recent = sum(np.mean(v[-20:]) for v in parts.values())
            report(
                f"epoch {epoch + 1}/{cfg.epochs} loss {recent:.3f}",
                (epoch * cfg.steps_per_epoch + step + 1) / total,
            )
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": float(sum(np.mean(v) for v in parts.values())),
            **{k: float(np.mean(v)) for k, v in parts.items()},
            "lr": sched.get_last_lr()[0],
            "seconds": round(time.time() - t0, 1),
        }
        if cfg.val_every and (epoch + 1) % cfg.val_every == 0 and epoch + 1 < cfg.epochs:
            report("validating", (epoch + 1) * cfg.steps_per_epoch / total)
            row.update(validate(network, val_phases, det_cfg.context, merge, plan))
        log.append(row)
        save_checkpoint(ckpt_path, network, opt, sched, epoch + 1, log, rng)
        write_log(out, log)
    report("validating", 1.0)
    val = validate(network, val_phases, det_cfg.context, merge, plan)
    if log:
        log[-1].update(val)
        write_log(out, log)
    save_model(out, network.state_dict(), {**config, "val": val})
    return out
