"""Training of the candidate filter (:mod:`liaids.networks.candidate_filter`) on a trained detector's output.

Steps: run the detector (without a filter) on every phase of every case -> label each candidate by the
paper's hit rule against the true lesions (IoU > 0.3 or IoM > 0.5) -> cut its patch -> train the filter with
balanced batches -> keep the epoch whose validation cases give the best mean sensitivity over the FROC
points (1/8 to 8 false positives per scan), the filter's probability ranking the candidates.

The detector's own training cases are left out: there its candidates are better than on new scans, and a
filter learnt on them would trust the detector too much. Candidates are cached per case
(``cache/CASE.npz``), so an interrupted collection goes on where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from liaids.classification.patches import boxes_from_instances
from liaids.codes import PHASES
from liaids.dataset import Dataset
from liaids.detection.candidates import CandidatePatchPlan, candidate_patch, candidate_scalars
from liaids.detection.predictor import FILTER_FOLDER, FILTER_KIND, LesionDetector
from liaids.errors import LiaidsError
from liaids.evaluate.detection import froc, is_hit, match_scan
from liaids.model_store import save_model
from liaids.networks.candidate_filter import PROFILES, CandidateFilter
from liaids.train.common import (
    prepare_output,
    restore_checkpoint,
    save_checkpoint,
    split_and_record,
    write_log,
)


@dataclass(frozen=True)
class FilterTraining:
    """Optimiser and schedule of the filter.

    Args:
        epochs: passes of ``steps_per_epoch`` balanced batches.
        steps_per_epoch: batches per epoch.
        batch: candidates per batch, half of them true lesions.
        lr: AdamW learning rate (cosine decay to 0).
        weight_decay: AdamW weight decay.
        val_fraction: share of validation cases.
    """

    epochs: int = 12
    steps_per_epoch: int = 150
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15


TRAIN_PROFILES: dict[str, FilterTraining] = {
    "small": FilterTraining(),
    "paper": FilterTraining(epochs=30, steps_per_epoch=300, batch=128),
}


def _truth_boxes_kji(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-open ``[k0, j0, i0, k1, j1, i1]`` boxes of a canonical instance map, and the instance ids."""
    found = boxes_from_instances(labels)
    boxes = [[k0, j0, i0, k1, j1, i1] for i0, j0, k0, i1, j1, k1 in found.values()]
    return np.asarray(boxes, int).reshape(-1, 6), np.asarray(list(found), int)


def collect_case(
    ds: Dataset, case_id: str, detector: LesionDetector, plan: CandidatePatchPlan
) -> dict[str, np.ndarray]:
    """Candidates of one case, every phase: patches (uint8), scalars, boxes, labels and the true lesions.

    Args:
        ds: the dataset.
        case_id: the case.
        detector: a detector loaded with ``candidate_filter=False``.
        plan: the patch rule (candidates under ``plan.min_score`` are not kept).

    Returns:
        arrays keyed ``{field}_{phase}``: ``patches``, ``scalars``, ``boxes``, ``labels`` (candidate hits a
        true lesion), ``truth`` (true lesion boxes) and ``diameters`` (their diameters in mm).
    """
    case = ds.load_case(case_id)
    diameters = {les.lesion_id: les.diameter_mm for les in case.info.lesions}
    out: dict[str, np.ndarray] = {}
    for phase in PHASES:
        volume = case.study[phase]
        canonical = volume.to_canonical()
        liver = volume.with_array(case.liver[phase].array > 0).to_canonical().array
        lesions = volume.with_array(case.lesions[phase].array).to_canonical().array
        truth, ids = _truth_boxes_kji(lesions)
        found = [c for c in detector.candidates(canonical, liver) if c.score >= plan.min_score]
        boxes = np.asarray([c.box_kji for c in found], int).reshape(-1, 6)
        labels = is_hit(boxes, truth).any(axis=1) if len(truth) and len(boxes) else np.zeros(len(boxes), bool)
        patches = [
            candidate_patch(canonical.array, liver, canonical.spacing_kji, c.box_kji, plan) for c in found
        ]
        out[f"patches_{phase}"] = (
            np.round(np.stack(patches) * 255).astype(np.uint8)
            if patches
            else np.zeros((0, 2, *plan.shape), np.uint8)
        )
        out[f"scalars_{phase}"] = np.asarray(
            [candidate_scalars(c.score, c.box_kji, canonical.spacing_kji) for c in found], np.float32
        ).reshape(-1, 2)
        out[f"boxes_{phase}"] = boxes
        out[f"labels_{phase}"] = labels.astype(bool)
        out[f"truth_{phase}"] = truth
        out[f"diameters_{phase}"] = np.asarray([diameters.get(int(i), 0.0) for i in ids], float)
    return out


