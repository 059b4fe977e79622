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
from liaids.errors import LiaidsError, ModelLoadError
from liaids.io import write_nifti
from liaids.train.detection import TrainConfig, _load_cached, _slab_position, train_detection
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
    assert "val_recall_at_2fp_small" in log[2] and log[2]["val_lesions_small"] <= log[2]["val_lesions"]


def test_unknown_lesion_sampling_is_refused(phantom: Path, tmp_path: Path) -> None:
    with pytest.raises(LiaidsError, match="unknown lesion sampling 'voxel'"):
        train_detection(phantom, tmp_path / "run", "cnn2d", "small", epochs=1, lesion_sampling="voxel")


def test_anchor_scales_override_is_recorded_and_loaded(
    phantom: Path, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    train_detection(
        phantom, out, "cnn2d", "small", epochs=1, steps_per_epoch=1, val_every=0, seed=4,
        anchor_scales=[1, 2, 3], cache=tiny_model / "cache",
    )  # fmt: skip
    assert json.loads((out / "config.json").read_text())["network"]["anchor_scales"] == [1.0, 2.0, 3.0]
    network = LesionDetector.load(out, candidate_filter=False).network
    assert network.rpn.head.cls_logits.out_channels == 3 * 3  # three sizes x three ratios per position
    with pytest.raises(LiaidsError, match="anchor scales must be positive"):
        train_detection(phantom, tmp_path / "bad", "cnn2d", "small", epochs=1, anchor_scales=[1, 0])


def test_lesion_sampling_weighs_every_lesion_alike(tmp_path: Path) -> None:
    """A 30-slice lesion and a 2-slice one: slice sampling centres ~30/32 of the slabs on the large one,
    lesion sampling half on each, small sampling by the inverse in-plane side (30 and 4 pixels)."""
    labels = np.zeros((40, 64, 64), np.int16)
    labels[2:32, 10:40, 10:40] = 1
    labels[35:37, 50:54, 50:54] = 2
    path = tmp_path / "case_PV.npz"
    np.savez_compressed(path, image=np.zeros(labels.shape, np.uint8), labels=labels)
    phase = _load_cached(path)
    assert [(i, ks.tolist()) for i, ks in phase.lesion_extents] == [(1, list(range(2, 32))), (2, [35, 36])]
    assert phase.lesion_sides == [30.0, 4.0]

    def share_on_small(sampling: str) -> float:
        cfg = TrainConfig(lesion_fraction=1.0, lesion_sampling=sampling)
        rng = np.random.default_rng(0)
        draws = [_slab_position([phase], cfg, rng) for _ in range(2000)]
        for _ph, k, (row, col) in draws:
            assert labels[k, int(row), int(col)] > 0  # centred on the lesion drawn
        return float(np.mean([k >= 35 for _ph, k, _c in draws]))

    assert abs(share_on_small("slice") - 2 / 32) < 0.02
    assert abs(share_on_small("lesion") - 0.5) < 0.05
    assert abs(share_on_small("small") - (1 / 4) / (1 / 4 + 1 / 30)) < 0.03


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
    assert report["schema"] == "liaids.detections" and report["version"] == "1.2"
    assert report["software"]["device"] == "cpu" and report["software"]["torch"] != "unknown"
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
    detector = _keep_everything(LesionDetector.load(tiny_model))
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


def _keep_everything(detector: LesionDetector) -> LesionDetector:
    """The detector with its score floors at 0, so a barely trained model still proposes candidates."""
    detector.network.roi_heads.score_thresh = 0.0
    return LesionDetector(
        detector.network,
        detector.config,
        detector.plan,
        type(detector.merge)(min_score_3d=0.0, min_score_2d=0.0),
        detector.device,
        detector.source,
    )


def test_multi_scale_testing_pools_the_boxes_of_every_grid(phantom: Path, tiny_model: Path) -> None:
    from dataclasses import replace

    ds = Dataset(phantom)
    case = ds.load_case(ds.case_ids[0])
    ct, liver = case.study["PV"].to_canonical(), case.liver["PV"].to_canonical().array > 0
    detector = _keep_everything(LesionDetector.load(tiny_model, candidate_filter=False))
    px = detector.plan.pixel_mm

    def with_grids(*sizes: float) -> LesionDetector:
        return replace(detector, plan=replace(detector.plan, test_pixel_mm=sizes))

    plain = detector.candidates(ct, liver)
    # The same grid twice: every 2D box twice, so the same lesions from twice the boxes.
    twice = with_grids(px, px).candidates(ct, liver)
    assert len(plain) > 0
    assert [(c.box_kji.tolist(), c.score) for c in twice] == [(c.box_kji.tolist(), c.score) for c in plain]
    assert [c.n_boxes for c in twice] == [2 * c.n_boxes for c in plain]
    # A finer grid's boxes come back in the first grid's pixels, after the first grid's own boxes.
    _, fine, _, fine_crop = with_grids(px / 2)._slice_boxes(ct, liver)
    _, both, _, crop = with_grids(px, px / 2)._slice_boxes(ct, liver)
    sx, sy = crop.shape[2] / fine_crop.shape[2], crop.shape[1] / fine_crop.shape[1]
    assert sx == pytest.approx(0.5, abs=0.01) and sy == pytest.approx(0.5, abs=0.01)
    assert len(fine) > 0 and np.allclose(both[len(both) - len(fine) :], fine * [sx, sy, sx, sy], atol=1e-4)
    with pytest.raises(ValueError, match="must be positive"):
        replace(detector.plan, test_pixel_mm=(1.0, 0.0))


def test_candidates_are_labelled_by_the_hit_rule(phantom: Path, tiny_model: Path) -> None:
    from liaids.detection.candidates import CandidatePatchPlan
    from liaids.evaluate.detection import is_hit
    from liaids.train.candidate_filter import collect_case

    ds = Dataset(phantom)
    detector = _keep_everything(LesionDetector.load(tiny_model, candidate_filter=False))
    plan = CandidatePatchPlan(min_score=0.0)
    arrays = collect_case(ds, ds.case_ids[0], detector, plan)
    n_truth = len(ds.load_case(ds.case_ids[0]).info.lesions)
    for phase in ("NC", "ART", "PV"):
        boxes, labels = arrays[f"boxes_{phase}"], arrays[f"labels_{phase}"]
        assert len(boxes) > 0
        assert arrays[f"patches_{phase}"].shape == (len(boxes), 2, *plan.shape)
        assert arrays[f"truth_{phase}"].shape[0] <= n_truth
        expected = is_hit(boxes, arrays[f"truth_{phase}"]).any(axis=1)
        assert np.array_equal(labels, expected)
        assert np.all(arrays[f"scalars_{phase}"][:, 0] >= 0.0)


def _fake_cache(cache: Path, case_ids: list[str]) -> None:
    """Cached candidates per case: a bright ball (the true lesion) and three dark decoys per phase."""
    k, j, i = np.meshgrid(np.arange(16), np.arange(48), np.arange(48), indexing="ij")
    ball = (((k - 8) * 3) ** 2 + (j - 24) ** 2 + (i - 24) ** 2) <= 64
    rng = np.random.default_rng(1)
    cache.mkdir(parents=True)
    for case_id in case_ids:
        arrays = {}
        for phase in ("NC", "ART", "PV"):
            truth = np.array([[5, 20, 20, 9, 40, 40]])
            boxes = np.array([truth[0], truth[0] + 50, truth[0] + 100, truth[0] + 150])
            ct = [np.where(ball, 230 if n == 0 else 60, 120) for n in range(4)]
            arrays.update(
                {
                    f"patches_{phase}": np.stack([np.stack([c, np.full_like(c, 255)]) for c in ct]).astype(
                        np.uint8
                    ),
                    f"scalars_{phase}": np.stack([rng.random(4), np.zeros(4)], axis=1).astype(np.float32),
                    f"boxes_{phase}": boxes,
                    f"labels_{phase}": np.array([True, False, False, False]),
                    f"truth_{phase}": truth,
                    f"diameters_{phase}": np.array([20.0]),
                }
            )
        np.savez_compressed(cache / f"{case_id}.npz", **arrays)


def test_filter_training_writes_a_model_the_detector_uses(
    phantom: Path, tiny_model: Path, tmp_path: Path
) -> None:
    import shutil

    from liaids.train.candidate_filter import train_candidate_filter

    detector = tmp_path / "detector"
    shutil.copytree(tiny_model, detector, ignore=shutil.ignore_patterns("cache", "last.pt", "splits.json"))
    ds = Dataset(phantom)
    _fake_cache(tmp_path / "cache", ds.case_ids)
    out = tmp_path / "filter"
    train_candidate_filter(
        phantom, detector, out, epochs=2, steps_per_epoch=3, batch=8, cache=tmp_path / "cache", seed=3
    )
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "candidate-filter" and config["training"]["train_cases"] == 1
    assert 0.0 <= config["val"]["val_cpm"] <= 1.0
    train_candidate_filter(
        phantom,
        detector,
        out,
        epochs=3,
        steps_per_epoch=3,
        batch=8,
        cache=tmp_path / "cache",
        seed=3,
        resume=True,
    )
    assert [row["epoch"] for row in json.loads((out / "log.json").read_text())] == [1, 2, 3]

    shutil.copytree(out, detector / "candidate_filter", ignore=shutil.ignore_patterns("last.pt", "log.*"))
    loaded = LesionDetector.load(detector)
    assert loaded.candidate_filter is not None
    assert loaded.source["candidate_filter"]["sha256"]
    assert LesionDetector.load(detector, candidate_filter=False).candidate_filter is None
    case = ds.load_case(ds.case_ids[1])
    plain = _keep_everything(LesionDetector.load(detector, candidate_filter=False))
    filtered = _keep_everything(loaded)
    filtered.candidate_filter = loaded.candidate_filter
    filtered.candidate_filter.plan = type(filtered.candidate_filter.plan)(min_score=0.0)
    found = filtered.detect(case.study["PV"], case.liver["PV"])
    proposals = plain.detect(case.study["PV"], case.liver["PV"])
    assert len(found) == len(proposals) > 0
    assert sorted(f.proposal_score for f in found) == pytest.approx(sorted(p.score for p in proposals))
    assert all(0.0 <= f.score <= 1.0 for f in found)
    assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)

    (detector / "candidate_filter" / "model.pt").write_bytes(b"truncated")
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        LesionDetector.load(detector)
