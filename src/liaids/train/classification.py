"""Training of the three-phase lesion classifier (``liaids train classify``).

Steps, each leaving an artefact in the output folder so that a run can be repeated without hidden state:

1. ``splits.json``: training and validation cases (seeded by patient, or from a splits file);
2. ``plan.json``: the patch plan (crop rule, patch shape, HU window);
3. ``cache/patches_<hash>.npz``: three-phase patches of every lesion, cut once from the ground-truth
   boxes of the instance masks: copy 0 with the exact box, copies 1..n with boxes jittered as a detector
   would place them (drawn from a detector's measured box errors given as ``box_errors``, kept in the
   output folder as ``box_errors.json``, else Gaussian; a lesion missing from one phase's mask gets its
   box moved there on the liver alignment). Cutting patches from NIfTI is the slow part (about 1.5 s
   per case), so several variants can share one cache folder;
4. training with class-balanced sampling and online augmentation (in-plane flips, small rotations and
   scaling, per-phase intensity jitter, noise); ``last.pt`` after every epoch (resume with
   ``resume=True``), ``log.csv`` / ``log.json`` (loss, validation accuracy and AUCs per epoch), and the
   model folder of the epoch with the lowest validation loss (``model.pt``, ``config.json``), which
   :class:`liaids.classification.predictor.LesionClassifier` loads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from liaids.classification.matching import align_livers
from liaids.classification.patches import (
    PATCH_PLANS,
    BBox,
    BoxErrors,
    PatchPlan,
    boxes_from_instances,
    extract_lesion_patches,
    jitter_box,
)
from liaids.classification.predictor import MODEL_KIND, lesion_metrics
from liaids.codes import CLINICAL_FIELDS, LESION_TYPES, PHASES
from liaids.dataset import Dataset
from liaids.errors import LiaidsError
from liaids.model_store import save_model
from liaids.networks.lesion_classifier import PROFILES, VARIANTS, LesionClassifierNet
from liaids.train.common import (
    prepare_output,
    restore_checkpoint,
    save_checkpoint,
    split_and_record,
    write_log,
)
from liaids.types import Volume

CACHE_VERSION = 3


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and sampling. ``paper``: the published settings; ``small``: fits a 2-core CPU.

    Args:
        optimizer: ``adam`` (weight decay as an L2 term, as the paper's Adam) or ``adamw`` (decoupled).
        lr: initial learning rate.
        weight_decay: weight decay.
        lr_step_epochs: the learning rate is multiplied by ``lr_gamma`` every this many epochs.
        lr_gamma: step decay factor.
        epochs: number of epochs (one epoch draws as many samples as there are training lesions).
        batch: lesions per step.
        jitter_copies: jittered box copies per lesion in the cache (besides the exact box).
        val_fraction: share of cases kept for validation.
        rotate_deg: largest in-plane rotation of the augmentation.
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.01
    lr_step_epochs: int = 60
    lr_gamma: float = 0.1
    epochs: int = 200
    batch: int = 16
    jitter_copies: int = 4
    val_fraction: float = 0.15
    rotate_deg: float = 15.0


TRAIN_PROFILES: dict[str, TrainConfig] = {
    "paper": TrainConfig(),
    "small": TrainConfig(
        optimizer="adamw", lr=2e-3, weight_decay=1e-4, lr_step_epochs=25, epochs=40, batch=16, jitter_copies=4
    ),
}


@dataclass
class PatchSet:
    """Cached lesion samples. ``patches`` is uint8 (value / 255 = the [0, 1] patch) to keep memory low.

    Attributes:
        patches: ``(N, 3, D, H, W)`` uint8, or ``(N, 0)`` for a clinical-only cache.
        extents: ``(N, 3, 3)`` lesion box extents in the patches (zeros for a clinical-only cache).
        labels: ``(N,)`` class index in :data:`liaids.codes.LESION_TYPES`.
        clinical: ``(N, 7)`` encoded clinical vectors.
        case_ids: ``(N,)`` case of each sample.
        lesion_ids: ``(N,)`` lesion instance id.
        copies: ``(N,)`` 0 = exact ground-truth boxes, >= 1 = jittered boxes.
    """

    patches: np.ndarray
    extents: np.ndarray
    labels: np.ndarray
    clinical: np.ndarray
    case_ids: np.ndarray
    lesion_ids: np.ndarray
    copies: np.ndarray

    def select(self, mask: np.ndarray) -> PatchSet:
        return PatchSet(
            self.patches[mask],
            self.extents[mask],
            self.labels[mask],
            self.clinical[mask],
            self.case_ids[mask],
            self.lesion_ids[mask],
            self.copies[mask],
        )

    def __len__(self) -> int:
        return len(self.labels)


def lesion_samples(
    ds: Dataset,
    case_id: str,
    plan: PatchPlan,
    copies: int,
    rng: np.random.Generator,
    box_errors: BoxErrors | None = None,
) -> list[tuple[np.ndarray, np.ndarray, int, np.ndarray, int, int]]:
    """Three-phase patches of every lesion of a case: the exact box, then ``copies`` jittered boxes.

    The jitter is drawn from ``box_errors`` (each phase independently, as each phase has its own
    detections) or, without them, from :func:`jitter_box`'s Gaussian.

    Returns:
        ``(patches (3, D, H, W) float32, extents (3, 3), label, clinical (7,), lesion_id, copy)`` per sample.
    """
    case = ds.load_case(case_id)
    volumes = case.study.phases
    truth = {p: boxes_from_instances(case.lesions[p].array) for p in PHASES}
    alignment = None
    clinical = np.asarray(case.info.clinical.encode(), np.float32)
    out = []
    for record in case.info.lesions:
        present = [p for p in ("PV", "ART", "NC") if record.lesion_id in truth[p]]
        if not present:
            continue
        exact = {}
        for p in PHASES:
            if record.lesion_id in truth[p]:
                exact[p] = truth[p][record.lesion_id]
            else:  # not visible in this phase's mask: where the liver alignment puts it
                alignment = alignment or align_livers(volumes, case.liver)
                exact[p] = alignment.transfer(truth[present[0]][record.lesion_id], present[0], p, volumes)
        boxes = [exact] + [
            {p: _jittered(exact[p], volumes[p], record.diameter_mm, rng, box_errors) for p in PHASES}
            for _ in range(copies)
        ]
        patches, extents = extract_lesion_patches(volumes, boxes, plan)
        label = LESION_TYPES.index(record.lesion_type)
        out.extend((patches[n], extents[n], label, clinical, record.lesion_id, n) for n in range(len(boxes)))
    return out


def _jitter_record(errors: BoxErrors | None, uses_image: bool) -> dict[str, Any] | str:
    """What config.json says of the jitter; a model that reads no image learnt nothing from it."""
    if not uses_image:
        return "unused (no image input)"
    return errors.summary() if errors is not None else "gaussian"


def _jittered(
    bbox: BBox, volume: Volume, diameter_mm: float, rng: np.random.Generator, box_errors: BoxErrors | None
) -> BBox:
    if box_errors is None:
        return jitter_box(bbox, rng, volume.spacing, volume.shape)
    return box_errors.apply(bbox, rng, diameter_mm, volume.shape)


def build_patch_cache(
    data: str | Path,
    case_ids: list[str],
    plan: PatchPlan | None,
    copies: int,
    seed: int,
    folder: Path,
    progress: Callable[[str, float], None] | None = None,
    box_errors: BoxErrors | None = None,
) -> PatchSet:
    """Cut (or reuse) the cached patches of all lesions of ``case_ids``.

    The cache file in ``folder`` is named by a hash of what it was made from (dataset, cases, plan,
    copies, seed), so runs that differ in any of these never share a file, and runs that agree (the
    variants of one profile) cut the patches once. ``plan=None`` builds a clinical-only cache from
    case.json (no images read).

    Args:
        data: dataset folder.
        case_ids: cases to include.
        plan: patch plan, or None for clinical vectors only.
        copies: jittered copies per lesion.
        seed: seeds the jitter.
        folder: the cache folder (created).
        progress: called with a message and the fraction done.
        box_errors: measured detector box errors to draw the jitter from (None: Gaussian jitter).

    Returns:
        The samples.
    """
    ds = Dataset(data)
    key = {
        "version": CACHE_VERSION,
        "dataset": str(Path(data).resolve()),
        "cases": sorted(case_ids),
        "plan": plan.to_dict() if plan else None,
        "copies": copies if plan else 0,
        "seed": seed,
        "box_errors": box_errors.digest if box_errors is not None and plan else None,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = folder / f"{'patches' if plan else 'clinical'}_{digest}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as cached:
            if json.loads(str(cached["key"])) == key:
                return PatchSet(*(cached[name] for name in _CACHE_ARRAYS))
    report = progress or (lambda _msg, _frac: None)
    rng = np.random.default_rng(seed)
    rows: list[tuple[np.ndarray, np.ndarray, int, np.ndarray, int, int, str]] = []
    for n, case_id in enumerate(sorted(case_ids)):
        if plan is None:
            info = ds.read_info(case_id)
            vec = np.asarray(info.clinical.encode(), np.float32)
            no_image, no_extent = np.zeros(0, np.uint8), np.zeros((len(PHASES), 3), np.float32)
            rows.extend(
                (no_image, no_extent, LESION_TYPES.index(r.lesion_type), vec, r.lesion_id, 0, case_id)
                for r in info.lesions
            )
        else:
            for patch, extent, label, vec, lid, copy in lesion_samples(
                ds, case_id, plan, copies, rng, box_errors
            ):
                rows.append((np.rint(patch * 255.0).astype(np.uint8), extent, label, vec, lid, copy, case_id))
        report(f"cutting lesion patches {case_id}", (n + 1) / len(case_ids))
    if not rows:
        raise LiaidsError("no lesions in the training cases", ds.root)
    arrays = {
        "patches": np.stack([r[0] for r in rows]) if plan else np.zeros((len(rows), 0), np.uint8),
        "extents": np.stack([r[1] for r in rows]).astype(np.float32),
        "labels": np.array([r[2] for r in rows], np.int64),
        "clinical": np.stack([r[3] for r in rows]).astype(np.float32),
        "case_ids": np.array([r[6] for r in rows]),
        "lesion_ids": np.array([r[4] for r in rows], np.int64),
        "copies": np.array([r[5] for r in rows], np.int64),
    }
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, key=np.array(json.dumps(key)), **arrays)
    tmp.replace(path)  # atomic: a half-written cache is never read
    return PatchSet(*(arrays[name] for name in _CACHE_ARRAYS))


_CACHE_ARRAYS = ("patches", "extents", "labels", "clinical", "case_ids", "lesion_ids", "copies")


def augment(
    patches: torch.Tensor, extents: torch.Tensor, rng: np.random.Generator, rotate_deg: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-plane flips, rotation and zoom (the same for the three phases of a lesion), then per-phase
    intensity scale and shift (contrast dose and timing vary) and Gaussian noise.

    Args:
        patches: ``(N, 3, D, H, W)`` in [0, 1].
        extents: ``(N, 3, 3)`` lesion box extents; the in-plane ones follow the zoom.
        rng: random generator.
        rotate_deg: largest rotation.

    Returns:
        Augmented patches and extents, same shapes.
    """
    n, c, d, h, w = patches.shape
    theta = torch.zeros(n, 2, 3)
    zooms = rng.uniform(0.9, 1.1, n)
    for m in range(n):
        angle = math.radians(rng.uniform(-rotate_deg, rotate_deg))
        flips = np.where(rng.random(2) < 0.5, -1.0, 1.0)
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        theta[m, :, :2] = torch.from_numpy(rotation @ np.diag(flips) / zooms[m])
    flat = patches.reshape(n, c * d, h, w)
    grid = F.affine_grid(theta, [n, c * d, h, w], align_corners=False)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.reshape(n, c, d, h, w)
    gain = torch.from_numpy(rng.uniform(0.92, 1.08, (n, c, 1, 1, 1))).float()
    offset = torch.from_numpy(rng.uniform(-0.03, 0.03, (n, c, 1, 1, 1))).float()
    noise = torch.from_numpy(rng.uniform(0.0, 0.02, (n, 1, 1, 1, 1))).float()
    out = ((out - 0.5) * gain + 0.5 + offset + torch.randn_like(out) * noise).clamp(0.0, 1.0)
    zoom = torch.tensor([1.0, 1.0, 1.0])[None, None, :].repeat(n, 1, 1)
    zoom[:, :, 1:] = torch.from_numpy(zooms).float()[:, None, None]
    return out, (extents * zoom).clamp(max=1.0)