def collect_candidates(
    data: str | Path,
    detector_folder: str | Path,
    case_ids: list[str],
    cache_dir: str | Path,
    plan: CandidatePatchPlan,
    device: str = "cpu",
    progress: Callable[[str, float], None] | None = None,
) -> list[Path]:
    """Cache the candidates of each case as ``cache_dir/CASE.npz`` (cases already cached are kept).

    Returns:
        the cache files, in ``case_ids`` order.
    """
    report = progress or (lambda _msg, _frac: None)
    ds = Dataset(data)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    detector: LesionDetector | None = None
    files = []
    for n, case_id in enumerate(case_ids):
        path = cache / f"{case_id}.npz"
        if not path.is_file():
            if detector is None:
                detector = LesionDetector.load(detector_folder, device, candidate_filter=False)
            arrays = collect_case(ds, case_id, detector, plan)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, **arrays)
            tmp.replace(path)
        files.append(path)
        report(f"candidates {n + 1}/{len(case_ids)}", (n + 1) / len(case_ids))
    return files


@dataclass
class CandidateSet:
    """Cached candidates of several cases, with what validation needs to rebuild each scan."""

    patches: np.ndarray  # uint8 (N, 2, D, H, W)
    scalars: np.ndarray  # (N, 2)
    labels: np.ndarray  # bool (N,)
    scan: np.ndarray  # (N,) index into scans
    boxes: np.ndarray  # (N, 6)
    scans: list[tuple[str, np.ndarray, np.ndarray]]  # (scan id, truth boxes, diameters)

    @classmethod
    def load(cls, files: list[Path]) -> CandidateSet:
        parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("patches", "scalars", "labels", "boxes", "scan")
        }
        scans: list[tuple[str, np.ndarray, np.ndarray]] = []
        for path in files:
            with np.load(path) as z:
                for phase in PHASES:
                    n = len(z[f"labels_{phase}"])
                    for key in ("patches", "scalars", "labels", "boxes"):
                        parts[key].append(z[f"{key}_{phase}"])
                    parts["scan"].append(np.full(n, len(scans), int))
                    scans.append((f"{path.stem}/{phase}", z[f"truth_{phase}"], z[f"diameters_{phase}"]))
        return cls(
            *(np.concatenate(parts[k]) for k in ("patches", "scalars", "labels", "scan", "boxes")), scans
        )

    def __len__(self) -> int:
        return len(self.labels)


def ranking_quality(candidates: CandidateSet, scores: np.ndarray) -> dict[str, float]:
    """FROC of the candidates ranked by ``scores``: mean sensitivity (CPM) and recall at 2 FP per scan."""
    matches = []
    for n, (scan_id, truth, diameters) in enumerate(candidates.scans):
        sel = candidates.scan == n
        matches.append(match_scan(scan_id, candidates.boxes[sel], scores[sel], truth, diameters))
    curve = froc(matches)["all"]
    at_2fp = dict(zip(curve.fp_rates, curve.sensitivities, strict=True))[2.0]
    return {"cpm": float(curve.cpm), "recall_at_2fp": float(at_2fp)}


@torch.no_grad()
def predict(net: CandidateFilter, candidates: CandidateSet, batch: int = 256) -> np.ndarray:
    """Filter probabilities for every candidate."""
    net.eval()
    device = next(net.parameters()).device
    out = []
    for start in range(0, len(candidates), batch):
        patches = torch.from_numpy(candidates.patches[start : start + batch]).float().div_(255.0)
        scalars = torch.from_numpy(candidates.scalars[start : start + batch])
        out.append(torch.sigmoid(net(patches.to(device), scalars.to(device))).cpu().numpy())
    net.train()
    return np.concatenate(out) if out else np.zeros(0)


