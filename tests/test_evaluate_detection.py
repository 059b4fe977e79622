"""Detection evaluation: box overlaps, the hit rule, matching records, recall and FROC against MONAI."""

from __future__ import annotations

import math

import numpy as np
import pytest
from monai.metrics import compute_froc_curve_data, compute_froc_score

from liaids.errors import EvaluationInputError
from liaids.evaluate.detection import (
    FROC_FP_RATES,
    box_diameter_mm,
    box_iom_3d,
    box_iou_3d,
    froc,
    froc_curve,
    is_hit,
    lesion_recall,
    match_scan,
    recall_at_fp_rate,
    records_to_rows,
)

CUBE = [0, 0, 0, 10, 10, 10]  # 1000 voxels


def test_iou_and_iom_hand_computed() -> None:
    others = np.array(
        [
            [5, 0, 0, 15, 10, 10],  # half overlap: 500 / 1500, IoM 0.5
            [2, 2, 2, 4, 4, 4],  # inside: 8 / 1000, IoM 1
            [10, 0, 0, 20, 10, 10],  # touching faces of half-open boxes: no overlap
            [0, 0, 0, 10, 10, 10],  # identical
        ]
    )
    iou = box_iou_3d([CUBE], others)
    iom = box_iom_3d([CUBE], others)
    np.testing.assert_allclose(iou, [[1 / 3, 0.008, 0.0, 1.0]])
    np.testing.assert_allclose(iom, [[0.5, 1.0, 0.0, 1.0]])
    assert box_iou_3d(others, [CUBE]).shape == (4, 1)
    assert box_iou_3d(np.zeros((0, 6)), [CUBE]).shape == (0, 1)


def test_hit_rule_is_strict_on_both_thresholds() -> None:
    line = [0, 0, 0, 10, 1, 1]  # 10 voxels
    gt = np.array(
        [
            [5, 0, 0, 30, 1, 1],  # IoU 5/30 = 0.167, IoM 5/10 = 0.5: not a hit (IoM must exceed 0.5)
            [4, 0, 0, 30, 1, 1],  # IoU 0.2, IoM 0.6: hit by IoM
            [3, 0, 0, 13, 1, 1],  # IoU 7/13 = 0.54: hit by IoU
            [9, 0, 0, 40, 1, 1],  # IoU 1/40, IoM 0.1: miss
        ]
    )
    np.testing.assert_array_equal(is_hit([line], gt), [[False, True, True, False]])
    np.testing.assert_array_equal(is_hit([line], gt, iom_threshold=0.45), [[True, True, True, False]])
    # IoU 1/3 passes 0.3 on its own.
    assert is_hit([CUBE], [[5, 0, 0, 15, 10, 10]], iom_threshold=0.9)[0, 0]


def test_box_diameter_uses_in_plane_extent_in_mm() -> None:
    d = box_diameter_mm([[0, 0, 0, 10, 20, 2], [0, 0, 0, 4, 2, 30]], spacing=(0.7, 0.7, 5.0))
    np.testing.assert_allclose(d, [14.0, 2.8])
    with pytest.raises(EvaluationInputError):
        box_diameter_mm([[0, 0, 0, 1, 1, 1]], spacing=(0.7, 0.0, 5.0))


def _hand_scan():
    gt = np.array([[10, 10, 0, 16, 16, 3], [40, 40, 0, 60, 60, 10], [80, 80, 0, 100, 100, 8]])
    pred = np.array(
        [
            [10, 10, 0, 16, 16, 3],  # P0 on L0, 0.9
            [11, 11, 0, 16, 16, 3],  # P1 on L0 too (duplicate), 0.6
            [200, 200, 0, 210, 210, 5],  # P2 nowhere: false positive, 0.8
            [42, 42, 0, 60, 60, 10],  # P3 on L1 but scored 0.2, below the threshold
        ]
    )
    return match_scan("scan1", pred, [0.9, 0.6, 0.8, 0.2], gt, [6.0, 20.0, 20.0], score_threshold=0.5)


def test_match_scan_keeps_every_lesion_and_detection() -> None:
    m = _hand_scan()
    assert len(m.lesions) == 3 and len(m.detections) == 4
    l0, l1, l2 = m.lesions
    assert l0.detected and l0.best_score == 0.9 and l0.matched_detection == 0 and l0.size_stratum == "<10mm"
    assert (
        not l1.detected and l1.best_score == 0.2 and l1.matched_detection == 3 and l1.size_stratum == ">=10mm"
    )
    assert not l2.detected and math.isnan(l2.best_score) and l2.matched_detection == -1
    assert [d.outcome for d in m.detections] == ["TP", "TP", "FP", "below_threshold"]
    assert m.detections[3].hit and m.detections[3].matched_lesion == 1
    assert m.detections[2].matched_lesion == -1 and math.isnan(m.detections[2].iou)
    lesion_rows, detection_rows = records_to_rows([m])
    assert len(lesion_rows) == 3 and len(detection_rows) == 4
    assert {"scan_id", "detected", "best_score", "size_stratum"} <= set(lesion_rows[0])


def test_match_scan_empty_sides() -> None:
    only_fp = match_scan("a", [CUBE], [0.7], np.zeros((0, 6)), [])
    assert only_fp.lesions == () and only_fp.detections[0].outcome == "FP"
    only_missed = match_scan("b", np.zeros((0, 6)), [], [CUBE], [12.0])
    assert only_missed.detections == () and not only_missed.lesions[0].detected
    with pytest.raises(EvaluationInputError, match="score"):
        match_scan("c", [CUBE], [0.5, 0.6], [CUBE], [12.0])