def _batch_tensors(
    samples: PatchSet, index: np.ndarray
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Patches (float, [0, 1]) and extents, or None for a clinical-only cache, and clinical vectors."""
    if samples.patches.ndim <= 2:
        return None, None, torch.from_numpy(samples.clinical[index])
    patches = torch.from_numpy(samples.patches[index].astype(np.float32) / 255.0)
    return patches, torch.from_numpy(samples.extents[index]), torch.from_numpy(samples.clinical[index])


def _to(tensor: torch.Tensor | None, device: str | torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


@torch.no_grad()
def predict_samples(net: LesionClassifierNet, samples: PatchSet, batch: int = 32) -> np.ndarray:
    """Class probabilities ``(N, 7)`` of cached samples (evaluation mode)."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    out = []
    for start in range(0, len(samples), batch):
        patches, extents, clinical = _batch_tensors(
            samples, np.arange(start, min(start + batch, len(samples)))
        )
        logits = net(_to(patches, device), clinical.to(device), _to(extents, device)).logits
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    net.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, len(LESION_TYPES)), np.float32)


def _validate(net: LesionClassifierNet, val: PatchSet) -> dict[str, float]:
    probs = predict_samples(net, val)
    eps = 1e-7
    loss = float(-np.mean(np.log(probs[np.arange(len(val)), val.labels] + eps)))
    exact = val.copies == 0
    m_exact = lesion_metrics(val.labels[exact], probs[exact])
    row = {
        "val_loss": round(loss, 5),
        "val_accuracy": m_exact["accuracy"],
        "val_macro_auc": m_exact["macro_auc"],
        "val_binary_auc": m_exact["binary_auc"],
    }
    if (~exact).any():
        row["val_jitter_accuracy"] = lesion_metrics(val.labels[~exact], probs[~exact])["accuracy"]
    return row


