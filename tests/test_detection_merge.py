"""2D-to-3D merging, the liver filter and the mapping between grid, canonical and stored voxels."""

from __future__ import annotations

import numpy as np

from liaids.detection.merge import (
    MergeSettings,
    iom_2d,
    keep_in_liver,
    liver_core_fraction,
    merge_slices,
    touches_liver,
)
from liaids.detection.preprocessing import (
    DetectionPlan,
    GridCrop,
    canonical_box_to_stored,
    liver_crop,
    slab_indices,
    slice_boxes,
    to_detection_grid,
)
from liaids.types import Volume


def test_iom_is_intersection_over_smaller_area() -> None:
    big = np.array([[0, 0, 10, 10]], float)
    inner = np.array([[2, 2, 4, 4]], float)
    half = np.array([[5, 0, 15, 10]], float)
    assert iom_2d(big, inner)[0, 0] == 1.0
    assert iom_2d(big, half)[0, 0] == 0.5


def test_merge_joins_boxes_on_nearby_slices_and_keeps_separate_lesions_apart() -> None:
    # Lesion A on slices 3-6 (slice 5 missed: a gap of 2 slices is bridged), lesion B far away on slice 4.
    ks = np.array([3, 4, 6, 4, 20])
    boxes = np.array(
        [[10, 10, 20, 20], [11, 9, 21, 19], [12, 12, 18, 18], [50, 50, 60, 60], [10, 10, 20, 20]], float
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.3])
    lesions = merge_slices(ks, boxes, scores, MergeSettings(score="mean", min_score_3d=0.2))
    assert len(lesions) == 3
    a = lesions[0]
    # [k0, j0, i0, k1, j1, i1]: rows are y, columns x.
    assert a.box_kji.tolist() == [3, 9, 10, 7, 20, 21]
    assert a.n_boxes == 3 and np.isclose(a.score, 0.8)
    # Slice 20 is more than 3 slices from the rest: its own lesion.
    assert {tuple(les.box_kji[[0, 3]]) for les in lesions} == {(3, 7), (4, 5), (20, 21)}


def test_merge_thresholds() -> None:
    ks = np.array([0, 1])
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], float)
    # The authors' rule: mean score 0.15 is below the 3D threshold 0.2; the default keeps the maximum.
    assert merge_slices(ks, boxes, np.array([0.2, 0.1]), MergeSettings(score="mean", min_score_3d=0.2)) == []
    assert merge_slices(ks, boxes, np.array([0.2, 0.1]))[0].score == 0.2
    # Boxes overlapping less than half of the smaller one are not joined.
    shifted = np.array([[0, 0, 10, 10], [6, 0, 16, 10]], float)
    assert len(merge_slices(ks, shifted, np.array([0.9, 0.9]))) == 2
    # 2D boxes below min_score_2d are ignored.
    out = merge_slices(ks, boxes, np.array([0.9, 0.01]))
    assert len(out) == 1 and out[0].n_boxes == 1 and out[0].score == 0.9


def test_weak_loose_boxes_join_the_lesion_but_do_not_widen_its_box() -> None:
    # A lesion found strongly on slices 4-6, and a weak loose box around it on slice 3 that joins the
    # group because the lesion's boxes lie inside it (intersection over the smaller area = 1).
    ks = np.array([4, 5, 6, 3])
    boxes = np.array([[20, 20, 30, 30], [19, 21, 31, 29], [21, 20, 29, 30], [0, 0, 60, 60]], float)
    scores = np.array([0.9, 0.95, 0.8, 0.1])
    (lesion,) = merge_slices(ks, boxes, scores)
    assert lesion.n_boxes == 4 and lesion.score == 0.95
    assert lesion.box_kji.tolist() == [4, 20, 19, 7, 30, 31]
    # The authors' union of all members.
    (union,) = merge_slices(ks, boxes, scores, MergeSettings(box_from=0.0))
    assert union.box_kji.tolist() == [3, 0, 0, 7, 60, 60]


