"""What every training run shares: the output folder, the case split, checkpoints and the log files."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liaids.dataset import Dataset
from liaids.errors import LiaidsError
from liaids.model_store import save_model


def prepare_output(out: str | Path, resume: bool, reusable: tuple[str, ...] = ()) -> Path:
    """Create the output folder; refuse a non-empty one unless resuming.

    Args:
        out: the run's folder.
        resume: continuing an earlier run in the same folder.
        reusable: entries that may already be there (e.g. a shared ``cache``).

    Returns:
        The folder.
    """
    out = Path(out)
    if out.exists() and any(p.name not in reusable for p in out.iterdir()) and not resume:
        raise LiaidsError("output folder exists and is not empty (use --resume to continue a run)", out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def split_cases(
    case_ids: list[str], val_fraction: float, seed: int, root: Path, splits_file: str | Path | None = None
) -> dict[str, list[str]]:
    """Training / validation split of the cases: seeded, or read from a file.

    The same seed and case list give the same split in every training module, so models trained on one
    dataset with one seed share their held-out cases. A splits file (like nnU-Net's custom splits) fixes
    the split by hand, e.g. to keep earlier validation cases held out after the dataset grew.

    Args:
        case_ids: the dataset's cases in use.
        val_fraction: share of validation cases of the seeded split.
        seed: seed of the split.
        root: dataset folder (named in errors).
        splits_file: JSON file ``{"train": [...], "val": [...]}`` of case ids; None for the seeded split.

    Raises:
        LiaidsError: fewer than two cases; a splits file that is unreadable, lists an unknown case, puts a
            case in both lists or leaves either list empty.
    """
    if splits_file is not None:
        return _read_splits(Path(splits_file), case_ids)
    if len(case_ids) < 2:
        raise LiaidsError("need at least 2 cases (training and validation)", root)
    order = np.random.default_rng(seed).permutation(len(case_ids))
    n_val = max(1, round(val_fraction * len(case_ids)))
    return {
        "val": sorted(case_ids[i] for i in order[:n_val]),
        "train": sorted(case_ids[i] for i in order[n_val:]),
    }


def cases_in_splits(case_ids: list[str], splits: dict[str, list[str]]) -> list[str]:
    """The cases of ``case_ids`` the split uses, in dataset order (a splits file may leave some out)."""
    used = {*splits["train"], *splits["val"]}
    return [c for c in case_ids if c in used]


def split_and_record(
    out: Path,
    ds: Dataset,
    plan: dict[str, Any],
    val_fraction: float,
    seed: int,
    splits_file: str | Path | None = None,
    max_cases: int | None = None,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> tuple[list[str], dict[str, list[str]]]:
    """The first steps every trainer shares: choose the cases, split them, write ``splits.json`` and
    ``plan.json`` into ``out`` so the run can be repeated.

    Args:
        out: output folder of the run.
        ds: the dataset (its cases in dataset order; its folder is named in errors).
        plan: the preprocessing plan as a dictionary.
        val_fraction, seed, splits_file: as for :func:`split_cases`.
        max_cases: use only the first N cases (quick runs); None for all.
        exclude: cases never to use (e.g. those an upstream model was trained on).

    Returns:
        The cases the split uses (dataset order) and the split.
    """
    usable = [c for c in ds.case_ids if c not in exclude]
    case_ids = usable[:max_cases] if max_cases else usable
    splits = split_cases(case_ids, val_fraction, seed, ds.root, splits_file)
    write_json(out / "splits.json", splits)
    write_json(out / "plan.json", plan)
    return cases_in_splits(case_ids, splits), splits


def _read_splits(path: Path, case_ids: list[str]) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LiaidsError(f"cannot read the splits file ({exc.__class__.__name__})", path) from exc
    if not isinstance(data, dict):
        raise LiaidsError("splits file must hold an object with 'train' and 'val' lists", path)
    splits = {}
    for key in ("train", "val"):
        cases = data.get(key)
        if not isinstance(cases, list) or not cases or not all(isinstance(c, str) for c in cases):
            raise LiaidsError(f"splits file needs a non-empty list of case ids under {key!r}", path)
        splits[key] = sorted(set(cases))
    unknown = sorted(set(splits["train"] + splits["val"]) - set(case_ids))
    if unknown:
        raise LiaidsError(f"splits file lists cases not in the dataset: {', '.join(unknown[:5])}", path)
    both = sorted(set(splits["train"]) & set(splits["val"]))
    if both:
        raise LiaidsError(f"splits file puts cases in both train and val: {', '.join(both[:5])}", path)
    return {"val": splits["val"], "train": splits["train"]}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def save_checkpoint(
    path: Path,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    log: list[dict[str, Any]],
    rng: np.random.Generator,
    **extra: Any,
) -> None:
    """``last.pt``: everything needed to resume, random generators included."""
    torch.save(
        {
            "model": network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "log": log,
            "numpy_rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            **extra,
        },
        path,
    )


def restore_checkpoint(
    path: Path,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Load ``last.pt`` into the run's objects; returns the checkpoint (``epoch``, ``log``, extras)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # our own file: holds RNG state
    network.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    rng.bit_generator.state = ckpt["numpy_rng"]
    torch.set_rng_state(ckpt["torch_rng"])
    return ckpt


def write_log(out: Path, log: list[dict[str, Any]]) -> None:
    """``log.json`` and ``log.csv`` (one row per epoch; columns in order of first appearance)."""
    write_json(out / "log.json", log)
    fields: list[str] = []
    for row in log:
        fields += [k for k in row if k not in fields]
    with open(out / "log.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(log)


def run_epoch_steps(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step_loss: Callable[[], torch.Tensor],
    epoch: int,
    epochs: int,
    steps: int,
    report: Callable[[str, float], None],
) -> list[float]:
    """One epoch of ``steps`` optimiser and scheduler steps on the loss ``step_loss()`` draws, reporting the
    running loss and the share of all ``epochs * steps`` steps done.

    Returns:
        The loss of every step.
    """
    losses: list[float] = []
    for step in range(steps):
        loss = step_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        report(
            f"epoch {epoch + 1}/{epochs} loss {np.mean(losses[-20:]):.3f}",
            (epoch * steps + step + 1) / (epochs * steps),
        )
    return losses


def close_epoch(
    out: Path,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rng: np.random.Generator,
    log: list[dict[str, Any]],
    row: dict[str, Any],
    config: dict[str, Any],
    key: str,
    best: float,
) -> float:
    """End an epoch: append ``row`` to the log, save the model folder when ``row[key]`` beats ``best``,
    write ``last.pt`` and the log files.

    Returns:
        The best value of ``row[key]`` so far.
    """
    log.append(row)
    if row[key] > best:
        best = row[key]
        save_model(out, network.state_dict(), {**config, "best_epoch": row["epoch"], "val": row})
    save_checkpoint(out / "last.pt", network, optimizer, scheduler, row["epoch"], log, rng, best=best)
    write_log(out, log)
    return best
