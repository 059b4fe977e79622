"""Segmentation metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from liaids.evaluate.segmentation import label_metrics, mask_metrics


def test_dice_of_two_overlapping_boxes() -> None:
    a = np.zeros((10, 20, 20), bool)
    b = np.zeros_like(a)
    a[2:6, 5:10, 5:10] = True  # 100 voxels
    b[2:6, 5:10, 7:12] = True  # 100 voxels, 60 shared
    m = mask_metrics(a, b, (2.0, 1.0, 1.0))
    assert m["dice"] == pytest.approx(2 * 60 / 200)
    # b is a shifted by 2 voxels along i (1 mm each): surface distances are at most 2 mm.
    assert 0 < m["hd95_mm"] <= 2.0 + 1e-6
    assert 0 < m["asd_mm"] <= 2.0


def test_identical_and_empty_masks() -> None:
    a = np.zeros((5, 8, 8), bool)
    a[1:4, 2:6, 2:6] = True
    same = mask_metrics(a, a, (1.0, 1.0, 1.0))
    assert same == {"dice": 1.0, "hd95_mm": 0.0, "asd_mm": 0.0}
    empty = mask_metrics(np.zeros_like(a), np.zeros_like(a), (1.0, 1.0, 1.0))
    assert empty["dice"] == 1.0 and math.isnan(empty["hd95_mm"])
    missed = mask_metrics(np.zeros_like(a), a, (1.0, 1.0, 1.0))
    assert missed["dice"] == 0.0 and math.isnan(missed["asd_mm"])


def test_label_metrics_count_lesions_as_liver() -> None:
    truth = np.zeros((4, 10, 10), np.uint8)
    truth[:, 2:8, 2:8] = 1
    truth[:, 4:6, 4:6] = 2
    pred = truth.copy()
    pred[pred == 2] = 1  # lesion missed, liver perfect
    m = label_metrics(pred, truth, (1.0, 1.0, 1.0))
    assert m["liver"]["dice"] == 1.0 and m["lesion"]["dice"] == 0.0
