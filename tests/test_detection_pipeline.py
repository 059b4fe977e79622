"""Detection end to end on phantom cases: training, resume, volume inference, output JSON, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_training_artefacts
from liaids.dataset import Dataset
from liaids.detection.predictor import LesionDetector, detect
from liaids.errors import ModelLoadError
from liaids.io import write_nifti
from liaids.train.detection import train_detection
from liaids.types import Volume


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from liaids.phantom.cohort import synthesize_dataset

    return synthesize_dataset(tmp_path_factory.mktemp("det") / "ds", cases=2, seed=21, profile="qzh")


@pytest.fixture(scope="module")
def tiny_model(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("detmodel") / "run"
    train_detection(phantom, out, "cnn2d", "small", epochs=1, steps_per_epoch=2, seed=4)
    return out


def test_training_writes_artefacts_and_resumes(phantom: Path, tiny_model: Path) -> None:
    assert_training_artefacts(tiny_model)
    cached = sorted(p.name for p in (tiny_model / "cache").glob("*.npz"))
    assert len(cached) == 6  # two cases x three phases
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["kind"] == "lesion-detection" and config["network"]["backbone"] == "cnn2d"
    assert 0.0 <= config["val"]["val_recall_at_2fp"] <= 1.0 or np.isnan(config["val"]["val_recall_at_2fp"])
    train_detection(
        phantom, tiny_model, "cnn2d", "small", epochs=3, steps_per_epoch=2, val_every=1, seed=4, resume=True
    )
    log = json.loads((tiny_model / "log.json").read_text())
    assert [row["epoch"] for row in log] == [1, 2, 3]
    # Epoch 2 is validated on the way (val_every=1), epoch 3 at the end.
    assert "val_recall_at_2fp" in log[1] and "val_recall_at_2fp" in log[2]


def test_detect_writes_boxes_in_the_input_voxel_grid(phantom: Path, tiny_model: Path, tmp_path: Path) -> None:
    ds = Dataset(phantom)
    case = ds.load_case(ds.case_ids[0])
    ct = case.study["PV"]
    out = detect(
        phantom / ds.case_ids[0] / "image_PV.nii.gz",
        tmp_path / "out" / "det.json",
        liver_path=phantom / ds.case_ids[0] / "liver_PV.nii.gz",
        weights=tiny_model,
    )
    report = json.loads(out.read_text())
    assert report["schema"] == "liaids.detections" and report["version"] == "1.0"
    assert "Not for clinical use" in report["notice"]
    assert report["input"]["shape_ijk"] == list(reversed(ct.shape))
    for lesion in report["lesions"]:
        i0, j0, k0, i1, j1, k1 = lesion["bbox_ijk"]
        assert 0 <= i0 < i1 <= ct.shape[2] and 0 <= j0 < j1 <= ct.shape[1] and 0 <= k0 < k1 <= ct.shape[0]
        assert 0.0 <= lesion["score"] <= 1.0
        # Every kept lesion holds liver.
        assert case.liver["PV"].array[k0:k1, j0:j1, i0:i1].any()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["det.json"]


def test_flipped_storage_gives_the_same_lesions(phantom: Path, tiny_model: Path) -> None:
    """The same CT stored with i and j reversed: boxes come back mirrored, in that file's own indices."""
    ds = Dataset(phantom)
    case = ds.load_case(ds.case_ids[1])
    ct, liver = case.study["ART"], case.liver["ART"]
    detector = LesionDetector.load(tiny_model)
    # Keep every candidate so there is something to compare even for a barely trained model.
    detector = LesionDetector(
        detector.network,
        detector.config,
        detector.plan,
        type(detector.merge)(min_score_3d=0.0, min_score_2d=0.0),
        detector.device,
        detector.source,
    )
    detector.network.roi_heads.score_thresh = 0.0
    plain = detector.detect(ct, liver)
    d = np.asarray(ct.direction, float).reshape(3, 3)
    ni, nj = ct.shape[2], ct.shape[1]
    origin = np.asarray(ct.origin) + d @ (np.asarray(ct.spacing) * np.array([ni - 1, nj - 1, 0]))
    flipped_dir = (d * np.array([-1.0, -1.0, 1.0])).reshape(-1)
    flipped = Volume(ct.array[:, ::-1, ::-1].copy(), ct.spacing, tuple(origin), tuple(flipped_dir))
    mirrored = detector.detect(flipped, liver.array[:, ::-1, ::-1].copy())
    assert len(plain) == len(mirrored) > 0
    expected = sorted(
        (ni - b[3], nj - b[4], b[2], ni - b[0], nj - b[1], b[5]) for b in (p.bbox_ijk for p in plain)
    )
    assert sorted(tuple(m.bbox_ijk) for m in mirrored) == expected


def test_truncated_weights_end_with_one_line_and_no_output(
    phantom: Path, tiny_model: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_model.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.pt").write_bytes((tiny_model / "model.pt").read_bytes()[:500])
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        LesionDetector.load(broken)
    case_dir = phantom / Dataset(phantom).case_ids[0]
    out = tmp_path / "o" / "det.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "liaids.cli",
            "detect",
            str(case_dir / "image_NC.nii.gz"),
            "-o",
            str(out),
            "--liver",
            str(case_dir / "liver_NC.nii.gz"),
            "--weights",
            str(broken),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "checksum mismatch" in lines[0] and "model.pt" in lines[0]
    assert not out.exists()


def test_liver_mask_of_other_geometry_is_refused(phantom: Path, tiny_model: Path, tmp_path: Path) -> None:
    from liaids.errors import LiaidsError

    case_dir = phantom / Dataset(phantom).case_ids[0]
    wrong = Volume(np.zeros((3, 4, 5), np.uint8), spacing=(1.0, 1.0, 1.0))
    write_nifti(wrong, tmp_path / "liver.nii.gz")
    with pytest.raises(LiaidsError, match="geometry differs"):
        detect(case_dir / "image_PV.nii.gz", tmp_path / "d.json", tmp_path / "liver.nii.gz", tiny_model)
    assert not (tmp_path / "d.json").exists()