def test_lesion_recall_overall_and_by_size() -> None:
    empty_scan = match_scan("scan2", np.zeros((0, 6)), [], [CUBE], [8.0])
    r = lesion_recall([_hand_scan(), empty_scan])
    assert (r["all"]["detected"], r["all"]["lesions"]) == (1, 4)
    assert (r["<10mm"]["detected"], r["<10mm"]["lesions"]) == (1, 2)
    assert (r[">=10mm"]["detected"], r[">=10mm"]["lesions"]) == (0, 2)
    assert r["all"]["ci_low"] < 0.25 < r["all"]["ci_high"]


def test_recall_at_fp_rate_picks_lowest_threshold_within_budget() -> None:
    # Scan 1: lesions with best scores 0.9 (small), 0.2 (large), none; FP at 0.8.
    # Scan 2: one small lesion hit at 0.5 and an FP at 0.3.
    scan2 = match_scan("scan2", [CUBE, [50, 50, 0, 60, 60, 5]], [0.5, 0.3], [CUBE], [8.0])
    matches = [_hand_scan(), scan2]
    r = recall_at_fp_rate(matches, max_fp_per_scan=0.5)  # at most one FP in two scans
    assert r["threshold"] == 0.5 and r["fp_per_scan"] == 0.5
    assert r["all"]["detected"] == 2 and r["all"]["lesions"] == 4
    assert r["<10mm"]["recall"] == 1.0
    none_allowed = recall_at_fp_rate(matches, max_fp_per_scan=0.0)
    assert none_allowed["threshold"] == 0.9 and none_allowed["all"]["detected"] == 1
    everything = recall_at_fp_rate(matches, max_fp_per_scan=10.0)
    assert everything["threshold"] == 0.2 and everything["all"]["detected"] == 3


def _monai(best: np.ndarray, fp_scores: np.ndarray, n_scans: int, sentinel: bool = True):
    tp_probs = np.where(np.isfinite(best), best, 0.0)  # MONAI's placeholder for a missed lesion
    fp_probs = np.r_[fp_scores, 0.0] if sentinel else np.asarray(fp_scores, float)
    fps, sens = compute_froc_curve_data(fp_probs, tp_probs, len(best), n_scans)
    return fps, sens, compute_froc_score(fps, sens, eval_thresholds=FROC_FP_RATES)


def test_froc_hand_built_and_against_monai() -> None:
    best = np.array([0.9, 0.6, np.nan])
    fp_scores = np.array([0.7, 0.3])
    curve = froc_curve(best, fp_scores, n_scans=2)
    np.testing.assert_allclose(curve.thresholds, [0.3, 0.6, 0.7, 0.9, np.inf])
    np.testing.assert_allclose(curve.fp_per_scan, [1.0, 0.5, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(curve.sensitivity, [2 / 3, 2 / 3, 1 / 3, 1 / 3, 0.0])
    at = dict(zip(curve.fp_rates, curve.sensitivities, strict=True))
    assert at[0.125] == pytest.approx(1 / 3) and at[0.25] == pytest.approx(1 / 3)
    assert at[1.0] == pytest.approx(2 / 3) and at[8.0] == pytest.approx(2 / 3)
    fps, sens, score = _monai(best, fp_scores, 2, sentinel=False)  # a missed lesion supplies the 0
    np.testing.assert_allclose(curve.fp_per_scan, fps)
    np.testing.assert_allclose(curve.sensitivity, sens)
    assert curve.cpm == pytest.approx(score)


def test_froc_without_missed_lesions_needs_monai_sentinel() -> None:
    best = np.array([0.9, 0.4])
    curve = froc_curve(best, [0.5], n_scans=1)
    fps, sens, score = _monai(best, np.array([0.5]), 1, sentinel=True)
    np.testing.assert_allclose(curve.fp_per_scan, fps)
    np.testing.assert_allclose(curve.sensitivity, sens)
    assert curve.cpm == pytest.approx(score)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_froc_on_random_scans_matches_monai(seed: int) -> None:
    rng = np.random.default_rng(seed)
    matches = []
    for s in range(12):
        n_gt, n_pred = int(rng.integers(0, 5)), int(rng.integers(0, 9))
        lo = rng.integers(0, 80, (n_gt, 3))
        gt = np.c_[lo, lo + rng.integers(2, 20, (n_gt, 3))]
        # Half the detections are jittered copies of lesions, the rest random boxes.
        lo_p = rng.integers(0, 80, (n_pred, 3))
        pred = np.c_[lo_p, lo_p + rng.integers(2, 20, (n_pred, 3))]
        for i in range(min(n_gt, n_pred // 2)):
            pred[i] = gt[i] + rng.integers(-1, 2, 6)
            pred[i, 3:] = np.maximum(pred[i, 3:], pred[i, :3] + 1)
        scores = np.round(rng.uniform(0.05, 1.0, n_pred), 2)  # rounding creates ties
        diam = rng.uniform(3.0, 30.0, n_gt)
        matches.append(match_scan(f"s{s}", pred, scores, gt, diam))
    curves = froc(matches)
    lesions = [r for m in matches for r in m.lesions]
    fp_scores = np.array([d.score for m in matches for d in m.detections if not d.hit])
    for name, curve in curves.items():
        best = np.array([r.best_score for r in lesions if name == "all" or r.size_stratum == name])
        if not len(best):
            continue
        fps, sens, score = _monai(best, fp_scores, len(matches))
        np.testing.assert_allclose(curve.fp_per_scan, fps)
        np.testing.assert_allclose(curve.sensitivity, sens)
        assert curve.cpm == pytest.approx(score)
        assert set(curve.as_dict()["sensitivity_at"]) == {"0.125", "0.25", "0.5", "1", "2", "4", "8"}
