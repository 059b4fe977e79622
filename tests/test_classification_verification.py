"""Lesion verification: vessel-like features on hand-built volumes, the logistic fit, its JSON form."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from liaids.classification.matching import MatchedLesion
from liaids.classification.verification import (
    BRIGHT_HU,
    FEATURES,
    LesionVerifier,
    bright_structure,
    fit_verifier,
    lesion_features,
)
from liaids.codes import PHASES
from liaids.errors import LiaidsError
from liaids.types import Volume

LIVER_HU = 60.0


def _liver_volume(shape: tuple[int, int, int] = (40, 64, 64)) -> np.ndarray:
    return np.full(shape, LIVER_HU, np.float32)


def test_a_vessel_through_the_box_leaves_it_and_an_enclosed_blob_does_not() -> None:
    hu = _liver_volume()
    lo, hi = np.array([15, 24, 24]), np.array([25, 40, 40])
    # A bright tube along z through the whole volume, through the box's centre.
    vessel = hu.copy()
    vessel[:, 30:34, 30:34] = 180.0
    outside, inside = bright_structure(vessel, lo, hi, LIVER_HU + BRIGHT_HU)
    region_z = min(40, int(np.ceil(20 + 15))) - max(0, int(np.floor(20 - 15)))  # the searched z extent
    assert outside == pytest.approx(1.0 - 10 / region_z)
    assert inside == pytest.approx(16 * 10 / (10 * 16 * 16))
    # A bright blob inside the box: nothing leaves it.
    blob = hu.copy()
    blob[18:22, 29:35, 29:35] = 180.0
    outside, inside = bright_structure(blob, lo, hi, LIVER_HU + BRIGHT_HU)
    assert outside == 0.0 and inside == pytest.approx(4 * 36 / (10 * 16 * 16))
    # A hypodense lesion: no bright voxel in the core.
    cyst = hu.copy()
    cyst[18:22, 29:35, 29:35] = 5.0
    assert bright_structure(cyst, lo, hi, LIVER_HU + BRIGHT_HU) == (0.0, 0.0)


def test_lesion_features_read_each_phase_at_its_own_box() -> None:
    # A lesion hypodense in NC, bright in ART, at a box shifted by 5 slices in PV (breathing).
    spacing = (1.0, 1.0, 2.0)
    arrays = {p: _liver_volume() for p in PHASES}
    arrays["NC"][16:24, 28:36, 28:36] = 20.0
    arrays["ART"][16:24, 28:36, 28:36] = 150.0
    arrays["PV"][21:29, 28:36, 28:36] = 40.0
    study = {p: Volume(a, spacing) for p, a in arrays.items()}
    livers = {p: np.ones(a.shape, np.uint8) for p, a in arrays.items()}
    box = (28, 28, 16, 36, 36, 24)
    lesion = MatchedLesion(
        boxes={"NC": box, "ART": box, "PV": (28, 28, 21, 36, 36, 29)},
        found={"NC": True, "ART": True, "PV": False},
        scores={"NC": 0.9, "ART": 0.95, "PV": None},
        score=0.95,
    )
    f = dict(zip(FEATURES, lesion_features(study, livers, lesion), strict=True))
    assert f["core_NC"] == pytest.approx(20.0 - LIVER_HU)
    assert f["core_ART"] == pytest.approx(150.0 - LIVER_HU)
    assert f["core_PV"] == pytest.approx(40.0 - LIVER_HU)
    assert f["found_phases"] == 2.0
    assert f["score_logit"] == pytest.approx(np.log(0.95 / 0.05))
    assert f["log2_size_cm"] == pytest.approx(np.log2(1.6))  # 8 slices x 2 mm
    assert f["liver_core"] == 1.0
    assert f["bright_outside_PV"] == 0.0


def test_the_fit_separates_vessels_from_lesions_and_rescoring_follows_min_score() -> None:
    rng = np.random.default_rng(0)
    n = 200
    is_lesion = rng.random(n) < 0.5
    x = rng.normal(size=(n, len(FEATURES)))
    pv = FEATURES.index("core_PV")
    x[:, pv] = np.where(is_lesion, -30.0, 30.0) + rng.normal(0, 10, n)  # vessels bright in PV
    verifier = fit_verifier(x, is_lesion, l2=1.0, min_score=0.8)
    p = verifier.probability(x)
    assert ((p > 0.5) == is_lesion).mean() > 0.95
    assert verifier.coef[pv] < 0
    lesion_like = x[is_lesion][:1]
    assert verifier.rescore(0.9, lesion_like) == pytest.approx(float(verifier.probability(lesion_like)[0]))
    # Below min_score the detector's score scales the probability down, never up.
    p_lesion = float(verifier.probability(lesion_like)[0])
    assert verifier.rescore(0.5, lesion_like) == pytest.approx(0.5 * p_lesion)
    with pytest.raises(LiaidsError, match="both true lesions and false positives"):
        fit_verifier(x, np.ones(n, bool))


def test_verifier_json_round_trip_and_clear_errors(tmp_path: Path) -> None:
    verifier = LesionVerifier(
        mean=(0.0,) * len(FEATURES),
        scale=(1.0,) * len(FEATURES),
        coef=tuple(float(i) / 10 for i in range(len(FEATURES))),
        intercept=-0.5,
        min_score=0.8,
        source={"cases": ["a"]},
    )
    verifier.save(tmp_path)
    again = LesionVerifier.load(tmp_path)
    assert again == verifier
    data = json.loads((tmp_path / "verifier.json").read_text())
    data["features"] = data["features"][:-1]
    (tmp_path / "verifier.json").write_text(json.dumps(data))
    with pytest.raises(LiaidsError, match="not a lesion verifier"):
        LesionVerifier.load(tmp_path)
    (tmp_path / "verifier.json").write_text("{truncated")
    with pytest.raises(LiaidsError, match="cannot read the lesion verifier"):
        LesionVerifier.load(tmp_path)


def test_train_verifier_pairs_each_dataset_with_its_runs(tmp_path: Path) -> None:
    from liaids.train.verifier import train_verifier

    with pytest.raises(LiaidsError, match="2 dataset"):
        train_verifier([tmp_path / "a", tmp_path / "b"], [tmp_path / "p"], tmp_path / "out")
    with pytest.raises(LiaidsError, match="single dataset"):
        train_verifier(
            [tmp_path / "a", tmp_path / "b"], [tmp_path / "p", tmp_path / "q"], tmp_path / "o", case_ids=["x"]
        )
    assert not (tmp_path / "out").exists()