def test_strong_runs_linked_only_by_weak_boxes_are_separate_lesions() -> None:
    # Lesion on slices 0-2, an unrelated structure on slices 8-10 (score 0.6), linked by a chain of weak
    # tall boxes on slices 3-7 that overlap both.
    ks = np.array([0, 1, 2, 8, 9, 10, 3, 5, 7])
    boxes = np.array([[10, 10, 20, 20]] * 3 + [[10, 40, 20, 50]] * 3 + [[10, 10, 20, 50]] * 3, float)
    scores = np.array([0.9, 0.9, 0.8, 0.6, 0.6, 0.5, 0.1, 0.1, 0.1])
    lesions = merge_slices(ks, boxes, scores)
    assert [les.box_kji.tolist() for les in lesions] == [[0, 10, 10, 3, 20, 20], [8, 40, 10, 11, 50, 20]]
    assert [les.score for les in lesions] == [0.9, 0.6]
    assert lesions[0].n_boxes == 6 and lesions[1].n_boxes == 3  # every 2D box is counted once
    # The authors' rule: one lesion spanning both.
    (union,) = merge_slices(ks, boxes, scores, MergeSettings(box_from=0.0))
    assert union.box_kji.tolist() == [0, 10, 10, 11, 50, 20]


def test_weak_boxes_linked_to_the_lesion_only_through_weak_boxes_are_a_candidate_of_their_own() -> None:
    # Lesion on slices 0-2; a weak tall box on slice 4 touches it and links, through a weak box on slice 7,
    # a faint structure on slices 7-9 that no strong box touches.
    ks = np.array([0, 1, 2, 4, 7, 8, 9])
    boxes = np.array([[10, 10, 20, 20]] * 3 + [[10, 10, 20, 50]] + [[10, 40, 20, 50]] * 3, float)
    scores = np.array([0.9, 0.9, 0.8, 0.1, 0.3, 0.2, 0.2])
    lesions = merge_slices(ks, boxes, scores)
    assert [les.box_kji.tolist() for les in lesions] == [[0, 10, 10, 3, 20, 20], [7, 40, 10, 10, 50, 20]]
    assert [les.score for les in lesions] == [0.9, 0.3]
    assert [les.n_boxes for les in lesions] == [4, 3]


def test_a_loose_box_around_a_lesion_and_a_neighbour_does_not_join_them() -> None:
    # A lesion on slices 0-4 and a vessel beside it on slices 0-8; on slice 2 a loose box around both,
    # strong enough to draw boxes but scoring below each of them.
    ks = np.array([0, 1, 2, 3, 4, *range(9), 2])
    boxes = np.array([[10, 10, 20, 20]] * 5 + [[30, 10, 40, 20]] * 9 + [[8, 8, 42, 22]], float)
    scores = np.array([0.9] * 5 + [0.8] * 9 + [0.6])
    lesions = merge_slices(ks, boxes, scores, MergeSettings(split_bridges=True))
    assert [les.box_kji.tolist() for les in lesions] == [[0, 10, 10, 5, 20, 20], [0, 10, 30, 9, 20, 40]]
    assert [les.n_boxes for les in lesions] == [6, 9]  # the loose box counts with the best lesion
    # The default (the authors' rule) links them: one lesion spans both.
    (joined,) = merge_slices(ks, boxes, scores)
    assert joined.box_kji.tolist() == [0, 8, 8, 9, 22, 42]


def test_a_box_scoring_above_its_parts_still_joins_them() -> None:
    # A heterogeneous lesion: two halves found on some slices, the whole (scoring higher) on others.
    ks = np.array([0, 0, 1, 2, 2])
    boxes = np.array(
        [[10, 10, 20, 30], [20, 10, 30, 30], [10, 10, 30, 30], [10, 10, 20, 30], [20, 10, 30, 30]], float
    )
    scores = np.array([0.7, 0.7, 0.9, 0.6, 0.6])
    (lesion,) = merge_slices(ks, boxes, scores, MergeSettings(split_bridges=True))
    assert lesion.box_kji.tolist() == [0, 10, 10, 3, 30, 30] and lesion.n_boxes == 5


def test_touches_liver() -> None:
    liver = np.zeros((10, 10, 10), bool)
    liver[5, 5, 5] = True
    assert touches_liver(np.array([4, 4, 4, 6, 6, 6]), liver)
    assert not touches_liver(np.array([0, 0, 0, 5, 5, 5]), liver)  # half-open: excludes index 5


