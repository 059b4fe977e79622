"""Liver segmentation: learning on a toy problem, model folders, inference geometry, training artefacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from conftest import assert_training_artefacts
from liaids.errors import ModelLoadError
from liaids.io import read_nifti, write_nifti
from liaids.masks import bounding_box
from liaids.model_store import save_model
from liaids.networks.liver_unet import PROFILES, HybridUNet, _fold
from liaids.segmentation.predictor import (
    MODEL_KIND,
    LiverSegmenter,
    fill_enclosed_holes,
    largest_component,
    segment,
)
from liaids.segmentation.preprocessing import SegmentationPlan
from liaids.train.segmentation import _deep_loss, train_segmentation
from liaids.types import Volume


def _toy_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A bright ellipse ('liver') with a dark disc ('lesion') in noise, 2 slabs of 5 x 32 x 32."""
    yy, xx = np.mgrid[:32, :32]
    liver = ((yy - 16) / 10.0) ** 2 + ((xx - 14) / 12.0) ** 2 < 1
    lesion = (yy - 16) ** 2 + (xx - 12) ** 2 < 9
    img = np.where(liver, 0.4, -0.6) - 0.5 * lesion
    rng = np.random.default_rng(0)
    image = torch.tensor(img[None, None, None].repeat(5, axis=2).repeat(2, axis=0), dtype=torch.float32)
    image = image + torch.from_numpy(rng.normal(0, 0.05, image.shape)).float()
    target = torch.tensor(
        np.stack([liver, lesion])[None, :, None].repeat(5, axis=2).repeat(2, axis=0)
    ).float()
    return image, target


def test_enclosed_cavities_are_filled_but_a_vessel_through_the_liver_is_not() -> None:
    liver = np.zeros((12, 20, 20), bool)
    liver[1:11, 2:18, 2:18] = True
    liver[4:7, 8:11, 8:11] = False  # a missed lesion, enclosed on every side
    liver[:, 13:16, 13:16] = False  # a vena cava: ringed by liver on every slice, open above and below
    filled = fill_enclosed_holes(liver)
    assert filled[4:7, 8:11, 8:11].all()
    assert not filled[:, 13:16, 13:16].any()
    assert (filled & ~liver).sum() == 27


def test_largest_component_keeps_the_biggest_island_and_only_it() -> None:
    mask = np.zeros((10, 30, 30), bool)
    mask[2:8, 3:12, 3:12] = True  # the liver
    mask[4:6, 20:24, 20:24] = True  # a smaller island
    mask[9, 29, 29] = True  # one stray voxel in the corner, so the box spans the whole volume
    kept = largest_component(mask)
    assert kept.dtype == bool and kept.shape == mask.shape
    assert kept.sum() == 6 * 9 * 9 and kept[2:8, 3:12, 3:12].all()
    assert not largest_component(np.zeros((4, 5, 6), bool)).any()
    single = np.zeros((4, 5, 6), np.uint8)
    single[1:3, 2:4, 2:5] = 1
    assert np.array_equal(largest_component(single), single > 0)


def test_bounding_box_is_the_smallest_box_of_the_mask() -> None:
    mask = np.zeros((6, 7, 8), bool)
    mask[1, 2, 3] = mask[4, 5, 6] = True
    assert bounding_box(mask) == (slice(1, 5), slice(2, 6), slice(3, 7))
    assert bounding_box(np.zeros((2, 2, 2), bool)) is None


def test_slab_folding_is_channels_last_with_the_same_values() -> None:
    x = torch.randn(2, 3, 4, 5, 6)
    folded = _fold(x)
    assert torch.equal(folded, x.permute(0, 2, 1, 3, 4).reshape(8, 3, 5, 6))
    assert folded.is_contiguous(memory_format=torch.channels_last)


