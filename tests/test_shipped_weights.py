"""Every shipped model folder loads with weights_only, matches its checksum, and all fit the size budget."""

from __future__ import annotations

import json

import pytest

from liaids.model_store import builtin_model_dir, sha256

SHIPPED = (
    "liver_small",
    "liver_small/refinement",
    "detector_cswin3d_small",
    "detector_cnn2d_small",
    "classifier_small",
    "classifier_image_small",
    "classifier_clinical_small",
    "classifier_concat_small",
    "detector_cswin3d_small/candidate_filter",
    "detector_cnn2d_small/candidate_filter",
)


@pytest.mark.parametrize("name", SHIPPED)
def test_checksum_and_profile(name: str) -> None:
    folder = builtin_model_dir(name)
    assert (folder / "model.pt.sha256").read_text().split()[0] == sha256(folder / "model.pt")
    assert json.loads((folder / "config.json").read_text())["profile"] == "small"


def test_all_shipped_weights_stay_under_40_mb() -> None:
    total = sum(builtin_model_dir(name).joinpath("model.pt").stat().st_size for name in SHIPPED)
    assert total < 40_000_000


def test_liver_refinement_belongs_to_the_shipped_segmentation_model() -> None:
    """It corrects these weights' logits, and it never trained on their validation cases."""
    from liaids.segmentation.predictor import LiverSegmenter

    liver = builtin_model_dir("liver_small")
    refinement = json.loads((liver / "refinement" / "config.json").read_text())
    assert refinement["coarse_model"]["sha256"] == sha256(liver / "model.pt")
    assert json.loads((liver / "refinement" / "splits.json").read_text()) == json.loads(
        (liver / "splits.json").read_text()
    )
    assert LiverSegmenter.load().refiner is not None


def test_shipped_detectors_and_classifiers_load() -> None:
    from liaids.classification.predictor import LesionClassifier
    from liaids.detection.predictor import LesionDetector

    default = LesionDetector.load()
    assert default.config.backbone == "cswin3d" and default.candidate_filter is not None
    ablation = LesionDetector.load(builtin_model_dir("detector_cnn2d_small"))
    assert ablation.config.backbone == "cnn2d" and ablation.candidate_filter is not None
    variants = {
        LesionClassifier.from_weights(builtin_model_dir(n)).variant
        for n in (
            "classifier_small",
            "classifier_image_small",
            "classifier_clinical_small",
            "classifier_concat_small",
        )
    }
    assert variants == {"full", "image", "clinical", "concat"}


def test_operating_points_were_chosen_on_validation_cases() -> None:
    detector = json.loads((builtin_model_dir("detector_cswin3d_small") / "config.json").read_text())
    assert 0.0 < detector["operating_point"]["score"] < 1.0
    assert "val" in detector["operating_point"]["chosen_on"]
    triage = json.loads((builtin_model_dir("classifier_small") / "triage.json").read_text())
    assert 0.0 < triage["threshold"] <= 1.0 and triage["target_npv"] == 0.99
    # The triage reads candidates below the report's point, never fewer than the report.
    assert 0.0 <= triage["detection_threshold"] < detector["operating_point"]["score"]


@pytest.mark.parametrize("name", ["detector_cswin3d_small", "detector_cnn2d_small"])
def test_candidate_filter_never_saw_the_operating_point_cases(name: str) -> None:
    """The filter learns on cases neither the detector trained on nor the operating points are chosen on."""
    detector = builtin_model_dir(name)
    det_splits = json.loads((detector / "splits.json").read_text())
    filter_splits = json.loads((detector / "candidate_filter" / "splits.json").read_text())
    used = set(filter_splits["train"]) | set(filter_splits["val"])
    assert not used & (set(det_splits["train"]) | set(det_splits["val"]))
    operating_point = json.loads((builtin_model_dir("detector_cswin3d_small") / "config.json").read_text())
    assert not used & set(operating_point["operating_point"]["cases"])


def test_no_shipped_model_trained_on_the_operating_point_cases() -> None:
    detector = builtin_model_dir("detector_cswin3d_small")
    chosen_on = set(json.loads((detector / "config.json").read_text())["operating_point"]["cases"])
    triage = json.loads((builtin_model_dir("classifier_small") / "triage.json").read_text())
    assert set(triage["cases"]) == chosen_on and len(chosen_on) >= 24
    # The candidate filters are checked (train and val) by the test above.
    for folder in (detector, builtin_model_dir("classifier_small")):
        assert not chosen_on & set(json.loads((folder / "splits.json").read_text())["train"]), folder


def test_shipped_verifier_belongs_to_the_operating_point() -> None:
    """The operating point is on verified scores; the verifier learnt on validation cases only (val39: a
    subset of the operating-point cases, the detector's 24 epoch-selection cases among them, as
    src/liaids/weights/README.md records), never on a case any network trained on."""
    from liaids.classification.verification import LesionVerifier

    detector = builtin_model_dir("detector_cswin3d_small")
    verifier = LesionVerifier.load(detector)
    operating_point = json.loads((detector / "config.json").read_text())["operating_point"]
    assert operating_point["applies_to"] == "verified score"
    fitted_on = set((verifier.source or {})["cases"])
    assert fitted_on and fitted_on <= set(operating_point["cases"])
    det_splits = json.loads((detector / "splits.json").read_text())
    filter_splits = json.loads((detector / "candidate_filter" / "splits.json").read_text())
    for used in (det_splits["train"], filter_splits["train"], filter_splits["val"]):
        assert not fitted_on & set(used)
    assert 0.0 < verifier.min_score <= operating_point["score"]
