"""Lesion detection evaluation: 3D box overlap, the paper's hit rule, per-scan matching, recall and FROC.

Boxes are numpy arrays ``[N, 6]`` = ``[i0, j0, k0, i1, j1, k1]`` of half-open voxel indices (the box covers
``i0 <= i < i1`` and so on; ``i`` is the column, ``j`` the row, ``k`` the slice, as in
:mod:`liaids.types`). Its volume is ``(i1 - i0) (j1 - j0) (k1 - k0)`` voxels.

Hit rule (paper, Methods): a detection finds a lesion when their IoU is greater than 0.3 or their IoM
(intersection over the volume of the smaller box) is greater than 0.5.

Counting (matching one scan, :func:`match_scan`):

* a detection that hits any ground-truth lesion is a true positive, otherwise a false positive;
  several detections on one lesion are all true positives (none is a false positive);
* a lesion counts once: it is detected when at least one detection with ``score >= threshold`` hits it;
* nothing is dropped: every lesion (missed ones included) and every detection (false positives and those
  below the threshold included) gets a record, ready to be written as one CSV row.

FROC (:func:`froc`): the curve is swept over the score thresholds; at threshold ``t`` sensitivity is the
share of lesions whose best hitting detection scores ``>= t`` and the false-positive rate is the number of
non-hitting detections scoring ``>= t`` divided by the number of scans. The thresholds are the distinct
values among the false positives' scores and the lesions' best scores, followed by the point (0, 0). The
sensitivity at a given FP rate is the linear interpolation (``numpy.interp``) of this curve ordered by FP
rate; rates beyond its largest FP rate take its last sensitivity. This is exactly MONAI's
``compute_froc_curve_data`` + ``compute_froc_score`` (CAMELYON16 convention) when MONAI is given ``0``
as the probability of a missed lesion (what its ``compute_fp_tp_probs`` does) and at least one such 0 exists
(MONAI skips its lowest threshold, meant to be that placeholder), with detection scores above 0. The
competition performance metric (CPM) is the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FP per scan.
False positives are not split by size: the size strata share the false-positive axis of all lesions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from liaids.codes import SMALL_LESION_MM
from liaids.errors import EvaluationInputError
from liaids.evaluate.statistics import proportion_ci

#: False positives per scan at which FROC sensitivities are reported (their mean is the CPM).
FROC_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

#: Size strata by lesion diameter (paper: lesions smaller than 1 cm and the others).
SMALL, LARGE = "<10mm", ">=10mm"
SIZE_STRATA: tuple[str, ...] = (SMALL, LARGE)
ALL = "all"


def _boxes(boxes: npt.ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=float)
    if arr.size == 0:
        return np.zeros((0, 6))
    if arr.ndim != 2 or arr.shape[1] != 6:
        raise EvaluationInputError(
            f"{name} must be an [N, 6] array of [i0, j0, k0, i1, j1, k1], got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr[:, 3:] < arr[:, :3]):
        raise EvaluationInputError(f"{name} holds non-finite values or a box with an end before its start")
    return arr


def box_volume(boxes: npt.ArrayLike) -> np.ndarray:
    """Volume in voxels of each box ``[N, 6]`` -> ``[N]``."""
    b = _boxes(boxes, "boxes")
    return np.prod(b[:, 3:] - b[:, :3], axis=1)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo = np.maximum(a[:, None, :3], b[None, :, :3])
    hi = np.minimum(a[:, None, 3:], b[None, :, 3:])
    return np.prod(np.clip(hi - lo, 0.0, None), axis=2)


def box_iou_3d(a: npt.ArrayLike, b: npt.ArrayLike) -> np.ndarray:
    """Intersection over union of every pair of boxes.

    Args:
        a: ``[N, 6]`` boxes.
        b: ``[M, 6]`` boxes.

    Returns:
        ``[N, M]``; 0 where the union is empty (two empty boxes).
    """
    a, b = _boxes(a, "a"), _boxes(b, "b")
    inter = _intersection(a, b)
    union = box_volume(a)[:, None] + box_volume(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_iom_3d(a: npt.ArrayLike, b: npt.ArrayLike) -> np.ndarray:
    """Intersection over the volume of the smaller box of every pair ("intersection over minimum").

    Args:
        a: ``[N, 6]`` boxes.
        b: ``[M, 6]`` boxes.

    Returns:
        ``[N, M]``; 0 where the smaller box is empty. 1 whenever one box lies inside the other.
    """
    a, b = _boxes(a, "a"), _boxes(b, "b")
    inter = _intersection(a, b)
    smaller = np.minimum(box_volume(a)[:, None], box_volume(b)[None, :])
    return np.divide(inter, smaller, out=np.zeros_like(inter), where=smaller > 0)


def is_hit(
    pred_boxes: npt.ArrayLike, gt_boxes: npt.ArrayLike, iou_threshold: float = 0.3, iom_threshold: float = 0.5
) -> np.ndarray:
    """The paper's hit rule: ``IoU > iou_threshold`` or ``IoM > iom_threshold`` (both strict).

    Args:
        pred_boxes: ``[N, 6]`` detections.
        gt_boxes: ``[M, 6]`` ground-truth lesions.
        iou_threshold, iom_threshold: paper values 0.3 and 0.5.

    Returns:
        boolean ``[N, M]``.
    """
    return (box_iou_3d(pred_boxes, gt_boxes) > iou_threshold) | (
        box_iom_3d(pred_boxes, gt_boxes) > iom_threshold
    )


def box_diameter_mm(boxes: npt.ArrayLike, spacing: Sequence[float]) -> np.ndarray:
    """Largest in-plane side of each box in mm, a stand-in for the axial lesion diameter.

    Prefer a diameter measured on the mask when there is one; a box overestimates nothing but may
    underestimate an oblique lesion's longest axis.

    Args:
        boxes: ``[N, 6]``.
        spacing: voxel size in mm along ``(i, j, k)`` (:attr:`liaids.types.Volume.spacing`).

    Returns:
        ``[N]`` diameters in mm.
    """
    b = _boxes(boxes, "boxes")
    s = np.asarray(spacing, dtype=float)
    if s.shape != (3,) or np.any(s <= 0):
        raise EvaluationInputError(f"spacing must be three positive numbers (i, j, k), got {spacing}")
    extent = (b[:, 3:] - b[:, :3]) * s
    return np.max(extent[:, :2], axis=1)


def size_stratum(diameter_mm: float, cutoff_mm: float = SMALL_LESION_MM) -> str:
    """``"<10mm"`` below ``cutoff_mm``, ``">=10mm"`` otherwise."""
    return SMALL if diameter_mm < cutoff_mm else LARGE


@dataclass(frozen=True)
class LesionRecord:
    """One ground-truth lesion of one scan, detected or not.

    Attributes:
        scan_id: scan it belongs to.
        lesion_index: row in the scan's ground-truth boxes.
        diameter_mm: lesion diameter.
        size_stratum: ``"<10mm"`` or ``">=10mm"``.
        detected: hit by a detection with ``score >= score_threshold``.
        best_score: highest score among all detections hitting it, whatever the threshold (NaN if none);
            the lesion is detected at any threshold up to this value.
        matched_detection: index of that detection, -1 if none.
        iou, iom: overlap with that detection (NaN if none).
    """

    scan_id: str
    lesion_index: int
    diameter_mm: float
    size_stratum: str
    detected: bool
    best_score: float
    matched_detection: int
    iou: float
    iom: float


@dataclass(frozen=True)
class DetectionRecord:
    """One detection of one scan, true or false positive, above the threshold or not.

    Attributes:
        scan_id: scan it belongs to.
        detection_index: row in the scan's predicted boxes.
        score: detection score.
        counted: ``score >= score_threshold``.
        hit: hits at least one ground-truth lesion (independent of the threshold).
        outcome: ``"TP"`` or ``"FP"`` when counted, ``"below_threshold"`` otherwise.
        matched_lesion: the hit lesion with the highest IoU (ties: lowest index), -1 if none.
        iou, iom: overlap with that lesion (NaN if none).
    """

    scan_id: str
    detection_index: int
    score: float
    counted: bool
    hit: bool
    outcome: str
    matched_lesion: int
    iou: float
    iom: float


@dataclass(frozen=True)
class ScanMatch:
    """Records of one scan: every lesion and every detection."""

    scan_id: str
    lesions: tuple[LesionRecord, ...]
    detections: tuple[DetectionRecord, ...]


def match_scan(
    scan_id: str,
    pred_boxes: npt.ArrayLike,
    pred_scores: npt.ArrayLike,
    gt_boxes: npt.ArrayLike,
    gt_diameters_mm: npt.ArrayLike,
    *,
    score_threshold: float = 0.0,
    iou_threshold: float = 0.3,
    iom_threshold: float = 0.5,
    size_cutoff_mm: float = SMALL_LESION_MM,
) -> ScanMatch:
    """Match the detections of one scan to its ground-truth lesions with the paper's hit rule.

    Args:
        scan_id: identifier copied into every record.
        pred_boxes: ``[N, 6]`` detections (any N, 0 included).
        pred_scores: ``[N]`` detection scores (finite).
        gt_boxes: ``[M, 6]`` ground-truth lesion boxes (any M, 0 included).
        gt_diameters_mm: ``[M]`` lesion diameters, e.g. from :func:`box_diameter_mm`.
        score_threshold: a detection counts when ``score >= score_threshold``.
        iou_threshold, iom_threshold: hit rule, see :func:`is_hit`.
        size_cutoff_mm: boundary of the size strata.

    Returns:
        :class:`ScanMatch` with M lesion records and N detection records.
    """
    pred = _boxes(pred_boxes, "pred_boxes")
    gt = _boxes(gt_boxes, "gt_boxes")
    scores = np.asarray(pred_scores, dtype=float).reshape(-1)
    diam = np.asarray(gt_diameters_mm, dtype=float).reshape(-1)
    if scores.shape != (len(pred),) or not np.all(np.isfinite(scores)):
        raise EvaluationInputError(f"scan {scan_id}: need one finite score per detection ({len(pred)})")
    if diam.shape != (len(gt),) or not np.all(np.isfinite(diam)):
        raise EvaluationInputError(f"scan {scan_id}: need one finite diameter per lesion ({len(gt)})")
    iou = box_iou_3d(pred, gt)
    iom = box_iom_3d(pred, gt)
    hit = (iou > iou_threshold) | (iom > iom_threshold)

    lesions = []
    for m in range(len(gt)):
        hitters = np.flatnonzero(hit[:, m])
        if hitters.size:
            d = int(hitters[np.argmax(scores[hitters])])  # argmax keeps the lowest index on ties
            best, ov_iou, ov_iom = float(scores[d]), float(iou[d, m]), float(iom[d, m])
        else:
            d, best, ov_iou, ov_iom = -1, math.nan, math.nan, math.nan
        lesions.append(
            LesionRecord(
                scan_id=scan_id,
                lesion_index=m,
                diameter_mm=float(diam[m]),
                size_stratum=size_stratum(float(diam[m]), size_cutoff_mm),
                detected=bool(hitters.size) and best >= score_threshold,
                best_score=best,
                matched_detection=d,
                iou=ov_iou,
                iom=ov_iom,
            )
        )
    detections = []
    for n in range(len(pred)):
        counted = bool(scores[n] >= score_threshold)
        is_tp = bool(hit[n].any())
        if is_tp:
            m = int(np.argmax(np.where(hit[n], iou[n], -1.0)))
            ov_iou, ov_iom = float(iou[n, m]), float(iom[n, m])
        else:
            m, ov_iou, ov_iom = -1, math.nan, math.nan
        detections.append(
            DetectionRecord(
                scan_id=scan_id,
                detection_index=n,
                score=float(scores[n]),
                counted=counted,
                hit=is_tp,
                outcome=("TP" if is_tp else "FP") if counted else "below_threshold",
                matched_lesion=m,
                iou=ov_iou,
                iom=ov_iom,
            )
        )
    return ScanMatch(scan_id, tuple(lesions), tuple(detections))


def records_to_rows(matches: Sequence[ScanMatch]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Flatten scan matches into CSV-ready rows.

    Args:
        matches: one :class:`ScanMatch` per scan.

    Returns:
        ``(lesion_rows, detection_rows)``: one dict per lesion and per detection, keys = record fields.
    """
    lesion_rows = [asdict(r) for m in matches for r in m.lesions]
    detection_rows = [asdict(r) for m in matches for r in m.detections]
    return lesion_rows, detection_rows


