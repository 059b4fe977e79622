"""Patient context: a lesion's type probabilities weighed with the same patient's other lesions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from liaids.classification.context import (
    CONTEXT_FILE,
    PatientContext,
    apply_patient_context,
    choose_context_weight,
    load_patient_context,
    mean_log_loss,
    save_patient_context,
)
from liaids.errors import ModelLoadError

# Three types for readability: 0 = HCC, 1 = HM, 2 = HC.
AMBIGUOUS = [0.45, 0.40, 0.15]
SURE_HM = [0.05, 0.90, 0.05]


def test_weight_zero_and_single_lesions_leave_probabilities_unchanged() -> None:
    probs = np.array([AMBIGUOUS, SURE_HM])
    np.testing.assert_allclose(apply_patient_context(probs, 0.0), probs, atol=1e-7)
    # Two patients of one lesion each: nobody has context.
    np.testing.assert_allclose(apply_patient_context(probs, 1.0, ["a", "b"]), probs, atol=1e-7)


def test_a_confident_sibling_pulls_an_ambiguous_lesion_and_rows_stay_distributions() -> None:
    out = apply_patient_context(np.array([AMBIGUOUS, SURE_HM]), 1.0)
    assert out[0].argmax() == 1  # HCC 0.45 vs HM 0.40 alone; with a sure metastasis beside it, HM
    assert out[1].argmax() == 1
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    # Exactly the documented rule: p * (mean of the others + floor) ** w, normalised.
    expected = np.array(AMBIGUOUS) * (np.array(SURE_HM) + 1e-3)
    np.testing.assert_allclose(out[0], expected / expected.sum(), rtol=1e-5)


def test_context_comes_from_the_same_patient_only_and_the_floor_keeps_a_type_possible() -> None:
    probs = np.array([AMBIGUOUS, SURE_HM, AMBIGUOUS, [0.0, 0.0, 1.0]])
    out = apply_patient_context(probs, 1.0, ["a", "a", "b", "b"])
    assert out[0].argmax() == 1 and out[2].argmax() == 2
    # Patient b's cyst rules HCC out for its sibling only as far as the floor allows.
    assert 0 < out[2][0] < probs[2][0]
    np.testing.assert_allclose(out[:2], apply_patient_context(probs[:2], 1.0), atol=1e-7)


def test_the_weight_is_chosen_by_validation_log_loss() -> None:
    rng = np.random.default_rng(0)
    patients, labels, probs = [], [], []
    for n in range(40):  # every patient's lesions share one type; each lesion alone is noisy
        label = int(rng.integers(3))
        for _ in range(3):
            p = rng.dirichlet(np.ones(3))
            p[label] += 0.6
            probs.append(p / p.sum())
            labels.append(label)
            patients.append(f"p{n}")
    probs_arr, labels_arr = np.array(probs), np.array(labels)
    weight, table = choose_context_weight(probs_arr, labels_arr, patients)
    assert weight > 0 and table[0]["weight"] == 0.0
    best = min(row["log_loss"] for row in table)
    assert mean_log_loss(apply_patient_context(probs_arr, weight, patients), labels_arr) == pytest.approx(
        best, abs=1e-4
    )
    # Lesions of one patient that do not share a type: the context only hurts, and 0 is chosen.
    shuffled = list(rng.permutation(patients))
    weight, _ = choose_context_weight(probs_arr, labels_arr, shuffled)
    assert weight == 0.0


def test_context_file_round_trip_absence_and_bad_content(tmp_path: Path) -> None:
    assert load_patient_context(tmp_path) == PatientContext(0.0)
    path = save_patient_context(tmp_path, PatientContext(0.75), {"cohort": "val"})
    assert path.name == CONTEXT_FILE and json.loads(path.read_text())["details"] == {"cohort": "val"}
    assert load_patient_context(tmp_path) == PatientContext(0.75)
    path.write_text("{broken")
    with pytest.raises(ModelLoadError, match=f"{CONTEXT_FILE}: cannot read the patient context"):
        load_patient_context(tmp_path)
    path.write_text(json.dumps({"weight": -1}))
    with pytest.raises(ModelLoadError, match="invalid patient context"):
        load_patient_context(tmp_path)
