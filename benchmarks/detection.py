"""Lesion detection: recall and FROC on held-out phantom cases and on real CT, and speed on one volume.

Accuracy (issue 4): every phase volume of every case of a dataset is one scan; ground truth is the box of each
lesion instance in that phase; a detection hits with the paper's rule (IoU > 0.3 or IoM > 0.5). Reported:
recall at <= 2 false positives per scan (overall and < 1 cm vs the rest; targets >= 0.965 and >= 0.93), FROC
at 1/8 ... 8 FP per scan, and how the boxes of the lesions found at 2 FP per scan differ from the true boxes
(the box error the classifier meets). The liver mask is the ground truth (``--liver truth``) or segmented
with the shipped model (``--liver model``, the pipeline's setting).
ircadb: the real portal venous CT of 3D-IRCADb-01 patient 17; both tumours should be found.
Speed: seconds and peak memory to detect on one 512 x 512 x 64 volume with ``small`` (target <= 10 s), the
liver mask given (segmentation is timed by benchmarks/segmentation.py) and with segmentation included.

Run:
  .venv/bin/python benchmarks/detection.py accuracy --data DATASET [--weights DIR] [--liver truth|model]
  .venv/bin/python benchmarks/detection.py ircadb [--shared ../shared/data] [--weights DIR]
  .venv/bin/python benchmarks/detection.py speed [--weights DIR]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
from _report import emit
from scipy import ndimage

from liaids.codes import PHASES
from liaids.dataset import Dataset
from liaids.detection.predictor import LesionDetector
from liaids.evaluate.detection import (
    ScanMatch,
    froc,
    lesion_recall,
    match_scan,
    recall_at_fp_rate,
    records_to_rows,
)
from liaids.types import Volume


def truth_boxes(labels: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Lesion ids and half-open ``[i0, j0, k0, i1, j1, k1]`` boxes of an instance mask ``(K, J, I)``."""
    ids, boxes = [], []
    for n, sl in enumerate(ndimage.find_objects(labels.astype(np.int32)), start=1):
        if sl is None:
            continue
        ids.append(n)
        boxes.append([sl[2].start, sl[1].start, sl[0].start, sl[2].stop, sl[1].stop, sl[0].stop])
    return ids, np.asarray(boxes, int).reshape(-1, 6)


def _summarise(matches: list, seconds: list[float]) -> dict:
    curves = froc(matches)
    return {
        "scans": len(matches),
        "recall_any_score": lesion_recall(matches),
        "recall_at_2fp": recall_at_fp_rate(matches, 2.0),
        "recall_at_1fp": recall_at_fp_rate(matches, 1.0),
        "froc": {name: curve.as_dict() for name, curve in curves.items()},
        "seconds_per_scan": round(float(np.mean(seconds)), 2) if seconds else None,
    }


def box_error(scans: list[tuple[np.ndarray, np.ndarray, ScanMatch]], threshold: float) -> dict:
    """How the boxes of detected lesions compare with the true boxes, by size stratum.

    Every true lesion whose best hitting detection scores at least ``threshold`` counts once. Per axis
    (i, j, k): the median and SD of log(detected size / true size), and the median absolute centre shift as
    a share of the true size. The classifier cuts its patches from these boxes; ``samples`` lists each
    lesion's ``[log size ratio i, j, k, signed centre shift / true size i, j, k, diameter mm]``, which
    ``liaids train classify --box-errors`` draws its training jitter from
    (``liaids.classification.patches.BoxErrors``).
    """
    rows: dict[str, list[np.ndarray]] = {}
    samples = []
    for pred, gt, match in scans:
        for les in match.lesions:
            if les.matched_detection < 0 or not les.best_score >= threshold:
                continue
            g, d = gt[les.lesion_index].astype(float), pred[les.matched_detection].astype(float)
            size = g[3:] - g[:3]
            shift = ((d[:3] + d[3:]) - (g[:3] + g[3:])) / 2.0 / size
            log_ratio = np.log((d[3:] - d[:3]) / size)
            samples.append([*np.round(log_ratio, 4).tolist(), *np.round(shift, 4).tolist(), les.diameter_mm])
            row = np.concatenate([log_ratio, np.abs(shift)])
            rows.setdefault("all", []).append(row)
            rows.setdefault(les.size_stratum, []).append(row)
    out: dict = {}
    for stratum, values in rows.items():
        v = np.asarray(values)
        out[stratum] = {
            "lesions": len(v),
            "log_size_ratio_median_ijk": np.round(np.median(v[:, :3], axis=0), 3).tolist(),
            "log_size_ratio_sd_ijk": np.round(v[:, :3].std(axis=0), 3).tolist(),
            "centre_shift_median_ijk": np.round(np.median(v[:, 3:], axis=0), 3).tolist(),
        }
    out["threshold"] = threshold
    out["samples"] = samples
    return out


