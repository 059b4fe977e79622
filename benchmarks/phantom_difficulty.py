"""How hard the phantom is for a plain baseline that sees no spatial pattern.

Logistic regression on each lesion's mean attenuation in NC, ART and PV plus its log volume, trained on
phantom lesions of one profile and tested on held-out lesions of the external profiles; and the same
with clinical fields alone. Reported as balanced seven-class accuracy (mean per-class recall).
Targets (issue 2): attenuation baseline <= 0.70, clinical-only <= 0.50.

Run: .venv/bin/python benchmarks/phantom_difficulty.py --train 300 --test-per-centre 60 \
         --out benchmarks/results/phantom_difficulty.json
"""

from __future__ import annotations

import argparse
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from _report import emit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, confusion_matrix
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from liaids.codes import LESION_TYPES, PHASES
from liaids.phantom.measure import lesion_features
from liaids.phantom.profiles import load_profile
from liaids.phantom.synthesize import synthesize_case


def _one(args: tuple[str, int, int]) -> list[dict]:
    profile, seed, index = args
    return lesion_features(synthesize_case(load_profile(profile), seed, index))


def _matrices(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    att = []
    for r in rows:
        means = [r[f"mean_{p}"] for p in PHASES]
        present = [m for m in means if np.isfinite(m)]
        fill = float(np.mean(present)) if present else 0.0
        att.append([m if np.isfinite(m) else fill for m in means] + [np.log(max(r["volume_ml"], 1e-3))])
    clin = [r["clinical"] for r in rows]
    y = [LESION_TYPES.index(r["type"]) for r in rows]
    return np.array(att), np.array(clin), np.array(y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train", type=int, default=300, help="training cases (profile --train-profile)")
    ap.add_argument("--train-profile", default="internal")
    ap.add_argument("--test-per-centre", type=int, default=60)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    jobs_train = [(a.train_profile, a.seed, i) for i in range(a.train)]
    jobs_test = [(c, a.seed + 1, i) for c in ("zzh", "qzh", "nbh") for i in range(a.test_per_centre)]
    with Pool(a.workers) as pool:
        train = [r for rows in pool.map(_one, jobs_train) for r in rows]
        test = [r for rows in pool.map(_one, jobs_test) for r in rows]
    xa, xc, y = _matrices(train)
    ta, tc, ty = _matrices(test)
    out: dict = {
        "train_cases": a.train,
        "train_lesions": len(train),
        "test_cases": len(jobs_test),
        "test_lesions": len(test),
        "test_lesions_per_type": {t: int((ty == i).sum()) for i, t in enumerate(LESION_TYPES)},
    }
    for name, (xtr, xte) in {"attenuation_volume": (xa, ta), "clinical_only": (xc, tc)}.items():
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
        model.fit(xtr, y)
        pred = model.predict(xte)
        # Percentile bootstrap over test lesions: the external test classes are small.
        rng = np.random.default_rng(0)
        boot = []
        for _ in range(1000):
            idx = rng.integers(0, len(ty), len(ty))
            boot.append(balanced_accuracy_score(ty[idx], pred[idx]))
        out[name] = {
            "balanced_accuracy": round(float(balanced_accuracy_score(ty, pred)), 3),
            "balanced_accuracy_95ci": [round(float(v), 3) for v in np.percentile(boot, [2.5, 97.5])],
            "accuracy": round(float((pred == ty).mean()), 3),
            "confusion_matrix_rows_true_cols_pred": confusion_matrix(ty, pred, labels=range(7)).tolist(),
            "labels": list(LESION_TYPES),
        }
    emit(out, a.out)


if __name__ == "__main__":
    main()
