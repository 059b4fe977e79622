"""Speed of the evaluation statistics on a synthetic test set of the paper's size.

Synthesises (seeded) 1,000 lesions with 7-class probabilities, then times every lesion-level statistic with
1,000-resample bootstrap CIs (`classification_report`: 7-class accuracy, macro AUC/sensitivity/specificity/
precision/F1, per-class AUC/sensitivity/specificity/precision/F1, binary AUC/accuracy/sensitivity/
specificity/precision/NPV/F1), the detection statistics of the same lesions spread over scans (matching,
recall by size, recall at 1 FP per scan, FROC), and the triage threshold search. Target: well under 60 s.

Run:
  .venv/bin/python benchmarks/evaluation_statistics.py [--lesions 1000] [--resamples 1000] [--out JSON]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _report import emit, machine_info

from liaids.codes import LESION_TYPES
from liaids.evaluate.detection import froc, lesion_recall, match_scan, recall_at_fp_rate
from liaids.evaluate.statistics import classification_report, triage_metrics, triage_threshold

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "evaluation_statistics.json"


def synth_lesions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class labels with the cohort's imbalance (cysts common, abscess and FNH rare) and softmax scores."""
    rng = np.random.default_rng(seed)
    prior = np.array([0.14, 0.05, 0.17, 0.04, 0.22, 0.35, 0.03])  # HCC ICC HM FNH HH HC HA
    y = rng.choice(len(LESION_TYPES), size=n, p=prior)
    logits = rng.normal(size=(n, len(LESION_TYPES)))
    logits[np.arange(n), y] += 2.5
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def synth_scans(n_lesions: int, seed: int) -> list:
    """The lesions spread over scans (1-4 each), each detected with a jittered box or missed, plus FPs."""
    rng = np.random.default_rng(seed)
    matches, made, s = [], 0, 0
    while made < n_lesions:
        k = int(min(rng.integers(1, 5), n_lesions - made))
        lo = rng.integers(0, 400, (k, 3))
        size = rng.integers(3, 40, (k, 3))
        gt = np.c_[lo, lo + size]
        found = rng.random(k) < 0.93
        pred = gt[found] + rng.integers(-1, 2, (int(found.sum()), 6))
        pred[:, 3:] = np.maximum(pred[:, 3:], pred[:, :3] + 1)
        n_fp = int(rng.poisson(1.5))
        fp_lo = rng.integers(0, 400, (n_fp, 3))
        pred = np.r_[pred, np.c_[fp_lo, fp_lo + rng.integers(3, 20, (n_fp, 3))]]
        scores = np.r_[rng.uniform(0.3, 1.0, int(found.sum())), rng.uniform(0.0, 0.8, n_fp)]
        matches.append(match_scan(f"scan{s}", pred, scores, gt, size[:, 0] * 0.7, score_threshold=0.5))
        made += k
        s += 1
    return matches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lesions", type=int, default=1000)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args()

    y, probs = synth_lesions(a.lesions, a.seed)
    t0 = time.perf_counter()
    report = classification_report(y, probs, n_resamples=a.resamples, seed=a.seed)
    t_class = time.perf_counter() - t0

    t0 = time.perf_counter()
    matches = synth_scans(a.lesions, a.seed + 1)
    recall = lesion_recall(matches)
    at_one_fp = recall_at_fp_rate(matches, 1.0)
    curves = froc(matches)
    t_det = time.perf_counter() - t0

    # Triage on patients: three lesions each in this synthetic set, plus as many patients without lesion.
    mal_prob = probs[:, :3].sum(axis=1)
    n_pat = a.lesions // 3
    patient_prob = np.r_[mal_prob[: 3 * n_pat].reshape(n_pat, 3).max(axis=1), np.zeros(n_pat)]
    patient_truth = np.r_[(y[: 3 * n_pat] < 3).reshape(n_pat, 3).any(axis=1), np.zeros(n_pat, bool)]
    t0 = time.perf_counter()
    chosen = triage_threshold(patient_prob, patient_truth, 0.99)
    triage = triage_metrics(patient_prob, patient_truth, chosen.threshold)
    t_triage = time.perf_counter() - t0

    result = {
        "lesions": a.lesions,
        "classes": len(LESION_TYPES),
        "bootstrap_resamples": a.resamples,
        "seconds": {
            "classification_report_with_bootstrap": round(t_class, 2),
            "detection_match_recall_froc": round(t_det, 2),
            "triage": round(t_triage, 3),
            "total": round(t_class + t_det + t_triage, 2),
        },
        "target_seconds": 60,
        "example_values": {
            "macro_auc": report["multiclass"]["macro_auc"],
            "binary_auc": report["binary"]["auc"],
            "accuracy_7_class": report["multiclass"]["accuracy"],
            "recall_all": recall["all"]["recall"],
            "recall_at_1_fp_per_scan": at_one_fp["all"]["recall"],
            "froc_cpm": curves["all"].cpm,
            "triage_threshold": chosen.threshold,
            "triage_low_risk_share": triage["low_risk_share"],
            "triage_npv": triage["npv"],
        },
        "machine": machine_info(),
    }
    emit(result, a.out)


if __name__ == "__main__":
    main()