def accuracy(
    data: Path,
    weights: Path | None,
    liver_source: str,
    phases: list[str],
    max_cases: int | None,
    candidate_filter: bool = True,
) -> dict:
    detector = LesionDetector.load(weights, candidate_filter=candidate_filter)
    segmenter = None
    if liver_source == "model":
        from liaids.segmentation.predictor import LiverSegmenter

        segmenter = LiverSegmenter.load()
    ds = Dataset(data)
    matches, seconds, scans = [], [], []
    for case_id in ds.case_ids[:max_cases]:
        case = ds.load_case(case_id)
        diameters = {les.lesion_id: les.diameter_mm for les in case.info.lesions}
        for p in phases:
            volume = case.study[p]
            liver = segmenter.segment(volume) if segmenter is not None else case.liver[p]
            t0 = time.perf_counter()
            found = detector.detect(volume, liver)
            seconds.append(time.perf_counter() - t0)
            ids, gt = truth_boxes(case.lesions[p].array)
            pred = np.asarray([f.bbox_ijk for f in found], int).reshape(-1, 6)
            scores = np.asarray([f.score for f in found], float)
            matches.append(
                match_scan(f"{case_id}/{p}", pred, scores, gt, np.asarray([diameters[i] for i in ids], float))
            )
            scans.append((pred, gt, matches[-1]))
    lesion_rows, detection_rows = records_to_rows(matches)
    summary = _summarise(matches, seconds)
    return {
        "data": str(data),
        "dataset": ds.meta.get("name"),
        "detector": detector.source,
        "liver": liver_source,
        "scan_unit": "one phase volume",
        **summary,
        "box_error_at_2fp": box_error(scans, summary["recall_at_2fp"]["threshold"]),
        "lesions": lesion_rows,
        "detections": detection_rows,
    }


def ircadb(shared: Path, weights: Path | None, candidate_filter: bool = True) -> dict:
    from liaids.io import read_dicom_series
    from liaids.segmentation.predictor import LiverSegmenter

    root = shared / "ircadb-17"
    ct = read_dicom_series(root / "PATIENT_DICOM")
    detector = LesionDetector.load(weights, candidate_filter=candidate_filter)
    out: dict = {"case": "3D-IRCADb-01 patient 17 (portal venous, real)", "detector": detector.source}
    tumours = [read_dicom_series(root / "MASKS_DICOM" / f"livertumor{n}").array > 0 for n in (1, 2)]
    gt = np.stack([truth_boxes(t.astype(np.int16))[1][0] for t in tumours])
    diam = [2 * (float(t.sum() * np.prod(ct.spacing)) * 3 / (4 * np.pi)) ** (1 / 3) for t in tumours]
    for source in ("truth", "model"):
        if source == "truth":
            liver = read_dicom_series(root / "MASKS_DICOM" / "liver").array > 0
            liver = liver | tumours[0] | tumours[1]
        else:
            liver = LiverSegmenter.load().segment(ct).array > 0
        t0 = time.perf_counter()
        found = detector.detect(ct, liver)
        seconds = time.perf_counter() - t0
        pred = np.asarray([f.bbox_ijk for f in found], int).reshape(-1, 6)
        match = match_scan("ircadb17", pred, [f.score for f in found], gt, diam)
        at2 = recall_at_fp_rate([match], 2.0)
        out[f"liver_{source}"] = {
            "seconds": round(seconds, 2),
            "detections": len(found),
            "tumours_found_any_score": [bool(les.best_score == les.best_score) for les in match.lesions],
            "tumour_best_scores": [les.best_score for les in match.lesions],
            "false_positives_any_score": sum(not d.hit for d in match.detections),
            "false_positives_above_0.5": sum((not d.hit) and d.score >= 0.5 for d in match.detections),
            "at_2fp": {"threshold": at2["threshold"], "recall": at2["all"]["recall"]},
            "boxes": [{"bbox_ijk": f.bbox_ijk, "score": round(f.score, 3)} for f in found],
        }
    out["tumour_diameters_mm"] = [round(d, 1) for d in diam]
    return out


def speed(weights: Path | None, repeats: int, candidate_filter: bool = True) -> dict:
    from liaids.phantom.profiles import load_profile
    from liaids.phantom.synthesize import synthesize_case
    from liaids.segmentation.predictor import LiverSegmenter

    case = synthesize_case(load_profile("qzh"), 300, 0)
    arr, liver = case.study["PV"].array, case.liver["PV"].array
    k = arr.shape[0]
    if k >= 64:
        arr, liver = arr[:64], liver[:64]
    else:
        arr = np.concatenate([arr, np.full((64 - k, 512, 512), -1000, arr.dtype)])
        liver = np.concatenate([liver, np.zeros((64 - k, 512, 512), liver.dtype)])
    vol = Volume(arr, case.study["PV"].spacing, case.study["PV"].origin)
    detector = LesionDetector.load(weights, candidate_filter=candidate_filter)
    segmenter = LiverSegmenter.load()
    detector.detect(vol, liver)  # warm-up
    given, with_seg = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        detector.detect(vol, liver)
        given.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        detector.detect(vol, segmenter.segment(vol))
        with_seg.append(time.perf_counter() - t0)
    return {
        "shape_kji": list(vol.shape),
        "spacing_mm": list(vol.spacing),
        "liver_slices": int(liver.any(axis=(1, 2)).sum()),
        "detector": detector.source,
        "seconds_median_liver_given": round(float(np.median(given)), 2),
        "seconds_median_with_segmentation": round(float(np.median(with_seg)), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["accuracy", "ircadb", "speed"])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--liver", choices=["truth", "model"], default="truth")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--max-cases", type=int, default=None)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-filter", action="store_true", help="ignore the detector's candidate filter")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    use_filter = not a.no_filter
    if a.what == "accuracy":
        result = accuracy(a.data, a.weights, a.liver, a.phases.split(","), a.max_cases, use_filter)
    elif a.what == "ircadb":
        result = ircadb(a.shared, a.weights, use_filter)
    else:
        result = speed(a.weights, a.repeats, use_filter)
    shown = {k: v for k, v in result.items() if k not in ("lesions", "detections")}
    if "box_error_at_2fp" in shown:
        shown["box_error_at_2fp"] = {k: v for k, v in shown["box_error_at_2fp"].items() if k != "samples"}
    emit(result, a.out, shown)


if __name__ == "__main__":
    main()