def test_tiny_overfit_loss_falls_and_dice_rises() -> None:
    torch.manual_seed(0)
    net = HybridUNet(PROFILES["small"]).train()
    image, target = _toy_batch()
    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    opt = torch.optim.AdamW(net.parameters(), lr=5e-3)

    def dice() -> float:
        net.eval()
        with torch.no_grad():
            pred = net(image)[:, 0] > 0
        net.train()
        truth = target[:, 0] > 0
        return float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))

    before_dice = dice()
    losses = []
    for _ in range(30):
        logits, aux = net(image)
        loss = _deep_loss(loss_fn, logits, aux, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    after_dice = dice()
    assert after_dice > 0.85 and after_dice > before_dice + 0.3


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = HybridUNet(PROFILES["small"])
    plan = SegmentationPlan(pixel_mm=6.0, slice_mm=5.0, divisor=16)
    config = {
        "kind": MODEL_KIND,
        "profile": "small",
        "network": PROFILES["small"].to_dict(),
        "plan": plan.to_dict(),
    }
    return save_model(tmp_path_factory.mktemp("model"), net.state_dict(), config)


def test_label_map_keeps_the_input_geometry(random_model: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vol = Volume(
        rng.normal(40, 50, (12, 64, 80)).astype(np.float32),
        spacing=(0.9, 0.8, 2.5),
        origin=(10.0, -20.0, 30.0),
        direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
    )
    write_nifti(vol, tmp_path / "ct.nii.gz")
    out = segment(tmp_path / "ct.nii.gz", tmp_path / "seg" / "labels.nii.gz", weights=random_model)
    labels = read_nifti(out)
    assert labels.same_geometry(read_nifti(tmp_path / "ct.nii.gz"), tol=1e-3)
    assert set(np.unique(labels.array).tolist()) <= {0, 1, 2}
    assert [p.name for p in (tmp_path / "seg").iterdir()] == ["labels.nii.gz"]  # no temporary left


def test_truncated_or_foreign_weights_are_refused(random_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in random_model.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "model.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="checksum mismatch") as err:
        LiverSegmenter.load(broken)
    assert "model.pt" in str(err.value)
    (broken / "model.pt.sha256").unlink()
    with pytest.raises(ModelLoadError, match="cannot load weights"):
        LiverSegmenter.load(broken)
    config = json.loads((random_model / "config.json").read_text())
    config["kind"] = "lesion-detection"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="expected a liver-segmentation model"):
        LiverSegmenter.load(broken)
    with pytest.raises(ModelLoadError, match="model file not found"):
        LiverSegmenter.load(tmp_path / "nothing")


def test_training_writes_artefacts_and_resumes(tmp_path: Path) -> None:
    from liaids.phantom.cohort import synthesize_dataset

    data = synthesize_dataset(tmp_path / "ds", cases=2, seed=21, profile="qzh")
    out = tmp_path / "run"
    train_segmentation(data, out, "small", epochs=1, steps_per_epoch=2, seed=3)
    assert_training_artefacts(out)
    splits = json.loads((out / "splits.json").read_text())
    assert len(splits["train"]) == 1 and len(splits["val"]) == 1
    train_segmentation(data, out, "small", epochs=2, steps_per_epoch=2, seed=3, resume=True)
    log = json.loads((out / "log.json").read_text())
    assert [row["epoch"] for row in log] == [1, 2]
    assert 0.0 <= log[-1]["val_liver_dice"] <= 1.0
    seg = LiverSegmenter.load(out)
    assert seg.config["training"]["seed"] == 3


def test_shipped_small_weights_load_and_match_their_checksum() -> None:
    from liaids.model_store import builtin_model_dir, sha256

    folder = builtin_model_dir("liver_small")
    assert (folder / "model.pt.sha256").read_text().split()[0] == sha256(folder / "model.pt")
    seg = LiverSegmenter.load()
    assert seg.config["profile"] == "small" and seg.network.config == PROFILES["small"]
    assert (folder / "model.pt").stat().st_size < 10_000_000