def _pool(matches: Sequence[ScanMatch]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Lesion best scores (-inf when never hit), strata, detection scores, hit flags, number of scans."""
    if not matches:
        raise EvaluationInputError("detection statistics need at least one scan")
    best = np.array([r.best_score for m in matches for r in m.lesions], dtype=float)
    best = np.where(np.isnan(best), -np.inf, best)
    strata = np.array([r.size_stratum for m in matches for r in m.lesions], dtype=object)
    scores = np.array([d.score for m in matches for d in m.detections], dtype=float)
    hits = np.array([d.hit for m in matches for d in m.detections], dtype=bool)
    return best, strata, scores, hits, len(matches)


def _stratum_masks(strata: np.ndarray) -> dict[str, np.ndarray]:
    return {ALL: np.ones(len(strata), bool), SMALL: strata == SMALL, LARGE: strata == LARGE}


def _recall_entry(detected: int, total: int, confidence: float) -> dict[str, float]:
    lo, hi = proportion_ci(detected, total, confidence)
    return {
        "recall": detected / total if total else math.nan,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "detected": detected,
        "lesions": total,
    }


def lesion_recall(matches: Sequence[ScanMatch], confidence: float = 0.95) -> dict[str, dict[str, float]]:
    """Share of lesions detected (at the threshold used in :func:`match_scan`), overall and by size.

    Args:
        matches: one :class:`ScanMatch` per scan.
        confidence: level of the Wilson intervals.

    Returns:
        ``{"all" | "<10mm" | ">=10mm": {"recall", "ci_low", "ci_high", "detected", "lesions"}}``.
    """
    if not matches:
        raise EvaluationInputError("detection statistics need at least one scan")
    detected = np.array([r.detected for m in matches for r in m.lesions], dtype=bool)
    strata = np.array([r.size_stratum for m in matches for r in m.lesions], dtype=object)
    return {
        name: _recall_entry(int(detected[mask].sum()), int(mask.sum()), confidence)
        for name, mask in _stratum_masks(strata).items()
    }


def recall_at_fp_rate(
    matches: Sequence[ScanMatch], max_fp_per_scan: float, confidence: float = 0.95
) -> dict[str, Any]:
    """Recall at the lowest score threshold whose mean number of false positives per scan is at most a bound.

    Only observed scores are candidate thresholds (the false-positive count changes only there); if even the
    highest one gives too many false positives, the threshold is ``inf`` and nothing is detected.

    Args:
        matches: one :class:`ScanMatch` per scan (the matching threshold is ignored: every detection counts).
        max_fp_per_scan: the bound X.
        confidence: level of the Wilson intervals.

    Returns:
        ``{"threshold", "fp_per_scan", "max_fp_per_scan", "all" | "<10mm" | ">=10mm": recall entry}``.
    """
    best, strata, scores, hits, n_scans = _pool(matches)
    fp_sorted = np.sort(scores[~hits])
    candidates = np.r_[np.unique(scores), np.inf]
    fp_rate = (len(fp_sorted) - np.searchsorted(fp_sorted, candidates, side="left")) / n_scans
    threshold = float(candidates[np.argmax(fp_rate <= max_fp_per_scan + 1e-12)])  # fp_rate falls with t
    out: dict[str, Any] = {
        "threshold": threshold,
        "fp_per_scan": float((fp_sorted >= threshold).sum() / n_scans),
        "max_fp_per_scan": float(max_fp_per_scan),
    }
    for name, mask in _stratum_masks(strata).items():
        out[name] = _recall_entry(int((best[mask] >= threshold).sum()), int(mask.sum()), confidence)
    return out


@dataclass(frozen=True)
class FrocCurve:
    """One FROC curve and its summary (see the module docstring for the convention).

    Attributes:
        fp_per_scan: false positives per scan at each threshold (decreasing, ends with 0).
        sensitivity: lesion sensitivity at each threshold (ends with 0).
        thresholds: the score thresholds (increasing, ends with ``inf`` for the (0, 0) point).
        fp_rates: FP-per-scan values at which sensitivities are read.
        sensitivities: interpolated sensitivity at each of ``fp_rates``.
        cpm: mean of ``sensitivities``.
        n_lesions, n_scans: counts behind the curve.
    """

    fp_per_scan: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray
    fp_rates: tuple[float, ...]
    sensitivities: np.ndarray
    cpm: float
    n_lesions: int
    n_scans: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the full curve)."""
        return {
            "n_lesions": self.n_lesions,
            "n_scans": self.n_scans,
            "sensitivity_at": {
                f"{r:g}": float(s) for r, s in zip(self.fp_rates, self.sensitivities, strict=True)
            },
            "cpm": self.cpm,
        }


def froc_curve(
    lesion_best_scores: npt.ArrayLike,
    fp_scores: npt.ArrayLike,
    n_scans: int,
    fp_rates: Sequence[float] = FROC_FP_RATES,
) -> FrocCurve:
    """FROC curve from per-lesion best scores and false-positive scores.

    Args:
        lesion_best_scores: per lesion, the highest score of a detection hitting it; ``-inf`` or NaN when
            no detection hits it.
        fp_scores: scores of the detections hitting no lesion.
        n_scans: number of scans (those without lesions or detections included).
        fp_rates: FP-per-scan values at which to read the curve.

    Returns:
        :class:`FrocCurve`; sensitivities are NaN when there are no lesions.
    """
    best = np.asarray(lesion_best_scores, dtype=float).reshape(-1)
    best = np.where(np.isnan(best), -np.inf, best)
    fps = np.sort(np.asarray(fp_scores, dtype=float).reshape(-1))
    if n_scans < 1:
        raise EvaluationInputError(f"n_scans must be positive, got {n_scans}")
    thresholds = np.unique(np.r_[fps, best[np.isfinite(best)]])
    best_sorted = np.sort(best)
    n_fp = len(fps) - np.searchsorted(fps, thresholds, side="left")
    n_tp = len(best) - np.searchsorted(best_sorted, thresholds, side="left")
    fp_per_scan = np.r_[n_fp, 0] / float(n_scans)
    sensitivity = np.r_[n_tp, 0] / len(best) if len(best) else np.full(len(thresholds) + 1, np.nan)
    rates = tuple(float(r) for r in fp_rates)
    at = np.interp(rates, fp_per_scan[::-1], sensitivity[::-1])
    return FrocCurve(
        fp_per_scan=fp_per_scan,
        sensitivity=sensitivity,
        thresholds=np.r_[thresholds, np.inf],
        fp_rates=rates,
        sensitivities=at,
        cpm=float(np.mean(at)),
        n_lesions=len(best),
        n_scans=int(n_scans),
    )


def froc(matches: Sequence[ScanMatch], fp_rates: Sequence[float] = FROC_FP_RATES) -> dict[str, FrocCurve]:
    """FROC curves over all scans, overall and per size stratum.

    Args:
        matches: one :class:`ScanMatch` per scan (the matching threshold is ignored: every detection counts).
        fp_rates: FP-per-scan values at which to read the curves (default 1/8 ... 8).

    Returns:
        ``{"all" | "<10mm" | ">=10mm": FrocCurve}``; every stratum shares the false positives of all scans.
    """
    best, strata, scores, hits, n_scans = _pool(matches)
    return {
        name: froc_curve(best[mask], scores[~hits], n_scans, fp_rates)
        for name, mask in _stratum_masks(strata).items()
    }