def _class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    counts = np.bincount(labels, minlength=len(LESION_TYPES)).astype(float)
    weights = 1.0 / counts[labels]
    return weights / weights.sum()


def train_classification(
    data: str | Path,
    out: str | Path,
    variant: str = "full",
    profile: str = "small",
    *,
    epochs: int | None = None,
    batch: int | None = None,
    lr: float | None = None,
    jitter_copies: int | None = None,
    box_errors: str | Path | None = None,
    seed: int = 0,
    resume: bool = False,
    max_cases: int | None = None,
    splits_file: str | Path | None = None,
    cache: str | Path | None = None,
    device: str = "cpu",
    progress: Callable[[str, float], None] | None = None,
) -> Path:
    """Train the lesion classifier on a dataset in the LiAIDS format.

    Args:
        data: dataset folder.
        out: output folder (model folder plus training artefacts).
        variant: ``full``, ``image``, ``clinical`` or ``concat``.
        profile: ``small`` or ``paper`` (network size, patch plan, optimiser settings).
        epochs, batch, lr, jitter_copies: override the profile's settings.
        box_errors: a detection benchmark result (``benchmarks/detection.py accuracy --out``) whose
            measured box errors the jittered copies are drawn from; None: Gaussian jitter.
        seed: seeds the split, jitter, sampling, augmentation and initialisation.
        resume: continue from ``out/last.pt``.
        max_cases: use only the first N cases (quick runs).
        splits_file: JSON file with ``train`` and ``val`` case lists (nnU-Net's custom splits); None: the
            seeded split.
        cache: patch cache folder (default ``out/cache``); give the same folder to the runs of several
            variants to cut the patches once.
        device: ``cpu`` or ``cuda``.
        progress: called with a message and the fraction done.

    Returns:
        The output folder, holding ``model.pt`` and ``config.json`` of the best epoch.

    Raises:
        LiaidsError: unknown variant or profile, a non-empty output folder without ``resume``, too few
            cases or lesions.
    """
    if variant not in VARIANTS:
        raise LiaidsError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if profile not in PROFILES:
        raise LiaidsError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    cfg = TRAIN_PROFILES[profile]
    cfg = replace(
        cfg,
        epochs=epochs or cfg.epochs,
        batch=batch or cfg.batch,
        lr=lr or cfg.lr,
        jitter_copies=cfg.jitter_copies if jitter_copies is None else jitter_copies,
    )
    net_cfg = PROFILES[profile].with_variant(variant)
    plan = PATCH_PLANS[profile]
    errors = BoxErrors.load(box_errors) if box_errors is not None else None  # before anything is written
    out = prepare_output(out, resume)
    report = progress or (lambda _msg, _frac: None)
    ds = Dataset(data)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    case_ids, splits = split_and_record(
        out, ds, plan.to_dict(), cfg.val_fraction, seed, splits_file, max_cases
    )

    # The clinical variant needs no image: without a shared cache it reads only case.json.
    use_plan = plan if (net_cfg.uses_image or cache) else None
    cache_dir = Path(cache) if cache else out / "cache"
    if errors is not None and net_cfg.uses_image:
        (out / "box_errors.json").write_text(json.dumps({**errors.summary(), **errors.to_json()}) + "\n")
    samples = build_patch_cache(data, case_ids, use_plan, cfg.jitter_copies, seed, cache_dir, report, errors)
    in_val = np.isin(samples.case_ids, splits["val"])
    train_set, val_set = samples.select(~in_val), samples.select(in_val)
    if len(train_set) == 0 or len(val_set) == 0:
        raise LiaidsError("the training or the validation cases hold no lesion; use more cases", ds.root)
    weights = _class_balanced_weights(train_set.labels)
    n_lesions = int((train_set.copies == 0).sum())
    steps_per_epoch = max(1, math.ceil(n_lesions / cfg.batch))

    net = LesionClassifierNet(net_cfg).to(device)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma)
    log: list[dict[str, Any]] = []
    start_epoch, best = 0, math.inf
    ckpt_path = out / "last.pt"
    if resume and ckpt_path.is_file():
        ckpt = restore_checkpoint(ckpt_path, net, opt, sched, rng)
        start_epoch, best, log = ckpt["epoch"], ckpt["best"], ckpt["log"]

    counts = np.bincount(train_set.labels[train_set.copies == 0], minlength=len(LESION_TYPES))
    config = {
        "kind": MODEL_KIND,
        "profile": profile,
        "variant": variant,
        "network": net_cfg.to_dict(),
        "plan": plan.to_dict(),
        "labels": list(LESION_TYPES),
        "clinical_fields": list(CLINICAL_FIELDS),
        "training": {
            **asdict(cfg),
            "seed": seed,
            "data": str(Path(data).resolve()),
            "dataset": ds.meta.get("name"),
            "train_cases": len(splits["train"]),
            "val_cases": len(splits["val"]),
            "train_lesions": dict(zip(LESION_TYPES, counts.tolist(), strict=True)),
            "val_lesions": int((val_set.copies == 0).sum()),
            "box_errors": _jitter_record(errors, net_cfg.uses_image),
        },
    }
    net.train()
    total_steps = max(1, (cfg.epochs - start_epoch) * steps_per_epoch)
    done_steps = 0
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        losses, correct = [], 0
        for _ in range(steps_per_epoch):
            index = rng.choice(len(train_set), size=cfg.batch, p=weights)
            patches, extents, clinical = _batch_tensors(train_set, index)
            if patches is not None and extents is not None:
                patches, extents = augment(patches, extents, rng, cfg.rotate_deg)
            target = torch.from_numpy(train_set.labels[index]).to(device)
            logits = net(_to(patches, device), clinical.to(device), _to(extents, device)).logits
            loss = F.cross_entropy(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            correct += int((logits.argmax(1) == target).sum())
            done_steps += 1
            report(
                f"{variant} epoch {epoch + 1}/{cfg.epochs} loss {np.mean(losses[-20:]):.3f}",
                done_steps / total_steps,
            )
        sched.step()
        row = {
            "epoch": epoch + 1,
            "train_loss": round(float(np.mean(losses)), 5),
            "train_accuracy": round(correct / (steps_per_epoch * cfg.batch), 4),
            "lr": sched.get_last_lr()[0],
            **_validate(net, val_set),
            "seconds": round(time.time() - t0, 1),
        }
        log.append(row)
        if row["val_loss"] < best:
            best = row["val_loss"]
            save_model(out, net.state_dict(), {**config, "best_epoch": epoch + 1, "val": row})
        save_checkpoint(ckpt_path, net, opt, sched, epoch + 1, log, rng, best=best)
        write_log(out, log)
    return out
