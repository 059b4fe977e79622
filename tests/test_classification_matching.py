"""Cross-phase matching: liver alignment against known breathing shifts, grouping, transferred boxes."""

from __future__ import annotations

import numpy as np
import pytest

from liaids.classification.matching import PhaseBox, align_livers, match_lesions
from liaids.classification.patches import BBox, boxes_from_instances
from liaids.codes import PHASES
from liaids.errors import BoxError
from liaids.phantom.profiles import load_profile
from liaids.phantom.synthesize import PhantomCase, synthesize_case
from liaids.types import Volume


def _overlap(a: BBox, b: BBox) -> tuple[float, float]:
    lo, hi = np.maximum(a[:3], b[:3]), np.minimum(a[3:], b[3:])
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    va, vb = float(np.prod(np.subtract(a[3:], a[:3]))), float(np.prod(np.subtract(b[3:], b[:3])))
    return inter / (va + vb - inter), inter / min(va, vb)


def _hit(a: BBox, b: BBox) -> bool:
    """The paper's hit rule: IoU > 0.3 or IoM > 0.5."""
    iou, iom = _overlap(a, b)
    return iou > 0.3 or iom > 0.5


@pytest.fixture(scope="module")
def phantoms() -> list[PhantomCase]:
    """Two phantom patients with lesions and breathing shifts of 5-26 mm along z between phases."""
    prof = load_profile("qzh")
    return [synthesize_case(prof, seed=21, index=1), synthesize_case(prof, seed=21, index=3)]


def test_translation_alignment_recovers_the_known_breathing_shifts(phantoms: list[PhantomCase]) -> None:
    for case in phantoms:
        shifts = {p: np.array(v) for p, v in case.phantom["breathing_shift_mm"].items()}
        alignment = align_livers(case.study.phases, case.liver, "translation")
        assert alignment.reference == "PV" and all(alignment.reliable.values())
        for p in ("NC", "ART"):
            error = alignment.displacement_mm(p, "PV") - (shifts[p] - shifts["PV"])
            assert np.abs(error).max() < 1.5, (case.case_id, p, error)
    biggest = max(
        abs(v[2] - c.phantom["breathing_shift_mm"]["PV"][2])
        for c in phantoms
        for v in c.phantom["breathing_shift_mm"].values()
    )
    assert biggest > 15  # the test covers a large breathing shift


def test_lesions_missing_in_a_phase_get_boxes_on_the_true_lesion(phantoms: list[PhantomCase]) -> None:
    for case in phantoms:
        truth = {p: boxes_from_instances(case.lesions[p].array) for p in PHASES}
        ids = sorted(set.intersection(*(set(t) for t in truth.values())))
        assert ids
        for missing in PHASES:
            for method in ("translation", "bbox"):
                detections = {p: [] if p == missing else list(truth[p].values()) for p in PHASES}
                lesions = match_lesions(detections, case.study.phases, case.liver, method=method)
                assert len(lesions) == len(ids)
                for lesion in lesions:
                    assert lesion.found == {p: p != missing for p in PHASES}
                    assert lesion.scores[missing] is None and lesion.score == 1.0
                    lid = next(
                        i
                        for i in ids
                        if lesion.boxes["PV" if missing != "PV" else "ART"]
                        == truth["PV" if missing != "PV" else "ART"][i]
                    )
                    assert _hit(lesion.boxes[missing], truth[missing][lid]), (case.case_id, method, missing)


def test_detections_found_in_one_phase_only_are_transferred_to_the_others(
    phantoms: list[PhantomCase],
) -> None:
    case = phantoms[1]
    truth = {p: boxes_from_instances(case.lesions[p].array) for p in PHASES}
    lid = next(iter(truth["ART"]))
    detections = {"NC": [], "ART": [PhaseBox(truth["ART"][lid], 0.7)], "PV": []}
    [lesion] = match_lesions(detections, case.study.phases, case.liver)
    assert lesion.found == {"NC": False, "ART": True, "PV": False} and lesion.score == 0.7
    for p in ("NC", "PV"):
        assert _hit(lesion.boxes[p], truth[p][lid])


