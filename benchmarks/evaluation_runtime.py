"""Runtime of the evaluation suite (``liaids evaluate``) on a synthetic cohort of the paper's test-set size.

Builds (seeded) a cohort of about 1,000 true lesions (40 % of patients lesion-free, 1-4 lesions otherwise,
93 % detected with jittered boxes, about 0.5 false positives per patient, 7-class probabilities with the
cohort's class imbalance, mixed slice thickness, mAs and centres) and times, without any model:

* ``tables``: matching every case and building the lesion, detection and patient tables;
* ``statistics``: every statistic of metrics.json from the tables (lesion level with 1,000-resample
  bootstrap CIs, patient level, detection recall and FROC, strata, triage, ROC and FROC points);
* ``evaluate``: the whole suite from disk (``--disk``): reading the dataset's masks and the report.json
  files, tables, statistics, CSVs, figures and report.html. Writing the cohort to disk is not timed.

Target (issue 7): statistics under 60 s for 1,000 lesions.

Run:
  .venv/bin/python benchmarks/evaluation_runtime.py [--lesions 1000] [--resamples 1000] [--disk] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _report import emit, machine_info

from liaids.codes import LESION_TYPES, MALIGNANT_TYPES, PHASES
from liaids.evaluate.cohort import CasePrediction, CaseTruth, TrueLesion, build_tables
from liaids.evaluate.suite import (
    EvaluationSettings,
    detection_metrics,
    froc_rows,
    lesion_level_metrics,
    patient_level_metrics,
    roc_rows,
    stratum_rows,
    triage_metrics_from_reports,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "evaluation_runtime.json"
GRID_KJI = (16, 44, 64)  # mask shape of the synthetic cases
PRIOR = np.array([0.14, 0.05, 0.17, 0.04, 0.22, 0.35, 0.03])  # HCC ICC HM FNH HH HC HA


def _probs(rng: np.random.Generator, label: int) -> dict[str, float]:
    logits = rng.normal(size=len(LESION_TYPES))
    logits[label] += 2.5
    p = np.exp(logits) / np.exp(logits).sum()
    return {t: round(float(v), 4) for t, v in zip(LESION_TYPES, p, strict=True)}


def synth_cohort(n_lesions: int, seed: int) -> list[dict[str, Any]]:
    """Cases as plain dicts: true lesions in fixed slots (no overlap), predictions, acquisition."""
    rng = np.random.default_rng(seed)
    cases, made, n = [], 0, 0
    while made < n_lesions:
        k = 0 if rng.random() < 0.4 else int(min(rng.integers(1, 5), n_lesions - made))
        truth, preds = [], []
        for slot in range(k):
            i0, j0, k0 = 2 + 20 * (slot % 3), 2 + 20 * (slot // 3), int(rng.integers(0, 8))
            size = rng.integers(3, 17, 3)
            box = (i0, j0, k0, i0 + int(size[0]), j0 + int(size[1]), k0 + int(min(size[2], 7)))
            label = int(rng.choice(len(LESION_TYPES), p=PRIOR))
            truth.append((slot + 1, LESION_TYPES[label], box, float(max(size[:2]) * 0.8)))
            if rng.random() < 0.93:
                jitter = rng.integers(-1, 2, 6)
                pb = [max(0, int(b + d)) for b, d in zip(box, jitter, strict=True)]
                pb[3:] = [max(hi, lo + 1) for lo, hi in zip(pb[:3], pb[3:], strict=True)]
                preds.append((tuple(pb), _probs(rng, label), float(rng.uniform(0.3, 1.0))))
        for _ in range(int(rng.poisson(0.5))):
            lo = (int(rng.integers(0, 55)), int(rng.integers(0, 35)), 12)
            preds.append(((*lo, lo[0] + 5, lo[1] + 5, 15), _probs(rng, 5), float(rng.uniform(0.2, 0.8))))
        acq = {
            "slice_thickness_mm": float(rng.choice([1.25, 3.0, 5.0, 7.5])),
            "mas": float(rng.uniform(50, 450)),
            "centre": str(rng.choice(["A", "B", "C"])),
        }
        cases.append({"case_id": f"c{n:04d}", "truth": truth, "preds": preds, "acquisition": acq})
        made += k
        n += 1
    return cases


def _report(case: dict[str, Any], threshold: float = 0.3) -> dict[str, Any]:
    lesions, worst, score = [], None, 0.0
    for n, (box, probs, s) in enumerate(case["preds"], start=1):
        ltype = max(LESION_TYPES, key=lambda t: probs[t])
        mal = round(sum(probs[t] for t in MALIGNANT_TYPES), 4)
        lesions.append(
            {
                "id": n,
                "type": ltype,
                "probabilities": probs,
                "malignant_probability": mal,
                "detection_score": round(s, 4),
                "phases": {p: {"bbox_ijk": list(box)} for p in PHASES},
            }
        )
        key = (ltype in MALIGNANT_TYPES, mal, s)
        worst = max(worst or (key, ltype), (key, ltype))
        score = max(score, 1.0 if ltype in MALIGNANT_TYPES else mal)
    return {
        "study": {"case_id": case["case_id"]},
        "lesions": lesions,
        "diagnosis": {"diagnosis": worst[1] if worst else None},
        "triage": {"risk": "low" if score < threshold else "high", "score": score, "threshold": threshold},
    }


def in_memory(cases: list[dict[str, Any]]) -> tuple[dict[str, CaseTruth], dict[str, CasePrediction]]:
    """The cohort as truth and prediction objects (what reading the files yields)."""
    from liaids.evaluate.cohort import parse_report

    truths = {
        c["case_id"]: CaseTruth(
            c["case_id"],
            tuple(
                TrueLesion(lid, t, d, "case.json", dict.fromkeys(PHASES, b)) for lid, t, b, d in c["truth"]
            ),
            c["acquisition"],
        )
        for c in cases
    }
    preds = {c["case_id"]: parse_report(_report(c), c["case_id"]) for c in cases}
    return truths, preds


def write_cohort(cases: list[dict[str, Any]], root: Path) -> tuple[Path, Path]:
    """Dataset folder (case.json and lesion masks) and predictions folder of the cohort."""
    from liaids.io import write_nifti
    from liaids.types import Volume

    data, pred = root / "dataset", root / "pred"
    data.mkdir()
    clinical = {"age": 60, "sex": "F", "hepatitis_b": False, "hepatitis_c": False, "cirrhosis": False}
    clinical |= {"cholangiolithiasis": False, "extrahepatic_tumour": False}
    for c in cases:
        folder = data / c["case_id"]
        folder.mkdir()
        mask = np.zeros(GRID_KJI, np.uint16)
        for lid, _t, (i0, j0, k0, i1, j1, k1), _d in c["truth"]:
            mask[k0:k1, j0:j1, i0:i1] = lid
        for p in PHASES:
            write_nifti(Volume(mask, (0.8, 0.8, 5.0)), folder / f"lesions_{p}.nii.gz")
        info = {
            "case_id": c["case_id"],
            "clinical": clinical,
            "lesions": [{"id": lid, "type": t, "diameter_mm": d} for lid, t, _b, d in c["truth"]],
            "acquisition": c["acquisition"],
        }
        (folder / "case.json").write_text(json.dumps(info))
        (pred / c["case_id"]).mkdir(parents=True)
        (pred / c["case_id"] / "report.json").write_text(json.dumps(_report(c)))
    meta = {"name": "runtime benchmark", "phases": list(PHASES), "cases": [c["case_id"] for c in cases]}
    (data / "dataset.json").write_text(json.dumps(meta))
    return data, pred


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lesions", type=int, default=1000)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--disk", action="store_true", help="also time the whole suite from files")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args()

    settings = EvaluationSettings(n_resamples=a.resamples, seed=a.seed)
    cases = synth_cohort(a.lesions, a.seed)
    truths, preds = in_memory(cases)

    t0 = time.perf_counter()
    tables = build_tables(truths, preds)
    t_tables = time.perf_counter() - t0

    t0 = time.perf_counter()
    lesion = lesion_level_metrics(tables, settings)
    patient = patient_level_metrics(tables, settings)
    detection = detection_metrics(tables, settings)
    strata = stratum_rows(tables, settings)
    triage = triage_metrics_from_reports(tables, settings)
    classified = [r for r in tables.lesions if r["detected"]]
    y = np.array([LESION_TYPES.index(r["true_type"]) for r in classified])
    p = np.array([[r[f"p_{t}"] for t in LESION_TYPES] for r in classified])
    roc = roc_rows(y, p)
    froc, _ = froc_rows([m.scan for m in tables.matches])
    t_stats = time.perf_counter() - t0

    seconds: dict[str, float] = {"tables": round(t_tables, 2), "statistics": round(t_stats, 2)}
    if a.disk:
        from liaids.evaluate.suite import evaluate

        with tempfile.TemporaryDirectory(prefix="liaids-eval-bench-") as tmp:
            data, pred = write_cohort(cases, Path(tmp))
            t0 = time.perf_counter()
            evaluate(data, Path(tmp) / "out", predictions=pred, settings=settings)
            seconds["evaluate_from_disk"] = round(time.perf_counter() - t0, 2)

    result = {
        "lesions": len(tables.lesions),
        "patients": len(tables.patients),
        "predicted_lesions": len(tables.detections),
        "bootstrap_resamples": a.resamples,
        "seconds": seconds,
        "target_seconds_statistics": 60,
        "within_target": t_stats < 60,
        "example_values": {
            "lesion_accuracy_7_class": lesion["multiclass"]["accuracy"]["value"],
            "lesion_macro_auc": lesion["multiclass"]["macro_auc"]["value"],
            "patient_accuracy_7_class": patient["seven_class"]["value"],
            "recall_all": detection["recall"]["all"]["recall"],
            "triage_npv": triage["npv"]["value"],
            "strata_rows": len(strata),
            "roc_points": len(roc),
            "froc_points": len(froc),
        },
        "machine": machine_info(),
    }
    emit(result, a.out)


if __name__ == "__main__":
    main()
