"""Lesion detection per study, as the paper counts it: a lesion is found when any phase's box hits it.

``benchmarks/detection.py accuracy`` judges each phase volume alone (one phase = one scan, the detector
without the rest of the pipeline). This script judges what the whole system reports: every-candidate
diagnose runs (``liaids evaluate DATA -o OUT --weights DETECTOR_COPY``, a detector folder without
``operating_point`` and ``verifier.json``, so that no candidate is cut), each lesion re-scored with the
three-phase verifier as the pipeline does (``--verifier``, as ``benchmarks/operating_points.py``), one
study = one scan, hit by the paper's rule (IoU > 0.3 or IoM > 0.5) in any phase, false positives counted
per study. Reported: recall at any score, at 1 and 2 false positives per study and at the operating point
(``--threshold``, default: the detector's ``operating_point.score`` when ``--verifier`` names a detector
folder), overall and under / from 1 cm, and the FROC.

Run:
  .venv/bin/python benchmarks/study_detection.py --data DATA --predictions OUT/predictions \\
      --verifier src/liaids/weights/detector_cswin3d_small [--threshold T] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _report import emit
from operating_points import rerun_stages

from liaids.dataset import Dataset
from liaids.evaluate.cohort import match_case, parse_report, read_truth
from liaids.evaluate.detection import froc, lesion_recall, recall_at_fp_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument(
        "--predictions", type=Path, required=True, help="every-candidate runs, PRED/CASE/report.json"
    )
    ap.add_argument("--verifier", type=Path, default=None, help="folder with verifier.json to re-score with")
    ap.add_argument("--threshold", type=float, default=None, help="operating point on the (verified) score")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    ds = Dataset(a.data)
    reports = [json.loads((a.predictions / c / "report.json").read_text()) for c in ds.case_ids]
    _, verification = rerun_stages(ds, a.predictions, reports, None, a.verifier)
    threshold = a.threshold
    if threshold is None and a.verifier is not None and (a.verifier / "config.json").is_file():
        point = json.loads((a.verifier / "config.json").read_text()).get("operating_point") or {}
        threshold = point.get("score")
    cases = [(read_truth(ds, c), parse_report(r, c)) for c, r in zip(ds.case_ids, reports, strict=True)]
    scans = [match_case(truth, prediction).scan for truth, prediction in cases]
    result = {
        "data": str(a.data),
        "predictions": str(a.predictions),
        "verifier": verification,
        "scan_unit": "one study (three phases); a lesion is found when a box of any phase hits it",
        "studies": len(scans),
        "lesions": sum(len(s.lesions) for s in scans),
        "candidates": sum(len(r["lesions"]) for r in reports),
        "recall_any_score": lesion_recall(scans),
        "recall_at_1fp": recall_at_fp_rate(scans, 1.0),
        "recall_at_2fp": recall_at_fp_rate(scans, 2.0),
        "froc": {name: curve.as_dict() for name, curve in froc(scans).items()},
    }
    if threshold is not None:
        kept = [match_case(truth, prediction, score_threshold=threshold).scan for truth, prediction in cases]
        outcomes = [d.outcome for s in kept for d in s.detections]
        result["operating_point"] = {
            "threshold": threshold,
            "recall": lesion_recall(kept),
            "true_positive_lesions": outcomes.count("TP"),
            "false_positive_lesions": outcomes.count("FP"),
            "false_positives_per_study": outcomes.count("FP") / len(kept),
        }
    emit(result, a.out)


if __name__ == "__main__":
    main()
