"""Lesion patches: the crop rule on hand-built boxes, window, padding, orientation, jitter, box errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from liaids.classification.patches import (
    BoxError,
    BoxErrors,
    PatchPlan,
    boxes_from_instances,
    crop_region,
    depth_margin_slices,
    extract_lesion_patches,
    extract_patches,
    jitter_box,
)
from liaids.errors import LiaidsError
from liaids.types import Volume

PLAN = PatchPlan(shape=(8, 32, 32))


def _ball_volume(spacing: tuple[float, float, float], diameter_mm: float = 20.0) -> tuple[Volume, tuple]:
    """Liver-like 60 HU background with a 160 HU ball at the centre of a 120 x 120 x 100 mm field."""
    si, sj, sk = spacing
    shape = (round(100 / sk), round(120 / sj), round(120 / si))
    k, j, i = np.meshgrid(
        *[(np.arange(n) + 0.5) * s for n, s in zip(shape, (sk, sj, si), strict=True)], indexing="ij"
    )
    ball = (i - 60) ** 2 + (j - 60) ** 2 + (k - 50) ** 2 <= (diameter_mm / 2) ** 2
    array = np.where(ball, 160.0, 60.0).astype(np.float32)
    return Volume(array, spacing), boxes_from_instances(ball.astype(np.uint8))[1]


def test_crop_rule_in_plane_scale_minimum_square_and_depth_margin() -> None:
    spacing = (0.7, 0.7, 5.0)
    small = (100, 100, 10, 110, 110, 12)  # 7 mm x 7 mm, 2 slices
    region = crop_region(small, spacing, PLAN)
    side_px = region[3] - region[0]
    assert side_px * 0.7 == pytest.approx(45.0)  # the 45 mm minimum square (64 px at 0.7 mm)
    assert region[4] - region[1] == pytest.approx(side_px)
    assert region[5] - region[2] == pytest.approx(2 + 4)  # 5 mm slices: + 4 slices
    large = (100, 100, 10, 186, 143, 22)  # 60 mm x 30 mm
    region = crop_region(large, spacing, PLAN)
    assert (region[3] - region[0]) * 0.7 == pytest.approx(1.5 * 86 * 0.7)  # 1.5 x the longer side
    assert region[4] - region[1] == pytest.approx(region[3] - region[0])  # square
    assert np.allclose((region[:3] + region[3:]) / 2, [143, 121.5, 16])  # centred on the box
    assert depth_margin_slices(2.5, PLAN) == pytest.approx(8.0)  # 4 x 5 / 2.5
    assert depth_margin_slices(1.25, PLAN) == pytest.approx(16.0)
    assert depth_margin_slices(7.0, PLAN) == pytest.approx(4.0)


def test_patch_is_windowed_to_unit_range_and_centred_on_the_lesion() -> None:
    vol, box = _ball_volume((0.8, 0.8, 2.5))
    patches = extract_patches(vol, [box], PLAN)
    patch = patches.images[0]
    assert patch.shape == PLAN.shape and patch.dtype == np.float32
    lo, hi = PLAN.hu_window
    assert patch[4, 16, 16] == pytest.approx((160 - lo) / (hi - lo), abs=0.02)  # lesion at the centre
    assert patch[4, 1, 1] == pytest.approx((60 - lo) / (hi - lo), abs=0.02)  # parenchyma at the corner
    # 20 mm ball in a 45 mm square crop: the lesion spans about 20 / 45 of the patch width.
    bright = (patch[4, 16] > 0.6).sum()
    assert abs(bright - 32 * 20 / 45) <= 2
    # The extents say the same: the box spans 20 / 45 of the patch in-plane, 8 of 8 + 8 slices in depth.
    assert np.allclose(patches.extents[0], [8 / 16, 20 / 45, 20 / 45], atol=0.02)


def test_outside_the_volume_is_air() -> None:
    vol, _ = _ball_volume((1.0, 1.0, 5.0))
    corner = (0, 0, 0, 6, 6, 2)
    patch = extract_patches(vol, [corner], PLAN).images[0]
    assert patch[:, 0, 0].max() == 0.0  # -1000 HU clipped to the window's low end
    assert patch[4, -1, -1] == pytest.approx((60 - PLAN.hu_window[0]) / 400, abs=0.02)


def test_patch_does_not_depend_on_pixel_or_slice_spacing() -> None:
    fine, box_f = _ball_volume((0.6, 0.6, 1.25))
    coarse, box_c = _ball_volume((0.9, 0.9, 5.0))
    a = extract_patches(fine, [box_f], PLAN).images[0]
    b = extract_patches(coarse, [box_c], PLAN).images[0]
    # In-plane the crop is fixed in mm (45 mm minimum): the middle slices agree closely.
    assert np.corrcoef(a[3:5].ravel(), b[3:5].ravel())[0, 1] > 0.9


def test_flipped_storage_gives_the_same_patch() -> None:
    vol, box = _ball_volume((0.8, 0.8, 2.5))
    rng = np.random.default_rng(0)
    array = vol.array + rng.normal(0, 20, vol.shape).astype(np.float32)  # break the symmetry
    canonical = Volume(array, vol.spacing)
    _k, j, i = array.shape
    flipped = Volume(
        np.ascontiguousarray(array[:, ::-1, ::-1]),
        vol.spacing,
        origin=((i - 1) * 0.8, (j - 1) * 0.8, 0.0),
        direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
    )
    box_flipped = (i - box[3], j - box[4], box[2], i - box[0], j - box[1], box[5])
    a = extract_patches(canonical, [box], PLAN)
    b = extract_patches(flipped, [box_flipped], PLAN)
    assert np.allclose(a.images, b.images, atol=1e-5) and np.allclose(a.extents, b.extents)


def test_lesion_patches_stack_phases_and_require_every_phase() -> None:
    vol, box = _ball_volume((0.8, 0.8, 5.0))
    phases = {"NC": vol, "ART": vol, "PV": vol}
    out = extract_lesion_patches(phases, [{"NC": box, "ART": box, "PV": box}] * 2, PLAN)
    assert out.images.shape == (2, 3, *PLAN.shape) and out.extents.shape == (2, 3, 3)
    with pytest.raises(BoxError, match=r"no box in phase\(s\) \['PV'\]"):
        extract_lesion_patches(phases, [{"NC": box, "ART": box}], PLAN)


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((1, 2, 3, 4, 5), "six integers"),
        ((10, 10, 5, 10, 20, 8), "empty"),
        ((10.5, 10, 5, 20, 20, 8), "six integers"),
        ((500, 10, 5, 520, 20, 8), "outside the volume"),
    ],
)
def test_malformed_boxes_raise_box_error(box: tuple, message: str) -> None:
    vol, _ = _ball_volume((1.0, 1.0, 5.0))
    with pytest.raises(BoxError, match=message):
        extract_patches(vol, [box], PLAN)


def test_boxes_from_instances_are_half_open_ijk() -> None:
    mask = np.zeros((6, 10, 12), np.uint8)
    mask[2:4, 3:7, 5:9] = 1
    mask[5, 0, 0] = 3
    assert boxes_from_instances(mask) == {1: (5, 3, 2, 9, 7, 4), 3: (0, 0, 5, 1, 1, 6)}


def test_jitter_moves_and_resizes_like_a_detector_and_stays_inside() -> None:
    rng = np.random.default_rng(1)
    box = (100, 120, 10, 140, 150, 14)
    shape = (30, 256, 256)
    out = np.array([jitter_box(box, rng, (0.7, 0.7, 5.0), shape) for _ in range(200)])
    assert (out[:, 3:] > out[:, :3]).all() and (out[:, :3] >= 0).all()
    assert (out[:, 3:] <= np.array(shape[::-1])).all()
    assert len({tuple(b) for b in out}) > 50  # boxes really vary
    inter = np.prod(np.clip(np.minimum(out[:, 3:], box[3:]) - np.maximum(out[:, :3], box[:3]), 0, None), 1)
    union = np.prod(out[:, 3:] - out[:, :3], 1) + np.prod(np.subtract(box[3:], box[:3])) - inter
    assert np.median(inter / union) > 0.5  # a detector's typical overlap with the truth
    near_edge = jitter_box((0, 0, 0, 3, 3, 1), rng, (0.7, 0.7, 5.0), shape)
    assert near_edge[0] >= 0 and near_edge[3] > near_edge[0]


def test_measured_box_errors_are_applied_by_lesion_size(tmp_path) -> None:
    # one small-lesion error (box 3 times larger, centre a quarter of a size to +i) and one for the rest
    small = [np.log(3.0), np.log(3.0), 0.0, 0.25, 0.0, 0.0, 6.0]
    large = [np.log(1.2), 0.0, 0.0, 0.0, -0.5, 0.0, 30.0]
    path = tmp_path / "detection.json"
    engulfing = [3.0, 3.0, 2.0, 6.0, 4.0, 1.0, 5.0]  # a small lesion "hit" by another object's box
    path.write_text(json.dumps({"box_error_at_2fp": {"samples": [small, large, engulfing]}}))
    errors = BoxErrors.load(path)
    rng = np.random.default_rng(0)
    shape = (40, 200, 200)
    box = (100, 100, 10, 110, 110, 12)  # 10 x 10 x 2 voxels
    assert errors.pool(6.0).tolist() == [True, False, False] and errors.pool(30.0).tolist() == [
        False,
        True,
        False,
    ]
    for _ in range(5):
        assert errors.apply(box, rng, 6.0, shape) == (93, 90, 10, 123, 120, 12)
    assert errors.apply(box, rng, 30.0, shape) == (99, 95, 10, 111, 105, 12)
    edge = errors.apply((0, 0, 0, 10, 10, 2), rng, 6.0, shape)
    assert edge[:3] == (0, 0, 0) and edge[3] > 10
    summary = errors.summary()
    assert summary["lesions"] == 3 and summary["lesions_under_1cm"] == 2 and len(summary["sha256_16"]) == 16
    assert BoxErrors.load(path).digest == errors.digest
    (tmp_path / "plain.json").write_text(json.dumps(errors.to_json()))
    assert BoxErrors.load(tmp_path / "plain.json").digest == errors.digest


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"recall": 0.5}),
        json.dumps({"samples": [[1, 2, 3]]}),
        json.dumps({"samples": []}),
        json.dumps({"box_error_at_2fp": [1, 2]}),
    ],
)
def test_unusable_box_error_files_are_refused_naming_the_file(tmp_path, content: str) -> None:
    path = tmp_path / "errors.json"
    path.write_text(content)
    with pytest.raises(LiaidsError, match=r"errors\.json"):
        BoxErrors.load(path)
