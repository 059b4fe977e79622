"""``diagnose`` end to end on a phantom study (DICOM and NIfTI agree), its outputs, and bad inputs that end
with a one-line error and no OUTDIR."""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import MRImageStorage

from liaids.classification.patches import PATCH_PLANS
from liaids.codes import CLINICAL_FIELDS, LESION_TYPES, PHASES
from liaids.detection.merge import MergeSettings
from liaids.detection.preprocessing import DetectionPlan
from liaids.errors import ClinicalInfoError, LiaidsError, ModelLoadError, PhaseError, StudyReadError
from liaids.io import read_nifti, write_nifti
from liaids.model_store import builtin_model_dir, save_model
from liaids.networks.lesion_classifier import PROFILES, LesionClassifierNet
from liaids.networks.lesion_detector import build_detector, profile
from liaids.pipeline import diagnose, model_folders, parse_clinical_options
from liaids.pipeline.diagnose import Diagnosis, axial_diameter_mm, lesion_instance_mask
from liaids.types import Volume

WriteSeries = Callable[..., list[Path]]
# The package exports the function ``diagnose``, which shadows the module of the same name as an attribute.
diagnose_module = importlib.import_module("liaids.pipeline.diagnose")
HISTORY = dict.fromkeys(CLINICAL_FIELDS[2:], False)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights bundle: untrained detector and classifier (the shipped liver model is used).

    The detector keeps at most four boxes per slice and every score, so an untrained network still yields a
    few deterministic lesions to match, classify and report.
    """
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    det_cfg = replace(profile("cnn2d", "small"), box_score_threshold=0.0, box_detections=4)
    save_model(
        root / "detector",
        build_detector(det_cfg).state_dict(),
        {
            "kind": "lesion-detection",
            "profile": "small",
            "network": det_cfg.to_dict(),
            # A coarse grid (2 mm pixels, 5 mm slices) keeps the test fast; real models use PLANS.
            "plan": DetectionPlan(pixel_mm=2.0, slice_mm=5.0).to_dict(),
            "merge": asdict(MergeSettings(min_score_2d=0.0, min_score_3d=0.0)),
        },
    )
    torch.manual_seed(1)
    save_model(
        root / "classifier",
        LesionClassifierNet(PROFILES["small"]).state_dict(),
        {
            "kind": "lesion-classification",
            "profile": "small",
            "variant": "full",
            "network": PROFILES["small"].to_dict(),
            "plan": PATCH_PLANS["small"].to_dict(),
            "labels": list(LESION_TYPES),
            "clinical_fields": list(CLINICAL_FIELDS),
            "triage": {"threshold": 0.3, "target_npv": 0.99, "details": {"cohort": "test"}},
        },
    )
    return root


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same phantom patient written as NIfTI and as DICOM (profile qzh, seed 5)."""
    from liaids.phantom.cohort import synthesize_dataset

    root = tmp_path_factory.mktemp("phantom")
    nifti = synthesize_dataset(root / "nifti", cases=1, seed=5, profile="qzh", fmt="nifti")
    dicom = synthesize_dataset(root / "dicom", cases=1, seed=5, profile="qzh", fmt="dicom")
    return {"nifti": nifti / "qzh_0000", "dicom": dicom / "qzh_0000"}