def augment(patches: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Flips along each axis, 90-degree in-plane turns, and CT intensity jitter (the mask stays)."""
    if rng.random() < 0.5:
        patches = patches.flip(2)
    if rng.random() < 0.5:
        patches = patches.flip(3)
    if rng.random() < 0.5:
        patches = patches.flip(4)
    patches = torch.rot90(patches, int(rng.integers(4)), dims=(3, 4))
    scale = torch.from_numpy(rng.uniform(0.9, 1.1, (len(patches), 1, 1, 1)).astype(np.float32))
    shift = torch.from_numpy(rng.uniform(-0.05, 0.05, (len(patches), 1, 1, 1)).astype(np.float32))
    ct = (patches[:, 0] * scale + shift).clamp(0.0, 1.0)
    return torch.stack([ct, patches[:, 1]], dim=1)


def train_candidate_filter(
    data: str | Path,
    detector: str | Path,
    out: str | Path,
    profile: str = "small",
    *,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    batch: int | None = None,
    min_score: float | None = None,
    seed: int = 0,
    resume: bool = False,
    max_cases: int | None = None,
    splits_file: str | Path | None = None,
    cache: str | Path | None = None,
    device: str = "cpu",
    progress: Callable[[str, float], None] | None = None,
) -> Path:
    """Train a candidate filter for a detector.

    Args:
        data: dataset folder (cases the detector was trained on are left out).
        detector: the detector's model folder (its ``splits.json`` names its training cases).
        out: output folder; copy it into the detector folder as ``candidate_filter/`` to use it.
        profile: ``small`` or ``paper``.
        epochs, steps_per_epoch, batch: override the profile's settings.
        min_score: override the lowest proposal score a candidate needs (the patch plan's ``min_score``).
        seed: seeds the split, sampling, augmentation and initialisation.
        resume: continue from ``out/last.pt``.
        max_cases: use only the first N usable cases.
        splits_file: JSON ``{"train": [...], "val": [...]}``; None: a seeded split.
        cache: candidate cache folder (default ``out/cache``).
        device: ``cpu`` or ``cuda``.
        progress: called with a message and the fraction done.

    Returns:
        The output folder, holding ``model.pt`` and ``config.json`` of the best epoch.
    """
    if profile not in PROFILES:
        raise LiaidsError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    cfg = TRAIN_PROFILES[profile]
    cfg = replace(
        cfg,
        epochs=epochs or cfg.epochs,
        steps_per_epoch=steps_per_epoch or cfg.steps_per_epoch,
        batch=batch or cfg.batch,
    )
    plan = CandidatePatchPlan() if min_score is None else CandidatePatchPlan(min_score=min_score)
    out = prepare_output(out, resume, reusable=("cache",))
    report = progress or (lambda _msg, _frac: None)
    ds = Dataset(data)
    detector_dir = Path(detector)
    seen: set[str] = set()
    det_splits = detector_dir / "splits.json"
    if det_splits.is_file():
        seen = set(json.loads(det_splits.read_text()).get("train", []))
    case_ids, splits = split_and_record(
        out, ds, plan.to_dict(), cfg.val_fraction, seed, splits_file, max_cases, exclude=seen
    )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    cache_dir = Path(cache) if cache else out / "cache"
    files = collect_candidates(data, detector_dir, case_ids, cache_dir, plan, device, report)
    by_case = dict(zip(case_ids, files, strict=True))
    in_train = set(splits["train"])
    train_set = CandidateSet.load([by_case[c] for c in case_ids if c in in_train])
    val_set = CandidateSet.load([by_case[c] for c in case_ids if c not in in_train])
    positives, negatives = np.nonzero(train_set.labels)[0], np.nonzero(~train_set.labels)[0]
    if len(positives) == 0 or len(negatives) == 0 or not val_set.labels.any():
        raise LiaidsError("too few true or false candidates to train a filter; use more cases", ds.root)

    net = CandidateFilter(PROFILES[profile]).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * cfg.steps_per_epoch)
    log: list[dict[str, Any]] = []
    start_epoch, best = 0, -math.inf
    ckpt_path = out / "last.pt"
    if resume and ckpt_path.is_file():
        ckpt = restore_checkpoint(ckpt_path, net, opt, sched, rng)
        start_epoch, best, log = ckpt["epoch"], ckpt["best"], ckpt["log"]
    proposals = ranking_quality(val_set, val_set.scalars[:, 0])
    config = {
        "kind": FILTER_KIND,
        "profile": profile,
        "network": PROFILES[profile].to_dict(),
        "patch": plan.to_dict(),
        "detector": {"folder": str(detector_dir), "excluded_training_cases": len(seen)},
        "training": {
            **asdict(cfg),
            "seed": seed,
            "data": str(Path(data).resolve()),
            "dataset": ds.meta.get("name"),
            "train_cases": len(splits["train"]),
            "val_cases": len(splits["val"]),
            "train_candidates": len(train_set),
            "train_true": len(positives),
            "val_candidates": len(val_set),
        },
        "val_proposal_scores": proposals,
        "use": f"copy this folder into the detector's folder as {FILTER_FOLDER}/",
    }
    half = cfg.batch // 2
    total_steps = max(1, (cfg.epochs - start_epoch) * cfg.steps_per_epoch)
    done = 0
    net.train()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        losses = []
        for _ in range(cfg.steps_per_epoch):
            index = np.concatenate([rng.choice(positives, half), rng.choice(negatives, cfg.batch - half)])
            patches = augment(torch.from_numpy(train_set.patches[index]).float().div_(255.0), rng)
            scalars = torch.from_numpy(train_set.scalars[index])
            target = torch.from_numpy(train_set.labels[index].astype(np.float32))
            logits = net(patches.to(device), scalars.to(device))
            loss = F.binary_cross_entropy_with_logits(logits, target.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            done += 1
            report(
                f"filter epoch {epoch + 1}/{cfg.epochs} loss {np.mean(losses[-20:]):.3f}", done / total_steps
            )
        quality = ranking_quality(val_set, predict(net, val_set))
        row = {
            "epoch": epoch + 1,
            "train_loss": round(float(np.mean(losses)), 5),
            "lr": sched.get_last_lr()[0],
            "val_cpm": round(quality["cpm"], 4),
            "val_recall_at_2fp": round(quality["recall_at_2fp"], 4),
            "seconds": round(time.time() - t0, 1),
        }
        log.append(row)
        if quality["cpm"] > best:
            best = quality["cpm"]
            save_model(out, net.state_dict(), {**config, "best_epoch": epoch + 1, "val": row})
        save_checkpoint(ckpt_path, net, opt, sched, epoch + 1, log, rng, best=best)
        write_log(out, log)
    return out
