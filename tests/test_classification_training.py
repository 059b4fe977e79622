"""Classifier training and inference: a tiny overfit that learns, run artefacts and resume, the predictor,
clinical input errors, metrics."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_training_artefacts
from liaids.classification.context import PatientContext, save_patient_context
from liaids.classification.matching import match_lesions
from liaids.classification.patches import boxes_from_instances
from liaids.classification.predictor import LesionClassifier, clinical_vector, lesion_metrics
from liaids.codes import LESION_TYPES, PHASES
from liaids.dataset import Dataset
from liaids.errors import ClinicalInfoError, ModelLoadError
from liaids.networks.lesion_classifier import PROFILES, LesionClassifierNet
from liaids.train.classification import augment, train_classification

CLINICAL = {
    "age": 61,
    "sex": "M",
    "hepatitis_b": True,
    "hepatitis_c": False,
    "cirrhosis": "yes",
    "cholangiolithiasis": 0,
    "extrahepatic_tumour": False,
}


def _toy_lesions(n: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` lesions of ``n`` distinct patterns: a central blob whose brightness per phase codes the class."""
    torch.manual_seed(0)
    _, yy, xx = torch.meshgrid(torch.arange(4.0), torch.arange(16.0), torch.arange(16.0), indexing="ij")
    blob = ((yy - 7.5) ** 2 + (xx - 7.5) ** 2 < 16).float()
    labels = torch.arange(n) % len(LESION_TYPES)
    levels = torch.rand(len(LESION_TYPES), 3) * 0.6 + 0.2
    patches = 0.5 + (levels[labels][:, :, None, None, None] - 0.5) * blob
    patches = patches + 0.03 * torch.randn(n, 3, 4, 16, 16)
    return patches.clamp(0, 1), torch.rand(n, 7), labels


def test_tiny_overfit_reaches_full_training_accuracy() -> None:
    patches, clinical, labels = _toy_lesions()
    torch.manual_seed(0)
    # Dropout off: memorising 8 lesions is then deterministic; everything else is the small profile.
    net = LesionClassifierNet(replace(PROFILES["small"], dropout=0.0)).train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    extents = torch.full((len(labels), 3, 3), 0.5)
    for _ in range(60):
        logits = net(patches, clinical, extents).logits
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        accuracy = (net(patches, clinical, extents).logits.argmax(1) == labels).float().mean().item()
    assert np.mean(losses[-5:]) < 0.1 * np.mean(losses[:5])
    assert accuracy == 1.0


def test_augmentation_keeps_shape_and_range_and_treats_phases_alike() -> None:
    patches, _, _ = _toy_lesions(4)
    rng = np.random.default_rng(0)
    extents = torch.full((4, 3, 3), 0.5)
    out, out_extents = augment(patches, extents, rng, rotate_deg=15.0)
    assert out.shape == patches.shape and out.min() >= 0 and out.max() <= 1
    # Zoom changes the in-plane lesion extents alike in every phase, never the depth.
    assert torch.equal(out_extents[:, :, 0], extents[:, :, 0])
    assert ((out_extents[:, :, 1:] >= 0.45) & (out_extents[:, :, 1:] <= 0.55)).all()
    assert torch.equal(out_extents[:, 0], out_extents[:, 2])
    assert not torch.allclose(out, patches)
    # Geometry is shared by the phases: the blob stays where it is in every phase.
    centre = out[:, :, :, 6:10, 6:10].mean(dim=(2, 3, 4))
    corner = out[:, :, :, :3, :3].mean(dim=(2, 3, 4))
    expected = patches[:, :, :, 6:10, 6:10].mean(dim=(2, 3, 4)) - 0.5
    assert ((centre - corner) * expected.sign() > -0.05).all()


def test_clinical_vector_encodes_and_rejects_missing_or_absurd_values() -> None:
    vec = clinical_vector(CLINICAL)
    assert vec.dtype == np.float32 and vec.tolist() == pytest.approx([0.61, 1, 1, 0, 1, 0, 0])
    with pytest.raises(ClinicalInfoError, match=r"missing clinical field\(s\) \['cirrhosis'\]"):
        clinical_vector({k: v for k, v in CLINICAL.items() if k != "cirrhosis"})
    with pytest.raises(ClinicalInfoError, match="age 300 is outside the plausible range"):
        clinical_vector({**CLINICAL, "age": 300})
    with pytest.raises(ClinicalInfoError, match="age must be a number"):
        clinical_vector({**CLINICAL, "age": "sixty"})
    with pytest.raises(ClinicalInfoError, match="sex must be"):
        clinical_vector({**CLINICAL, "sex": "unknown"})
    with pytest.raises(ClinicalInfoError, match="hepatitis_b must be true/false"):
        clinical_vector({**CLINICAL, "hepatitis_b": 2})


