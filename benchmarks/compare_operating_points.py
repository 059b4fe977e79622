"""Compare two pipeline settings at operating points fixed beforehand, on a cohort neither was chosen on.

Both settings share one set of every-candidate diagnose runs (``liaids evaluate DATA -o OUT --weights
DETECTOR_COPY``: a detector folder without ``operating_point`` and without ``verifier.json``). The
baseline keeps lesions whose detector score (or, with ``--baseline-verifier``, verified score) reaches
``--baseline-threshold``; the candidate first re-scores every lesion with the verifier in ``--verifier``
(as ``benchmarks/operating_points.py`` does) and keeps those reaching ``--candidate-threshold``. Types are
recomputed with the patient context over the kept lesions (``calls_at_operating_point``), as the pipeline
would.

Per setting: patient-wise seven-class and binary accuracy, triage (low-risk patients and the malignant
ones among them), lesions found by the paper's hit rule under 1 cm and from 1 cm, the under-1-cm ones
found by a box at most ``--tight`` times the lesion's diameter in-plane (a hit by a box many times the
lesion, counted by the rule's IoM, is a chance overlap rather than a localisation), and false-positive
lesions per patient.

Run:
  .venv/bin/python benchmarks/compare_operating_points.py --data DATA --predictions OUT/predictions \\
      --baseline-threshold T0 --baseline-triage S0 [--baseline-verifier DIR] --verifier DIR \\
      --candidate-threshold T1 --candidate-triage S1 [--out benchmarks/results/NAME.json] \\
      [--baseline-triage-detection D0] [--candidate-triage-detection D1]

``--*-triage-detection``: the triage's own detection point (``benchmarks/operating_points.py
--triage-detection``); the triage then also reads the candidates between it and the detection threshold.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
from _report import emit
from operating_points import predicted, rerun_stages, true_patient_type

from liaids.classification.context import PatientContext, load_patient_context
from liaids.codes import MALIGNANT_TYPES
from liaids.dataset import Dataset
from liaids.evaluate.cohort import match_case, parse_report, read_truth
from liaids.pipeline.decision import finding_calls, triage_score


def measure(
    ds: Dataset,
    reports: list[dict],
    truths: list[str],
    threshold: float,
    triage_threshold: float,
    context: PatientContext,
    tight: float,
    triage_detection: float | None = None,
) -> dict:
    """The figures of one setting (see the module docstring)."""
    calls = [predicted(r, threshold, triage_threshold, context) for r in reports]
    right = [c[0] == y for c, y in zip(calls, truths, strict=True)]
    binary = [(c[0] in MALIGNANT_TYPES) == (y in MALIGNANT_TYPES) for c, y in zip(calls, truths, strict=True)]
    scores = [c[1] for c in calls]
    if triage_detection is not None:  # the triage's findings count too (decision.finding_calls)
        scores = [
            max(s, triage_score(finding_calls(r["lesions"], threshold, triage_detection)))
            for s, r in zip(scores, reports, strict=True)
        ]
    low = [s < triage_threshold for s in scores]
    counts = {"small": 0, "small_tight": 0, "small_total": 0, "large": 0, "large_total": 0, "fp": 0}
    for case_id, report in zip(ds.case_ids, reports, strict=True):
        truth = read_truth(ds, case_id)
        match = match_case(truth, parse_report(report, case_id), score_threshold=threshold)
        for rec in match.scan.lesions:
            size = "small" if rec.diameter_mm < 10 else "large"
            counts[f"{size}_total"] += 1
            if not rec.detected:
                continue
            counts[size] += 1
            if size == "small":
                phase = match.lesion_phase[rec.lesion_index]
                box = np.asarray(report["lesions"][rec.matched_detection]["phases"][phase]["bbox_ijk"])
                spacing = np.asarray(report["phases"][phase]["spacing_mm"])
                in_plane = float(((box[3:] - box[:3]) * spacing)[:2].max())
                counts["small_tight"] += in_plane <= tight * rec.diameter_mm
        counts["fp"] += sum(d.outcome == "FP" for d in match.scan.detections)
    return {
        "detection_threshold": threshold,
        "triage_threshold": triage_threshold,
        "triage_detection_threshold": triage_detection,
        "patients_right": int(sum(right)),
        "patient_accuracy": float(np.mean(right)),
        "patient_binary_accuracy": float(np.mean(binary)),
        "low_risk": int(sum(low)),
        "low_risk_malignant_patients": int(
            sum(lo and y in MALIGNANT_TYPES for lo, y in zip(low, truths, strict=True))
        ),
        "triage_npv": (
            float(np.mean([y not in MALIGNANT_TYPES for lo, y in zip(low, truths, strict=True) if lo]))
            if any(low)
            else None
        ),
        "found_under_1cm": f"{counts['small']}/{counts['small_total']}",
        f"found_under_1cm_box_at_most_{tight:g}x": counts["small_tight"],
        "found_1cm_or_more": f"{counts['large']}/{counts['large_total']}",
        "false_positive_lesions_per_patient": counts["fp"] / len(reports),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--predictions", type=Path, required=True)
    ap.add_argument("--classifier", type=Path, default=None, help="default: the one the reports name")
    ap.add_argument("--baseline-threshold", type=float, required=True)
    ap.add_argument("--baseline-triage", type=float, required=True)
    ap.add_argument("--baseline-verifier", type=Path, default=None)
    ap.add_argument("--verifier", type=Path, required=True)
    ap.add_argument("--candidate-threshold", type=float, required=True)
    ap.add_argument("--candidate-triage", type=float, required=True)
    ap.add_argument("--baseline-triage-detection", type=float, default=None)
    ap.add_argument("--candidate-triage-detection", type=float, default=None)
    ap.add_argument("--tight", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    ds = Dataset(a.data)
    reports = [json.loads((a.predictions / c / "report.json").read_text()) for c in ds.case_ids]
    truths = [true_patient_type(ds.read_info(c).lesions) for c in ds.case_ids]
    classifier = a.classifier or Path(reports[0]["models"]["classifier"]["folder"])
    context = load_patient_context(classifier)
    verified = copy.deepcopy(reports)
    _, verification = rerun_stages(ds, a.predictions, verified, None, a.verifier)
    baseline_verification = None
    if a.baseline_verifier is not None:
        _, baseline_verification = rerun_stages(ds, a.predictions, reports, None, a.baseline_verifier)
    result = {
        "data": str(a.data),
        "patients": len(truths),
        "classifier": str(classifier),
        "baseline_verifier": baseline_verification,
        "verifier": verification,
        "baseline": measure(
            ds,
            reports,
            truths,
            a.baseline_threshold,
            a.baseline_triage,
            context,
            a.tight,
            a.baseline_triage_detection,
        ),
        "candidate": measure(
            ds,
            verified,
            truths,
            a.candidate_threshold,
            a.candidate_triage,
            context,
            a.tight,
            a.candidate_triage_detection,
        ),
    }
    emit(result, a.out)


if __name__ == "__main__":
    main()