def _liver_study(z_shift_mm: dict[str, float], z_start_mm: dict[str, float]) -> tuple[dict, dict, dict]:
    """Hand-built ellipsoid livers on 2 mm x 2 mm x 5 mm grids, moved along z by breathing.

    Two small lesions 12 mm apart sit inside the liver; returns volumes, liver masks and true boxes.
    """
    volumes, livers, lesions = {}, {}, {}
    for p in PHASES:
        n_k = 40
        z = z_start_mm[p] + 5.0 * np.arange(n_k)
        y = 2.0 * np.arange(100)
        x = 2.0 * np.arange(100)
        zz, yy, xx = np.meshgrid(z - z_shift_mm[p], y, x, indexing="ij")
        # A liver shaped like a pear along z, so that its profile is not symmetric.
        radius = (
            60.0 * np.clip(1.0 - ((zz - 100.0) / 90.0) ** 2, 0, None) ** 0.5 * (1.0 + (zz - 100.0) / 300.0)
        )
        liver = (xx - 100.0) ** 2 + (yy - 100.0) ** 2 < radius**2
        instances = np.zeros(liver.shape, np.uint8)
        for lid, centre in ((1, (80.0, 100.0, 90.0)), (2, (80.0, 100.0, 104.0))):
            ball = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (zz - centre[2]) ** 2 <= 5.0**2
            instances[ball] = lid
        geom = {"spacing": (2.0, 2.0, 5.0), "origin": (0.0, 0.0, float(z_start_mm[p]))}
        volumes[p] = Volume(np.zeros(liver.shape, np.int16), **geom)
        livers[p] = Volume(liver.astype(np.uint8), **geom)
        lesions[p] = boxes_from_instances(instances)
    return volumes, livers, lesions


def test_translation_survives_a_scan_that_cuts_off_the_liver_top() -> None:
    shifts = {"NC": 14.0, "ART": -6.0, "PV": 0.0}
    # The NC scan starts 60 mm up and cuts off the lower 36 mm of the liver.
    volumes, livers, truth = _liver_study(shifts, {"NC": 60.0, "ART": -10.0, "PV": -5.0})
    assert livers["NC"].array[0].sum() > 1000  # really truncated
    alignment = align_livers(volumes, livers, "translation")
    for p in ("NC", "ART"):
        assert abs(alignment.displacement_mm(p, "PV")[2] - shifts[p]) < 2.0
    # Two small neighbouring lesions stay two lesions, each matched to itself.
    lesions = match_lesions({p: [truth[p][1], truth[p][2]] for p in PHASES}, volumes, livers)
    assert len(lesions) == 2 and all(all(les.found.values()) for les in lesions)
    for les in lesions:
        assert len({next(k for k, b in truth[p].items() if b == les.boxes[p]) for p in PHASES}) == 1


def test_without_livers_phases_are_compared_in_world_coordinates() -> None:
    volumes, _, truth = _liver_study({p: 0.0 for p in PHASES}, {p: 0.0 for p in PHASES})
    alignment = align_livers(volumes, None)
    assert alignment.method == "identity" and not any(alignment.reliable.values())
    lesions = match_lesions({"NC": [truth["NC"][1]], "ART": [truth["ART"][1]], "PV": []}, volumes, None)
    assert len(lesions) == 1 and lesions[0].boxes["PV"] == truth["PV"][1]


def test_bad_boxes_and_missing_phases_are_reported() -> None:
    volumes, livers, _truth = _liver_study({p: 0.0 for p in PHASES}, {p: 0.0 for p in PHASES})
    with pytest.raises(BoxError, match="ART detection 0"):
        match_lesions({"ART": [(5, 5, 5, 5, 9, 9)]}, volumes, livers)
    with pytest.raises(Exception, match="missing"):
        match_lesions({}, {"NC": volumes["NC"]}, None)
