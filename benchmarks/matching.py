"""Cross-phase matching in the pipeline: do a lesion's per-phase boxes show the same true lesion?

For every reported lesion (at or above a detection score) of every case, the true lesion it is about is
the one its per-phase boxes hit most often (paper's hit rule, in each phase's own lesion mask). Each box
the detector *found* in a phase (not transferred) is then right when it hits that lesion in that phase.
A wrong found box means the matching joined a different candidate to the lesion, and the classifier sees
a patch of something else in that phase.

Also reported: whether a box's size relative to the lesion's other found boxes would tell wrong from
right (a candidate rule; none is applied by the pipeline).

Input: a dataset and the diagnose reports of its cases (``liaids evaluate DATA -o OUT`` writes them to
``OUT/predictions/CASE/report.json``).

Run:
  .venv/bin/python benchmarks/matching.py --data data/val39 --predictions val39_eval/predictions \
      [--min-score 0.887] [--out benchmarks/results/matching_val39.json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from _report import emit

from liaids.codes import PHASES
from liaids.dataset import Dataset
from liaids.evaluate.cohort import read_truth
from liaids.evaluate.detection import is_hit


def lesion_rows(data: Path, predictions: Path, min_score: float) -> list[dict]:
    """One row per found per-phase box of every reported lesion with a known true lesion."""
    ds = Dataset(data)
    rows = []
    for case_id in ds.case_ids:
        report = json.loads((predictions / case_id / "report.json").read_text())
        truth = read_truth(ds, case_id).lesions
        for lesion in report["lesions"]:
            if lesion["detection_score"] < min_score:
                continue
            phases = lesion["phases"]
            hits: dict[str, set[int]] = {}
            for p in PHASES:
                visible = [t for t in truth if t.boxes[p] is not None]
                hit = is_hit(np.array([phases[p]["bbox_ijk"]]), np.array([t.boxes[p] for t in visible]))
                hits[p] = {t.lesion_id for t, h in zip(visible, hit.reshape(-1), strict=True) if h}
            votes = Counter(i for p in PHASES for i in hits[p])
            if not votes:
                continue  # a false positive: no true lesion to be consistent with
            lesion_id = votes.most_common(1)[0][0]
            found = [p for p in PHASES if phases[p]["found"]]
            for p in found:
                others = [phases[q]["volume_ml"] for q in found if q != p]
                rows.append(
                    {
                        "case": case_id,
                        "lesion": lesion["id"],
                        "phase": p,
                        "right": lesion_id in hits[p],
                        "volume_ratio": phases[p]["volume_ml"] / float(np.median(others)) if others else None,
                    }
                )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--predictions", type=Path, required=True)
    ap.add_argument("--min-score", type=float, default=0.0, help="the detection operating point")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rows = lesion_rows(a.data, a.predictions, a.min_score)
    right = [r for r in rows if r["right"]]
    wrong = [r for r in rows if not r["right"]]
    ratio_rule = {}
    for limit in (0.1, 0.25, 0.5):
        ratio_rule[f"ratio_below_{limit}"] = {
            side: sum(r["volume_ratio"] is not None and r["volume_ratio"] < limit for r in group)
            for side, group in (("wrong", wrong), ("right", right))
        }
    result = {
        "data": str(a.data),
        "predictions": str(a.predictions),
        "min_score": a.min_score,
        "found_boxes": len(rows),
        "right": len(right),
        "wrong": len(wrong),
        "size_rule": ratio_rule,
        "wrong_boxes": wrong,
    }
    emit(result, a.out)


if __name__ == "__main__":
    main()
