"""Liver segmentation: accuracy on held-out phantom cases and on real CT, and speed on one volume.

Accuracy (issue 3): mean liver Dice on phantom cases of a profile not used in training (target >= 0.97),
and liver Dice on ircadb-17 (portal venous, real, never used in training; goal >= 0.90).
Speed: seconds and peak memory to segment one 512 x 512 x 64 volume with `small` (target <= 5 s).

Run:
  .venv/bin/python benchmarks/segmentation.py accuracy --data DATASET [--weights DIR] [--out JSON]
  .venv/bin/python benchmarks/segmentation.py ircadb [--shared ../shared/data] [--weights DIR]
  .venv/bin/python benchmarks/segmentation.py speed [--weights DIR]
  (each takes --no-refine: the segmentation network alone, without the weights' refinement/ stage)
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
from _report import emit

from liaids.codes import PHASES
from liaids.dataset import Dataset
from liaids.evaluate.segmentation import label_metrics, mask_metrics
from liaids.segmentation.predictor import LiverSegmenter
from liaids.types import Volume


def _summary(rows: list[dict], key: str) -> dict[str, float]:
    vals = np.array([r[key] for r in rows], float)
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return {"mean": float("nan"), "n": 0}
    return {
        "mean": round(float(vals.mean()), 4),
        "sd": round(float(vals.std()), 4),
        "min": round(float(vals.min()), 4),
        "n": len(vals),
    }


def accuracy(data: Path, weights: Path | None, phases: list[str], refine: bool = True) -> dict:
    seg = LiverSegmenter.load(weights, refine=refine)
    ds = Dataset(data)
    rows = []
    for case_id in ds.case_ids:
        case = ds.load_case(case_id)
        for p in phases:
            truth = case.liver[p].array.astype(np.uint8) + (case.lesions[p].array > 0)
            pred = seg.segment(case.study[p]).array
            m = label_metrics(pred, truth, case.study[p].spacing_kji)
            rows.append(
                {
                    "case": case_id,
                    "phase": p,
                    **{f"liver_{k}": v for k, v in m["liver"].items()},
                    **{f"lesion_{k}": v for k, v in m["lesion"].items()},
                }
            )
    return {
        "data": str(data),
        "dataset": ds.meta.get("name"),
        "volumes": len(rows),
        "refinement": seg.refiner is not None,
        **{k: _summary(rows, k) for k in ("liver_dice", "liver_hd95_mm", "liver_asd_mm", "lesion_dice")},
        "per_volume": rows,
    }


def ircadb(shared: Path, weights: Path | None, refine: bool = True) -> dict:
    from liaids.io import read_dicom_series

    root = shared / "ircadb-17"
    ct = read_dicom_series(root / "PATIENT_DICOM")
    liver = read_dicom_series(root / "MASKS_DICOM" / "liver").array > 0
    tumours = (read_dicom_series(root / "MASKS_DICOM" / "livertumor1").array > 0) | (
        read_dicom_series(root / "MASKS_DICOM" / "livertumor2").array > 0
    )
    t0 = time.perf_counter()
    seg = LiverSegmenter.load(weights, refine=refine)
    pred = seg.segment(ct).array
    seconds = time.perf_counter() - t0
    return {
        "case": "3D-IRCADb-01 patient 17 (portal venous, real)",
        "refinement": seg.refiner is not None,
        "seconds": round(seconds, 2),
        "liver": mask_metrics(pred >= 1, liver | tumours, ct.spacing_kji),
        "tumours_as_lesion": mask_metrics(pred == 2, tumours, ct.spacing_kji),
        "predicted_liver_ml": round(float((pred >= 1).sum() * np.prod(ct.spacing) / 1000), 1),
        "true_liver_ml": round(float((liver | tumours).sum() * np.prod(ct.spacing) / 1000), 1),
    }


def speed(weights: Path | None, repeats: int, refine: bool = True) -> dict:
    from liaids.phantom.profiles import load_profile
    from liaids.phantom.synthesize import synthesize_case

    # A real-sized volume: 512 x 512 x 64 phantom slices (5 mm).
    case = synthesize_case(load_profile("qzh"), 300, 0)
    arr = case.study["PV"].array
    k = arr.shape[0]
    arr = arr[:64] if k >= 64 else np.concatenate([arr, np.full((64 - k, 512, 512), -1000, arr.dtype)])
    vol = Volume(arr, case.study["PV"].spacing, case.study["PV"].origin)
    seg = LiverSegmenter.load(weights, refine=refine)
    seg.segment(vol)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        seg.segment(vol)
        times.append(time.perf_counter() - t0)
    return {
        "shape_kji": list(vol.shape),
        "refinement": seg.refiner is not None,
        "seconds_median": round(float(np.median(times)), 2),
        "seconds_max": round(max(times), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["accuracy", "ircadb", "speed"])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--no-refine", action="store_true", help="leave out the weights' boundary refinement stage, if any"
    )
    a = ap.parse_args()
    if a.what == "accuracy":
        result = accuracy(a.data, a.weights, a.phases.split(","), not a.no_refine)
    elif a.what == "ircadb":
        result = ircadb(a.shared, a.weights, not a.no_refine)
    else:
        result = speed(a.weights, a.repeats, not a.no_refine)
    emit(result, a.out, {k: v for k, v in result.items() if k != "per_volume"})


if __name__ == "__main__":
    main()