def test_liver_filter_drops_a_mimic_that_only_borders_the_liver() -> None:
    liver = np.zeros((30, 30, 30), bool)
    liver[:, :, :15] = True  # liver fills i < 15
    lesion = np.array([10, 10, 5, 16, 16, 11])  # inside the liver
    gallbladder = np.array([10, 10, 12, 16, 16, 24])  # overlaps the liver edge by 3 voxels of 12
    assert liver_core_fraction(lesion, liver) == 1.0
    # Core along i is 16..20: no liver there.
    assert liver_core_fraction(gallbladder, liver) == 0.0
    authors = MergeSettings(min_liver_core=0.0)
    strict = MergeSettings(min_liver_core=0.3)
    assert keep_in_liver(gallbladder, liver, authors) and not keep_in_liver(gallbladder, liver, strict)
    assert keep_in_liver(lesion, liver, strict)
    outside = np.array([10, 10, 20, 16, 16, 26])
    assert not keep_in_liver(outside, liver, authors)
    # Half the core in the liver: core along i is 13..17, liver at 13 and 14.
    assert liver_core_fraction(np.array([0, 0, 9, 3, 3, 21]), liver) == 0.5


def test_slice_boxes_and_slab_indices() -> None:
    labels = np.zeros((20, 30), np.int16)
    labels[3:7, 10:15] = 2
    labels[12, 12] = 5  # one pixel: too small
    assert {k: v.tolist() for k, v in slice_boxes(labels).items()} == {2: [10, 3, 15, 7]}
    assert slab_indices(0, 10, 2).tolist() == [0, 0, 0, 1, 2]
    assert slab_indices(9, 10, 2).tolist() == [7, 8, 9, 9, 9]


def test_grid_crop_box_round_trip() -> None:
    # 40 canonical slices of 1.25 mm seen as 20 grid slices of 2.5 mm starting at slice 10.
    crop = GridCrop(start=(10, 0, 0), size=(40, 100, 100), shape=(20, 50, 50))
    box = crop.grid_to_canonical_box(np.array([2, 10, 10, 5, 20, 30]))
    assert box.tolist() == [14, 20, 20, 20, 40, 60]


def test_detection_grid_keeps_lesion_boxes_in_place() -> None:
    array = np.full((30, 64, 64), -100.0, np.float32)
    labels = np.zeros(array.shape, np.int16)
    labels[11:17, 20:30, 30:44] = 1  # aligned with the 2:1 grid along z
    array[labels > 0] = 200.0
    liver = np.zeros(array.shape, bool)
    liver[5:25, 10:50, 10:60] = True
    volume = Volume(array, spacing=(0.8, 0.8, 2.0))
    plan = DetectionPlan(pixel_mm=1.6, slice_mm=4.0, margin_mm=0.0)
    assert liver_crop(liver, volume.spacing_kji, plan) == ((5, 10, 10), (20, 40, 50))
    grid, crop, grid_labels = to_detection_grid(volume, plan, liver, labels)
    assert grid.shape == crop.shape == (10, 20, 25) and grid.dtype == np.uint8
    assert grid_labels is not None
    ks, js, is_ = np.nonzero(grid_labels)
    found = np.array([ks.min(), js.min(), is_.min(), ks.max() + 1, js.max() + 1, is_.max() + 1])
    assert crop.grid_to_canonical_box(found).tolist() == [11, 20, 30, 17, 30, 44]
    # Bright lesion voxels saturate near the top of the window, background sits at (-100 + 210) / 510.
    assert grid[grid_labels > 0].min() > 190 and abs(int(grid[0, 0, 0]) - round(110 * 255 / 510)) <= 1


def test_canonical_box_to_stored_undoes_flips_and_permutations() -> None:
    rng = np.random.default_rng(0)
    stored = rng.normal(size=(6, 7, 8)).astype(np.float32)
    # i runs towards the patient's right and j anterior: both flipped in canonical order.
    direction = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    volume = Volume(stored, spacing=(0.7, 0.7, 3.0), origin=(10.0, 20.0, -5.0), direction=direction)
    canonical = volume.to_canonical()
    mask = np.zeros(canonical.shape, bool)
    mask[1:3, 2:5, 0:4] = True
    box = canonical_box_to_stored(volume, np.array([1, 2, 0, 3, 5, 4]))
    back = volume.from_canonical(mask)
    ks, js, is_ = np.nonzero(back)
    assert box == [
        int(is_.min()),
        int(js.min()),
        int(ks.min()),
        int(is_.max()) + 1,
        int(js.max()) + 1,
        int(ks.max()) + 1,
    ]
