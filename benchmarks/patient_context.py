"""Choose a classifier's patient-context weight on validation lesions (``liaids/classification/context.py``).

Each lesion of the validation cases is classified from its ground-truth boxes (as in
benchmarks/classification.py); the weight with the lowest mean log-loss over those lesions, each read with
its patient's other lesions, is chosen from a fixed grid. With ``--write`` it is stored as ``context.json``
in the classifier's model folder, where the pipeline and the classification benchmark read it. Choose it on
cases the classifier did not train on (its ``splits.json`` ``val``), never on a test set.

Run:
  .venv/bin/python benchmarks/patient_context.py --data VALIDATION_DATASET --weights CLASSIFIER_DIR [...]
      [--write] [--out benchmarks/results/patient_context.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _report import emit
from classification import _samples

from liaids.classification.context import PatientContext, choose_context_weight, save_patient_context
from liaids.classification.predictor import LesionClassifier
from liaids.dataset import Dataset


def choose(data: Path, weights: list[Path], write: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    ds = Dataset(data)
    results: dict[str, Any] = {"data": str(data), "dataset": ds.meta.get("name"), "models": {}}
    cut: dict[str, dict[str, np.ndarray]] = {}
    for folder in weights:
        model = LesionClassifier.from_weights(folder)
        key = repr(model.plan.to_dict())
        if key not in cut:
            cut[key] = _samples(ds, model.plan, 0, 0)
        s = cut[key]
        probs, _ = model.predict(s["patches"], s["clinical"], s["extents"])
        weight, table = choose_context_weight(probs, s["labels"], list(s["cases"]))
        entry: dict[str, Any] = {
            "variant": model.variant,
            "lesions": len(s["labels"]),
            "patients": len(set(s["cases"].tolist())),
            "patients_with_several_lesions": int(sum(np.unique(s["cases"], return_counts=True)[1] > 1)),
            "chosen_weight": weight,
            "grid": table,
        }
        if write:
            details = {k: entry[k] for k in ("lesions", "patients", "patients_with_several_lesions", "grid")}
            details["cohort"] = str(data)
            entry["written"] = str(save_patient_context(folder, PatientContext(weight), details))
        results["models"][str(folder)] = entry
    results["seconds"] = round(time.perf_counter() - t0, 1)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--weights", type=Path, nargs="+", required=True)
    ap.add_argument("--write", action="store_true", help="store the chosen weight as context.json")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    emit(choose(a.data, a.weights, a.write), a.out)


if __name__ == "__main__":
    main()
