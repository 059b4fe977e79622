"""Lesion classification on a held-out dataset: saved classifier weights, nothing trained here.

For every lesion of every case the three-phase patches are cut from the ground-truth boxes of the instance
masks (a lesion absent from one phase's mask gets its box moved there on the liver alignment, as in
training); optionally also from ``--jitter`` detector-like jittered boxes per lesion. Reported per model:
7-class accuracy, macro AUC (one-vs-rest), binary malignant-vs-benign AUC and accuracy (P(HCC) + P(ICC)
+ P(HM)), the confusion matrix (rows = truth, columns = prediction, LESION_TYPES order), accuracy by
lesion diameter band and by appearance variant (where case.json records them), and, over all
models, whether the ablation ordering holds (full > image > clinical; interaction >= concat).

Targets for the small models on zzh lesions with ground-truth boxes: accuracy >= 0.90, macro AUC >= 0.98,
binary AUC >= 0.98.

Run:
  .venv/bin/python benchmarks/classification.py --data DATASET --weights DIR [DIR ...] [--jitter 2]
      [--flip-average config|on|off] [--out benchmarks/results/classification_zzh.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _report import emit

from liaids.classification.patches import PatchPlan
from liaids.classification.predictor import LesionClassifier, lesion_metrics
from liaids.codes import LESION_TYPES
from liaids.dataset import Dataset
from liaids.train.classification import lesion_samples

TARGETS = {"accuracy": 0.90, "macro_auc": 0.98, "binary_auc": 0.98}


_FIELDS = ("patches", "extents", "labels", "clinical", "lesion_ids", "copies")


# Diameter bands (mm) for the strata: the phantom's smallest lesions (under 6 mm at 5 mm slices) are where
# cysts and metastases become hard to tell apart.
SIZE_BANDS = ((0.0, 6.0), (6.0, 10.0), (10.0, 20.0), (20.0, math.inf))


def _samples(ds: Dataset, plan: PatchPlan, jitter: int, seed: int) -> dict[str, np.ndarray]:
    """Patches, box extents, labels, clinical vectors, lesion ids, copy index, diameter (mm, NaN when the
    case.json has none), appearance variant (the phantom's ``variant`` field, "" when absent) and case id
    of every lesion."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {name: [] for name in (*_FIELDS, "diameters", "variants", "cases")}
    for case_id in ds.case_ids:
        records = {r.lesion_id: r for r in ds.read_info(case_id).lesions}
        for sample in lesion_samples(ds, case_id, plan, jitter, rng):
            for name, value in zip(_FIELDS, sample, strict=True):
                rows[name].append(value)
            record = records[int(sample[4])]
            rows["diameters"].append(math.nan if record.diameter_mm is None else record.diameter_mm)
            rows["variants"].append(str(record.extra.get("variant", "")))
            rows["cases"].append(case_id)
    return {name: np.stack(values) for name, values in rows.items()}


def _strata(s: dict[str, np.ndarray], correct: np.ndarray) -> dict[str, dict[str, dict[str, float]]]:
    """Seven-class accuracy by diameter band and by appearance variant (exact boxes only)."""
    exact = s["copies"] == 0
    out: dict[str, dict[str, dict[str, float]]] = {"diameter_mm": {}, "variant": {}}
    groups = [
        ("diameter_mm", f"{lo:g}-{hi:g}", (s["diameters"] >= lo) & (s["diameters"] < hi))
        for lo, hi in SIZE_BANDS
    ] + [("variant", v, s["variants"] == v) for v in sorted(set(s["variants"][exact].tolist())) if v]
    for kind, name, member in groups:
        sel = exact & member
        if sel.any():
            out[kind][name] = {"n": int(sel.sum()), "accuracy": round(float(correct[sel].mean()), 4)}
    return out


def _meets_targets(metrics: dict[str, Any]) -> dict[str, bool]:
    return {k: bool(metrics[k] >= v) for k, v in TARGETS.items()}


def evaluate(
    data: Path, weights: list[Path], jitter: int, seed: int, flip_average: bool | None = None
) -> dict[str, Any]:
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    ds = Dataset(data)
    models = {str(w): LesionClassifier.from_weights(w, flip_average=flip_average) for w in weights}
    # Patches are cut once per distinct patch plan (every small model shares one).
    plans = {json.dumps(m.plan.to_dict()): m.plan for m in models.values()}
    samples = {key: _samples(ds, plan, jitter, seed) for key, plan in plans.items()}
    results: dict[str, Any] = {}
    for name, model in models.items():
        s = samples[json.dumps(model.plan.to_dict())]
        probs, _ = model.predict(s["patches"], s["clinical"], s["extents"])
        exact = s["copies"] == 0
        entry = {
            "variant": model.variant,
            "profile": model.config.get("profile"),
            "best_epoch": model.config.get("best_epoch"),
            "flip_average": model.flip_average,
            "weights_mb": round((Path(name) / "model.pt").stat().st_size / 1e6, 3),
            "truth_boxes": lesion_metrics(s["labels"][exact], probs[exact]),
            "truth_boxes_by_stratum": _strata(s, probs.argmax(1) == s["labels"]),
        }
        if (~exact).any():
            entry["jittered_boxes"] = lesion_metrics(s["labels"][~exact], probs[~exact])
        entry["meets_targets"] = _meets_targets(entry["truth_boxes"])
        if model.context.weight > 0:
            # The pipeline's answer: each lesion read with the same patient's other lesions (context.json).
            ctx = model.context.apply(probs[exact], s["cases"][exact])
            with_context = lesion_metrics(s["labels"][exact], ctx)
            entry["patient_context"] = {
                **model.context.to_dict(),
                "truth_boxes": with_context,
                "truth_boxes_by_stratum": _strata(
                    {k: v[exact] for k, v in s.items()}, ctx.argmax(1) == s["labels"][exact]
                ),
                "meets_targets": _meets_targets(with_context),
            }
        results[name] = entry
    ordering = {}
    for metric in ("accuracy", "macro_auc"):
        by_variant = {e["variant"]: e["truth_boxes"][metric] for e in results.values()}
        for better, worse, strict in (
            ("full", "image", True),
            ("image", "clinical", True),
            ("full", "concat", False),
        ):
            if better in by_variant and worse in by_variant:
                a, b = by_variant[better], by_variant[worse]
                name = f"{metric}: {better} {'>' if strict else '>='} {worse}"
                ordering[name] = bool(a > b if strict else a >= b)
    any_samples = next(iter(samples.values()))
    return {
        "data": str(data),
        "dataset": ds.meta.get("name"),
        "cases": len(ds),
        "lesions": int((any_samples["copies"] == 0).sum()),
        "lesions_per_type": dict(
            zip(
                LESION_TYPES,
                np.bincount(any_samples["labels"][any_samples["copies"] == 0], minlength=7).tolist(),
                strict=True,
            )
        ),
        "jitter_copies": jitter,
        "targets": TARGETS,
        "ordering": ordering,
        "models": results,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="held-out dataset folder")
    ap.add_argument("--weights", type=Path, nargs="+", required=True, help="classifier model folder(s)")
    ap.add_argument("--jitter", type=int, default=0, help="jittered box copies per lesion (0 = none)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the jitter")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write (benchmarks/results/...)")
    ap.add_argument(
        "--flip-average",
        choices=("config", "on", "off"),
        default="config",
        help="average in-plane flips of each patch (default: as each model's config.json says)",
    )
    a = ap.parse_args()
    flips = {"config": None, "on": True, "off": False}[a.flip_average]
    result = evaluate(a.data, a.weights, a.jitter, a.seed, flips)
    emit(result, a.out)


if __name__ == "__main__":
    main()