def test_lesion_metrics_on_known_predictions() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 5])
    perfect = np.eye(7)[labels] * 0.9 + 0.1 / 7
    m = lesion_metrics(labels, perfect)
    assert m["accuracy"] == 1.0 and m["macro_auc"] == 1.0 and m["binary_auc"] == 1.0
    assert m["n"]["HC"] == 2 and np.trace(np.array(m["confusion"])) == 8
    swapped = perfect.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # HCC and ICC exchanged: still malignant
    m = lesion_metrics(labels, swapped)
    assert m["accuracy"] == 0.75 and m["binary_auc"] == 1.0 and m["confusion"][0][1] == 1


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from liaids.phantom.cohort import synthesize_dataset

    # qzh seed 20: both patients have lesions (HC and HCC main diagnoses).
    return synthesize_dataset(tmp_path_factory.mktemp("cls") / "ds", cases=2, seed=20, profile="qzh")


def test_training_follows_a_splits_file(phantom_dataset: Path, tmp_path: Path) -> None:
    seeded = tmp_path / "seeded"
    train_classification(phantom_dataset, seeded, "clinical", "small", epochs=1, seed=3)
    default = json.loads((seeded / "splits.json").read_text())
    swapped = {"train": default["val"], "val": default["train"]}
    (tmp_path / "swapped.json").write_text(json.dumps(swapped))
    out = tmp_path / "run"
    train_classification(
        phantom_dataset, out, "clinical", "small", epochs=1, seed=3, splits_file=tmp_path / "swapped.json"
    )
    assert json.loads((out / "splits.json").read_text()) == swapped
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["train_cases"] == 1 and config["training"]["val_cases"] == 1