@pytest.fixture(scope="module")
def runs(phantom: dict[str, Path], bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two runs: the DICOM study folder (age and sex from DICOM, history as options) and the three NIfTI
    files in a shuffled order (clinical fields from the case.json file). The DICOM run's Diagnosis is kept."""
    out = tmp_path_factory.mktemp("runs")
    calls: list[tuple[str, float]] = []
    kept: list[Diagnosis] = []
    original = diagnose_module.run_diagnosis

    def keep(*args: Any, **kwargs: Any) -> Diagnosis:
        kept.append(original(*args, **kwargs))
        return kept[-1]

    case = json.loads((phantom["nifti"] / "case.json").read_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diagnose_module, "run_diagnosis", keep)
        dicom_out = diagnose(
            phantom["dicom"] / "dicom",
            out / "dicom",
            clinical=parse_clinical_options(**{k: case["clinical"][k] for k in CLINICAL_FIELDS[2:]}),
            weights=bundle,
            progress=lambda message, fraction: calls.append((message, fraction)),
        )
    nifti_out = diagnose(
        [phantom["nifti"] / f"image_{p}.nii.gz" for p in ("PV", "ART", "NC")],
        out / "nifti",
        clinical=phantom["nifti"] / "case.json",
        weights=bundle,
    )
    return {
        "dicom": dicom_out,
        "nifti": nifti_out,
        "progress": calls,
        "diagnosis": kept[0],
        "reports": {
            k: json.loads((v / "report.json").read_text())
            for k, v in (("dicom", dicom_out), ("nifti", nifti_out))
        },
    }


def test_dicom_and_nifti_give_the_same_lesions(runs: dict[str, Any]) -> None:
    a, b = runs["reports"]["dicom"], runs["reports"]["nifti"]
    assert a["input"]["kind"] == "dicom" and b["input"]["kind"] == "nifti"
    assert a["clinical"]["values"] == b["clinical"]["values"]
    assert a["clinical"]["sources"]["age"] == "DICOM" and b["clinical"]["sources"]["age"].startswith(
        "clinical file"
    )
    assert len(a["lesions"]) >= 1  # the untrained detector still finds some candidates
    assert len(a["lesions"]) == len(b["lesions"])
    for la, lb in zip(a["lesions"], b["lesions"], strict=True):
        assert (la["id"], la["type"], la["category"], la["found_in"]) == (
            lb["id"],
            lb["type"],
            lb["category"],
            lb["found_in"],
        )
        for p in PHASES:
            assert la["phases"][p]["bbox_ijk"] == lb["phases"][p]["bbox_ijk"]
            assert la["phases"][p]["voxels"] == lb["phases"][p]["voxels"]
        for t in LESION_TYPES:
            assert la["probabilities"][t] == pytest.approx(lb["probabilities"][t], abs=1e-3)
    assert a["diagnosis"] == b["diagnosis"] and a["triage"]["risk"] == b["triage"]["risk"]
    for p in PHASES:
        assert np.array_equal(
            read_nifti(runs["dicom"] / f"lesions_{p}.nii.gz").array,
            read_nifti(runs["nifti"] / f"lesions_{p}.nii.gz").array,
        )


def test_report_describes_the_run(runs: dict[str, Any], phantom: dict[str, Path], bundle: Path) -> None:
    report = runs["reports"]["dicom"]
    assert report["schema"] == "liaids.diagnosis" and report["version"] == "2.3"
    assert report["software"]["device"] == "cpu" and report["software"]["torch"] != "unknown"
    assert "Not for clinical use" in report["notice"]
    assert report["study"]["patient_id"] == "qzh_0000"
    assert report["study"]["phase_assignment"]["method"] == "tags+images"
    assert (
        report["triage"]["threshold"] == 0.3 and report["triage"]["threshold_source"] == "classifier config"
    )
    assert report["models"]["detector"]["folder"] == str(bundle / "detector")
    assert report["models"]["liver"]["folder"] == str(builtin_model_dir("liver_small"))
    assert all(len(m["sha256"]) == 64 for m in report["models"].values())
    stages = ["load_models", "read", "segmentation", "detection", "matching", "classification"]
    assert list(report["timings_s"])[: len(stages)] == stages and report["timings_s"]["total"] > 0
    for p in PHASES:
        ph = report["phases"][p]
        assert ph["liver_volume_ml"] > 500  # the shipped model finds the phantom's liver
        shape = ph["shape_ijk"]
        for les in report["lesions"]:
            i0, j0, k0, i1, j1, k1 = les["phases"][p]["bbox_ijk"]
            assert 0 <= i0 < i1 <= shape[0] and 0 <= j0 < j1 <= shape[1] and 0 <= k0 < k1 <= shape[2]
    deciding = report["diagnosis"]["deciding_lesion"]
    assert deciding in {les["id"] for les in report["lesions"]}
    assert report["triage"]["risk"] in ("low", "high") and report["triage"]["reason"]


def test_masks_match_the_report(runs: dict[str, Any], phantom: dict[str, Path]) -> None:
    out, report = runs["dicom"], runs["reports"]["dicom"]
    diagnosis: Diagnosis = runs["diagnosis"]
    ids = {les["id"] for les in report["lesions"]}
    for p in PHASES:
        lesions = read_nifti(out / f"lesions_{p}.nii.gz")
        liver = read_nifti(out / f"liver_{p}.nii.gz")
        assert lesions.same_geometry(diagnosis.input.study[p], tol=1e-3)
        assert set(np.unique(lesions.array).tolist()) - {0} == ids
        assert set(np.unique(liver.array).tolist()) == {0, 1}
        for les in report["lesions"]:
            assert int((lesions.array == les["id"]).sum()) == les["phases"][p]["voxels"]
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 3 * len(report["lesions"])
    assert "Not for clinical use" in html


def test_progress_reports_every_stage(runs: dict[str, Any]) -> None:
    calls = runs["progress"]
    fractions = [f for _, f in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    messages = " | ".join(m for m, _ in calls)
    for needle in (
        "loading models",
        "reading the study",
        "segmenting the liver (ART)",
        "detecting lesions (PV)",
        "matching",
        "classifying",
        "writing the report",
    ):
        assert needle in messages


def test_output_folder_rules(
    runs: dict[str, Any],
    phantom: dict[str, Path],
    bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = [phantom["nifti"] / f"image_{p}.nii.gz" for p in PHASES]
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("previous run")
    with pytest.raises(LiaidsError, match="not empty"):
        diagnose(files, target, clinical=phantom["nifti"] / "case.json", weights=bundle)
    # The pipeline itself is replaced by the kept result: only the output handling is under test here.
    monkeypatch.setattr(diagnose_module, "run_diagnosis", lambda *a, **k: runs["diagnosis"])
    monkeypatch.setattr("liaids.report.render_html", _fail)
    with pytest.raises(RuntimeError, match="disk full"):
        diagnose(files, target, clinical=phantom["nifti"] / "case.json", weights=bundle, overwrite=True)
    assert [p.name for p in target.iterdir()] == ["old.txt"]  # untouched by the failed run
    monkeypatch.undo()
    monkeypatch.setattr(diagnose_module, "run_diagnosis", lambda *a, **k: runs["diagnosis"])
    diagnose(files, target, clinical=phantom["nifti"] / "case.json", weights=bundle, overwrite=True)
    assert not (target / "old.txt").exists() and (target / "report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind


def _fail(*_args: Any, **_kwargs: Any) -> str:
    raise RuntimeError("disk full")


# --------------------------------------------------------------------------------------------------
# Bad inputs: one-line LiaidsError naming the file, and no OUTDIR
# --------------------------------------------------------------------------------------------------


def _write_study(
    root: Path, volumes: dict[str, Volume], write_series: WriteSeries, specs: list[tuple[str, dict[str, Any]]]
) -> Path:
    for number, (phase, overrides) in enumerate(specs, start=1):
        kwargs: dict[str, Any] = {
            "phase": phase,
            "series_number": number,
            "series_description": {"NC": "Non-contrast", "ART": "Arterial", "PV": "Portal venous"}[phase],
            "contrast_agent": None if phase == "NC" else "Iohexol 350",
            "acquisition_time": {"NC": "100000", "ART": "100035", "PV": "100110"}[phase],
            "series_uid": f"1.2.826.0.1.3680043.10.1.1.{number}",
            **overrides,
        }
        write_series(volumes[phase], root / f"series{number:02d}", **kwargs)
    return root


def _fails_cleanly(
    tmp_path: Path, expected: type[LiaidsError], names: Path, pattern: str, **kwargs: Any
) -> str:
    out = tmp_path / "out"
    with pytest.raises(expected, match=pattern) as info:
        diagnose(out_dir=out, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(names) in message
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    return message


CLINICAL = {"age": 60, "sex": "M", **HISTORY}


def test_missing_phase(
    tmp_path: Path, phase_volumes: dict[str, Volume], write_series: WriteSeries, bundle: Path
) -> None:
    root = _write_study(tmp_path / "study", phase_volumes, write_series, [("NC", {}), ("PV", {})])
    _fails_cleanly(
        tmp_path, PhaseError, root, r"missing phase\(s\) ART", input=root, clinical=CLINICAL, weights=bundle
    )


def test_two_series_claim_a_phase(
    tmp_path: Path, phase_volumes: dict[str, Volume], write_series: WriteSeries, bundle: Path
) -> None:
    specs = [("NC", {}), ("ART", {}), ("PV", {"series_description": "Arterial 2"})]
    root = _write_study(tmp_path / "study", phase_volumes, write_series, specs)
    _fails_cleanly(
        tmp_path, PhaseError, root, "2 series claim phase ART", input=root, clinical=CLINICAL, weights=bundle
    )


def test_non_ct_series(
    tmp_path: Path, phase_volumes: dict[str, Volume], write_series: WriteSeries, bundle: Path
) -> None:
    root = _write_study(
        tmp_path / "study", phase_volumes, write_series, [("NC", {}), ("ART", {}), ("PV", {})]
    )
    for path in sorted((root / "series03").iterdir()):
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.save_as(path)
    message = _fails_cleanly(
        tmp_path,
        StudyReadError,
        root / "series03",
        "modality MR, not CT",
        input=root,
        clinical=CLINICAL,
        weights=bundle,
    )
    assert "'Portal venous'" in message


def test_mismatched_patient_ids(
    tmp_path: Path, phase_volumes: dict[str, Volume], write_series: WriteSeries, bundle: Path
) -> None:
    specs = [("NC", {}), ("ART", {}), ("PV", {"patient_id": "SOMEONE-ELSE"})]
    root = _write_study(tmp_path / "study", phase_volumes, write_series, specs)
    _fails_cleanly(
        tmp_path,
        PhaseError,
        root,
        "mismatched PatientID.*SOMEONE-ELSE",
        input=root,
        clinical=CLINICAL,
        weights=bundle,
    )


def test_corrupt_dicom_file(
    tmp_path: Path, phase_volumes: dict[str, Volume], write_series: WriteSeries, bundle: Path
) -> None:
    root = _write_study(
        tmp_path / "study", phase_volumes, write_series, [("NC", {}), ("ART", {}), ("PV", {})]
    )
    victim = sorted((root / "series02").iterdir())[4]
    victim.write_bytes(victim.read_bytes()[:-2000])  # cut inside the pixel data
    _fails_cleanly(
        tmp_path,
        StudyReadError,
        victim,
        "truncated or corrupt",
        input=root,
        clinical=CLINICAL,
        weights=bundle,
    )


def test_corrupt_nifti_file(tmp_path: Path, phase_volumes: dict[str, Volume], bundle: Path) -> None:
    files = []
    for p in PHASES:
        files.append(tmp_path / f"scan_{p}.nii.gz")
        write_nifti(phase_volumes[p], files[-1])
    files[1].write_bytes(files[1].read_bytes()[:-200])
    _fails_cleanly(
        tmp_path, StudyReadError, files[1], "truncated", input=files, clinical=CLINICAL, weights=bundle
    )


def test_truncated_weights(tmp_path: Path, phase_volumes: dict[str, Volume], bundle: Path) -> None:
    broken = tmp_path / "weights"
    shutil.copytree(bundle, broken)
    weights = broken / "classifier" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    files = []
    for p in PHASES:
        files.append(tmp_path / f"scan_{p}.nii.gz")
        write_nifti(phase_volumes[p], files[-1])
    _fails_cleanly(
        tmp_path, ModelLoadError, weights, "checksum mismatch", input=files, clinical=CLINICAL, weights=broken
    )


def test_missing_clinical_history(tmp_path: Path, phase_volumes: dict[str, Volume], bundle: Path) -> None:
    files = []
    for p in PHASES:
        files.append(tmp_path / f"scan_{p}.nii.gz")
        write_nifti(phase_volumes[p], files[-1])
    out = tmp_path / "out"
    with pytest.raises(ClinicalInfoError, match="missing clinical field") as info:
        diagnose(files, out, clinical={"age": 50, "sex": "F"}, weights=bundle)
    assert "--missing-history absent" in str(info.value) and not out.exists()
    with pytest.raises(LiaidsError, match="unknown device"):
        diagnose(files, out, clinical=CLINICAL, weights=bundle, device="tpu")


def test_model_folders(bundle: Path, tmp_path: Path) -> None:
    assert model_folders(bundle) == {
        "liver": builtin_model_dir("liver_small"),
        "detector": bundle / "detector",
        "classifier": bundle / "classifier",
    }
    assert model_folders([bundle / "classifier"])["classifier"] == bundle / "classifier"
    assert model_folders({"detector": bundle / "detector"})["detector"] == bundle / "detector"
    with pytest.raises(ModelLoadError, match="two classifier models"):
        model_folders([bundle, _copy(bundle / "classifier", tmp_path / "c")])
    with pytest.raises(ModelLoadError, match="neither a model folder"):
        model_folders(tmp_path)
    with pytest.raises(ModelLoadError, match="unknown model role"):
        model_folders({"segmenter": bundle})


def test_the_verifier_rescores_matched_lesions(
    bundle: Path, phantom: dict[str, Path], runs: dict[str, Any], tmp_path: Path
) -> None:
    """A verifier in the detector folder replaces each lesion's score before the operating point; without
    it, an operating point set on verified scores is refused."""
    from liaids.classification.verification import FEATURES, LesionVerifier
    from liaids.pipeline.diagnose import DiagnosisModels

    weights = _copy(bundle, tmp_path / "weights")
    n = len(FEATURES)
    coef = tuple(1.0 if f == "score_logit" else 0.0 for f in FEATURES)
    # verified = sigmoid(logit(detector score) - 1): lower than the detector's, same order.
    LesionVerifier((0.0,) * n, (1.0,) * n, coef, -1.0, min_score=0.0).save(weights / "detector")
    out = _diagnose_nifti(phantom, weights, tmp_path / "out")
    report = json.loads((out / "report.json").read_text())
    assert report["models"]["detector"]["verifier"]["file"] == str(weights / "detector" / "verifier.json")
    assert "verification" in report["timings_s"]
    plain = runs["reports"]["nifti"]["lesions"]
    assert len(report["lesions"]) == len(plain) > 0
    for les in report["lesions"]:
        raw = min(max(les["detector_score"], 1e-4), 1 - 1e-4)
        expected = 1 / (1 + np.exp(1 - np.log(raw / (1 - raw))))
        assert les["detection_score"] == pytest.approx(expected, abs=2e-4)
        assert les["detector_score"] == max(v["detection_score"] or 0.0 for v in les["phases"].values())
    assert sorted(les["detector_score"] for les in report["lesions"]) == sorted(
        les["detection_score"] for les in plain
    )
    (weights / "detector" / "verifier.json").unlink()
    config = json.loads((weights / "detector" / "config.json").read_text())
    config["operating_point"] = {"score": 0.5, "applies_to": "verified score"}
    (weights / "detector" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"verifier\.json is missing"):
        DiagnosisModels.load(weights)


def test_the_triage_reads_findings_below_the_operating_point(
    bundle: Path, phantom: dict[str, Path], runs: dict[str, Any], tmp_path: Path
) -> None:
    """Candidates between the triage's detection point and the operating point are findings: read by the
    triage (each on its own probabilities), listed in the report's triage, never reported as lesions."""
    from liaids.classification.context import PatientContext
    from liaids.pipeline.decision import LesionCall, calls_at_operating_point, decide, finding_calls

    plain = runs["reports"]["nifti"]["lesions"]  # every candidate (the bundle has no operating point)
    scores = sorted((les["detection_score"] for les in plain), reverse=True)
    assert len(scores) >= 3 and scores[0] - scores[1] > 2e-4
    # Between the report's rounded scores, so that rounding cannot move a candidate across a point.
    operating, point = (scores[0] + scores[1]) / 2, scores[-1] - 1e-4
    weights = _copy(bundle, tmp_path / "weights")
    detector_config = json.loads((weights / "detector" / "config.json").read_text())
    detector_config["operating_point"] = {"score": operating, "applies_to": "detector score"}
    (weights / "detector" / "config.json").write_text(json.dumps(detector_config))
    classifier_config = json.loads((weights / "classifier" / "config.json").read_text())
    classifier_config["triage"]["detection_threshold"] = point
    (weights / "classifier" / "config.json").write_text(json.dumps(classifier_config))
    out = _diagnose_nifti(phantom, weights, tmp_path / "out")
    report = json.loads((out / "report.json").read_text())
    triage = report["triage"]
    assert [les["detection_score"] for les in report["lesions"]] == [s for s in scores if s >= operating]
    findings = triage["findings"]
    assert [f["detection_score"] for f in findings] == [s for s in scores if point <= s < operating]
    assert [f["id"] for f in findings] == [f"F{n}" for n in range(1, len(findings) + 1)]
    assert triage["detection_threshold"] == point and "findings" in triage["rule"]
    # What the pipeline read equals what the operating-point scan simulates from the every-candidate run.
    simulated = finding_calls(plain, operating, point)
    assert [(c.lesion_type, round(c.malignant_probability, 3)) for c in simulated] == [
        (f["type"], round(f["malignant_probability"], 3)) for f in findings
    ]
    context = PatientContext(weight=0.0)
    expected = decide(calls_at_operating_point(plain, operating, context), 0.3, findings=simulated)
    assert triage["risk"] == expected.risk
    assert [f["category"] for f in findings] == [expected.finding_categories[c.lesion_id] for c in simulated]
    calls = [LesionCall(les["id"], les["type"], les["malignant_probability"]) for les in report["lesions"]]
    assert report["diagnosis"]["diagnosis"] == decide(calls, 0.3).diagnosis  # findings never decide it
    html = (out / "report.html").read_text()
    assert "The triage also read" in html


def _diagnose_nifti(phantom: dict[str, Path], weights: Path, out: Path) -> Path:
    """The phantom study's three NIfTI files diagnosed with these weights, clinical fields from case.json."""
    return diagnose(
        [phantom["nifti"] / f"image_{p}.nii.gz" for p in PHASES],
        out,
        clinical=phantom["nifti"] / "case.json",
        weights=weights,
    )


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------------------------------
# Lesion masks and sizes
# --------------------------------------------------------------------------------------------------


def test_instance_masks_never_overwrite() -> None:
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[1:3, 2:6, 2:6] = 2
    instances, sources = lesion_instance_mask(
        labels, [(1, (0, 0, 0, 5, 5, 4)), (2, (3, 3, 0, 8, 8, 4)), (3, (8, 8, 3, 10, 10, 4))]
    )
    assert sources == {1: "segmentation", 2: "segmentation", 3: "ellipsoid"}
    assert int((instances == 1).sum()) == 2 * 3 * 3  # lesion voxels inside box 1
    assert int((instances == 2).sum()) == 2 * 3 * 3 - 2 * 2 * 2  # segmented voxels of box 2 not in box 1
    assert int((instances == 3).sum()) == 2 * 2 * 1  # a box this small is all ellipsoid


def test_unsegmented_lesion_is_the_ellipsoid_inscribed_in_its_box() -> None:
    labels = np.zeros((30, 60, 60), np.uint8)
    instances, sources = lesion_instance_mask(labels, [(1, (10, 20, 5, 50, 40, 25))])
    mask = instances == 1
    assert sources == {1: "ellipsoid"}
    assert mask.sum() == pytest.approx(np.pi / 6 * 40 * 20 * 20, rel=0.03)
    # It touches the middle of every face of the box and none of its corners.
    assert mask[15, 30, 10] and mask[15, 30, 49] and mask[15, 20, 30] and mask[15, 39, 30]
    assert mask[5, 30, 30] and mask[24, 30, 30]
    assert not mask[5, 20, 10] and not mask[24, 39, 49]
    assert not mask[:, :20].any() and not mask[:25, :, :10].any()


def test_axial_diameter() -> None:
    mask = np.zeros((3, 40, 40), bool)
    yy, xx = np.mgrid[0:40, 0:40]
    mask[1] = (yy - 20) ** 2 + (xx - 20) ** 2 <= 10**2  # disc of radius 10 px
    assert axial_diameter_mm(mask, (0.5, 0.5, 5.0)) == pytest.approx(21 * 0.5, abs=0.3)
    line = np.zeros((1, 5, 200), bool)
    line[0, 2, 10:110] = True  # collinear edge points: the hull step is skipped
    assert axial_diameter_mm(line, (1.0, 1.0, 1.0)) == pytest.approx(100.0)
    assert axial_diameter_mm(np.zeros((2, 3, 3), bool), (1.0, 1.0, 1.0)) is None


def test_verifier_examples_come_from_the_runs_reports(
    runs: dict[str, Any], phantom: dict[str, Path], tmp_path: Path
) -> None:
    """``liaids train verifier`` reads one example per reported lesion above min_score, with the features
    the pipeline would compute from the case's images and the run's liver masks."""
    from liaids.classification.matching import MatchedLesion
    from liaids.classification.verification import lesion_features
    from liaids.dataset import Dataset
    from liaids.train.verifier import train_verifier, verifier_examples

    case_id = phantom["nifti"].name
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    (predictions / case_id).symlink_to(runs["nifti"])
    dataset = Dataset(phantom["nifti"].parent)
    lesions = runs["reports"]["nifti"]["lesions"]
    min_score = float(np.median([les["detection_score"] for les in lesions]))
    features, labels = verifier_examples(dataset, predictions, [case_id], min_score)
    kept = [les for les in lesions if les["detection_score"] >= min_score]
    assert len(labels) == len(features) == len(kept) > 0
    case = dataset.load_case(case_id)
    livers = {p: read_nifti(runs["nifti"] / f"liver_{p}.nii.gz").array for p in PHASES}
    expected = lesion_features(case.study.phases, livers, MatchedLesion.from_report_lesion(kept[0]))
    np.testing.assert_allclose(features[0], expected)
    # Runs whose scores are already verified, or that dropped candidates, are refused.
    for key, value, message in (
        ("verifier", {"file": "verifier.json"}, "run made with a lesion verifier"),
        ("operating_score", min_score + 0.5, "fit on runs that keep every candidate"),
    ):
        other = tmp_path / f"other_{key}" / case_id
        other.mkdir(parents=True)
        report = json.loads((runs["nifti"] / "report.json").read_text())
        report["models"]["detector"][key] = value
        (other / "report.json").write_text(json.dumps(report))
        with pytest.raises(LiaidsError, match=message):
            verifier_examples(dataset, other.parent, [case_id], min_score)
    if labels.all() or not labels.any():  # an untrained detector: one class only, a clear error
        with pytest.raises(LiaidsError, match="both true lesions and false positives"):
            train_verifier(dataset.root, predictions, tmp_path / "out", min_score=min_score)
    else:
        verifier = train_verifier(dataset.root, predictions, tmp_path / "out", min_score=min_score)
        assert verifier.source["examples"] == len(labels) and (tmp_path / "out" / "verifier.json").is_file()