def test_training_writes_artefacts_resumes_and_the_model_classifies(
    phantom_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    train_classification(phantom_dataset, out, "full", "small", epochs=1, jitter_copies=1, seed=3)
    assert_training_artefacts(out)
    assert (out / "last.pt").is_file() and len(list((out / "cache").glob("patches_*.npz"))) == 1
    splits = json.loads((out / "splits.json").read_text())
    assert len(splits["train"]) == 1 and len(splits["val"]) == 1
    train_classification(
        phantom_dataset, out, "full", "small", epochs=2, jitter_copies=1, seed=3, resume=True
    )
    log = json.loads((out / "log.json").read_text())
    assert [row["epoch"] for row in log] == [1, 2]
    assert 0.0 <= log[-1]["val_accuracy"] <= 1.0 and log[-1]["train_loss"] > 0

    clf = LesionClassifier.from_weights(out)
    assert clf.variant == "full" and clf.config["training"]["seed"] == 3
    ds = Dataset(phantom_dataset)
    case = ds.load_case(splits["val"][0])
    truth = {p: boxes_from_instances(case.lesions[p].array) for p in PHASES}
    lesions = match_lesions({p: list(truth[p].values()) for p in PHASES}, case.study.phases, case.liver)
    preds = clf.classify(case.study, lesions, case.info.clinical)
    assert len(preds) == len(lesions) > 0
    for pred in preds:
        assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        malignant = sum(pred.probabilities[t] for t in ("HCC", "ICC", "HM"))
        assert pred.malignant_probability == pytest.approx(malignant, abs=1e-6)
        assert pred.image_features.shape == (PROFILES["small"].image_dim,)
        assert pred.lesion_type in LESION_TYPES
    with pytest.raises(ClinicalInfoError, match="needs clinical information"):
        clf.classify(case.study, lesions, None)
    with pytest.raises(ClinicalInfoError, match="outside the plausible range"):
        clf.classify(case.study, lesions, {**CLINICAL, "age": -4})


def test_jitter_from_measured_box_errors_is_recorded_and_cached_apart(
    phantom_dataset: Path, tmp_path: Path
) -> None:
    errors = tmp_path / "detection.json"
    rows = [[0.2, 0.2, 0.0, 0.1, 0.0, 0.0, 25.0], [1.5, 1.5, 0.7, 0.0, 0.3, 0.0, 6.0]]
    errors.write_text(json.dumps({"box_error_at_2fp": {"samples": rows}}))
    cache = tmp_path / "cache"
    out = tmp_path / "measured"
    quick: dict = {"epochs": 1, "jitter_copies": 1, "seed": 3, "cache": cache}
    train_classification(phantom_dataset, out, "full", "small", box_errors=errors, **quick)
    recorded = json.loads((out / "config.json").read_text())["training"]["box_errors"]
    kept = json.loads((out / "box_errors.json").read_text())
    assert recorded["lesions"] == 2 and recorded["lesions_under_1cm"] == 1
    assert kept["samples"] == rows and kept["sha256_16"] == recorded["sha256_16"]
    train_classification(phantom_dataset, tmp_path / "gaussian", "full", "small", **quick)
    gaussian = json.loads((tmp_path / "gaussian" / "config.json").read_text())["training"]["box_errors"]
    assert gaussian == "gaussian"
    clinical = train_classification(
        phantom_dataset, tmp_path / "clin", "clinical", "small", box_errors=errors, **quick
    )
    assert json.loads((clinical / "config.json").read_text())["training"]["box_errors"].startswith("unused")
    assert not (clinical / "box_errors.json").exists()
    caches = sorted(cache.glob("patches_*.npz"))
    assert len(caches) == 2  # the same cases and seed, other jitter: never the same cache file
    with np.load(caches[0]) as a, np.load(caches[1]) as b:
        assert np.array_equal(a["copies"], b["copies"])
        exact = a["copies"] == 0
        assert np.array_equal(a["patches"][exact], b["patches"][exact])
        assert not np.array_equal(a["patches"][~exact], b["patches"][~exact])


def test_clinical_variant_reads_no_images_and_wrong_model_kinds_are_refused(
    phantom_dataset: Path, tmp_path: Path
) -> None:
    out = train_classification(phantom_dataset, tmp_path / "clin", "clinical", "small", epochs=1, seed=0)
    assert [f.name[:9] for f in (out / "cache").iterdir()] == ["clinical_"]  # no image was read
    clf = LesionClassifier.from_weights(out)
    [pred] = clf.classify({}, [{}], CLINICAL)  # no image needed
    assert pred.image_features is None and sum(pred.probabilities.values()) == pytest.approx(1.0)
    assert pred.lesion_probabilities is None and clf.context.weight == 0  # no context.json
    # With a patient context, two lesions of one study read each other: identical lesions sharpen.
    save_patient_context(out, PatientContext(1.0), {})
    clf = LesionClassifier.from_weights(out)
    first, second = clf.classify({}, [{}, {}], CLINICAL)
    assert first.lesion_probabilities == pytest.approx(pred.probabilities, abs=1e-6)
    top = max(pred.probabilities, key=pred.probabilities.__getitem__)
    assert first.probabilities[top] > pred.probabilities[top] and first.probabilities == second.probabilities
    assert sum(first.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    [alone] = clf.classify({}, [{}], CLINICAL)
    assert alone.lesion_probabilities is None and alone.probabilities == pytest.approx(pred.probabilities)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "kind": "liver-segmentation"}))
    with pytest.raises(ModelLoadError, match="expected a lesion-classification model"):
        LesionClassifier.from_weights(out)
    with pytest.raises(ModelLoadError, match="model file not found"):
        LesionClassifier.from_weights(tmp_path / "nothing")


def test_flip_average_is_the_mean_over_the_training_flips() -> None:
    from liaids.classification.patches import PATCH_PLANS
    from liaids.classification.predictor import IN_PLANE_FLIPS

    patches, clinical, _ = _toy_lesions(3)
    patches[:, :, :, :4, :6] = 1.0  # an asymmetric corner, so that flips matter
    extents = np.full((3, 3, 3), 0.5, np.float32)
    torch.manual_seed(0)
    net = LesionClassifierNet(PROFILES["small"]).eval()
    plain = LesionClassifier(net, PATCH_PLANS["small"], {}, torch.device("cpu"))
    flipped = replace(plain, flip_average=True)
    images, vec = patches.numpy(), clinical.numpy()
    each = [plain.predict(np.ascontiguousarray(np.flip(images, d)), vec, extents) for d in IN_PLANE_FLIPS]
    probs, feats = flipped.predict(images, vec, extents, batch=2)
    assert np.allclose(probs, np.mean([p for p, _ in each], axis=0), atol=1e-6)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    # An untrained network's probabilities barely move; its image features show that flips were read.
    assert feats is not None and np.allclose(feats, np.mean([f for _, f in each], axis=0), atol=1e-5)
    assert not np.allclose(feats, each[0][1], atol=1e-4)
