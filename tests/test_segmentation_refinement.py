"""Liver boundary refinement: where it runs, grid mapping, identity at start, learning, model folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from scipy import ndimage

from conftest import assert_training_artefacts
from liaids.errors import ModelLoadError
from liaids.model_store import save_model
from liaids.networks.liver_unet import PROFILES, HybridUNet
from liaids.segmentation.predictor import MODEL_KIND, LiverSegmenter
from liaids.segmentation.preprocessing import SegmentationPlan, to_model_grid
from liaids.segmentation.refinement import (
    LOGIT_CLAMP,
    REFINEMENT_DIR,
    LiverRefiner,
    coarse_to_fine,
    refinement_region,
    refiner_input,
)
from liaids.train.liver_refinement import REFINER_PROFILES, _refined_logit, train_liver_refinement
from liaids.types import Volume


def _volume(
    shape: tuple[int, int, int] = (10, 96, 96), spacing: tuple[float, float, float] = (1.0, 1.0, 5.0)
) -> Volume:
    rng = np.random.default_rng(0)
    return Volume(rng.normal(40, 20, shape).astype(np.float32), spacing=spacing)


def _refiner(zero_head: bool = True) -> LiverRefiner:
    net_cfg, plan, cfg = REFINER_PROFILES["small"]
    torch.manual_seed(0)
    network = HybridUNet(net_cfg).eval()
    if zero_head:
        torch.nn.init.zeros_(network.head[-1].weight)
        torch.nn.init.zeros_(network.head[-1].bias)
    return LiverRefiner(network, plan, cfg.margin_mm, cfg.margin_slices, {}, torch.device("cpu"))


def test_region_is_the_liver_box_with_margins_sized_for_the_network() -> None:
    liver = torch.zeros(20, 64, 64, dtype=torch.bool)
    liver[5:9, 10:21, 30:41] = True
    region = refinement_region(liver, margin_px=4, margin_slices=1, divisor=8, min_depth=3)
    assert region is not None
    k, j, i = region
    assert (k.start, k.stop) == (4, 10)
    assert j.start == 6 and i.start == 26  # the margin before the box
    assert (j.stop - j.start) % 8 == 0 and (i.stop - i.start) % 8 == 0
    assert j.stop >= 25 and i.stop >= 45  # the margin after it, rounded up
    # A one-slice liver still gets a full slab; a box at the volume's edge stays inside it.
    thin = torch.zeros(20, 64, 64, dtype=torch.bool)
    thin[19, 60:64, 0:3] = True
    k, j, i = refinement_region(thin, margin_px=4, margin_slices=0, divisor=8, min_depth=3)
    assert (k.start, k.stop) == (17, 20) and j.stop == 64 and i.start == 0
    assert (j.stop - j.start) % 8 == 0 and (i.stop - i.start) % 8 == 0
    assert refinement_region(torch.zeros(4, 8, 8, dtype=torch.bool), 2, 1, 8, 3) is None


def test_coarse_logit_lands_in_the_same_place_on_the_fine_grid() -> None:
    canonical = _volume()
    coarse_plan = SegmentationPlan(pixel_mm=3.0, slice_mm=5.0, divisor=16)
    fine_plan = SegmentationPlan(pixel_mm=1.5, slice_mm=5.0, divisor=8)
    _, coarse = to_model_grid(canonical, coarse_plan)
    _, fine = to_model_grid(canonical, fine_plan)
    logit = torch.full((1, *coarse.padded_shape), -20.0)
    logit[0, :, 8:16, 4:12] = 20.0  # 24 x 24 mm starting 24 mm and 12 mm from the edges
    out = coarse_to_fine(logit, coarse, fine)
    assert out.shape == (1, *fine.padded_shape)
    assert out.max() == LOGIT_CLAMP and out.min() == -LOGIT_CLAMP
    inside = out[0, 5] > 0
    rows, cols = np.nonzero(inside.numpy())
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (16, 32, 8, 24)


def test_untrained_refiner_returns_the_coarse_logit() -> None:
    refiner = _refiner(zero_head=True)
    canonical = _volume()
    _, coarse = to_model_grid(canonical, SegmentationPlan(pixel_mm=3.0, slice_mm=5.0, divisor=16))
    logit = torch.full((1, *coarse.padded_shape), -5.0)
    logit[0, 2:8, 6:20, 6:20] = 5.0
    refined, fine = refiner.refine(canonical, logit, coarse)
    assert torch.equal(refined, coarse_to_fine(logit, coarse, fine))


def test_refiner_learns_to_move_a_misplaced_coarse_edge() -> None:
    """The coarse logit is the true ellipse shifted by 4 pixels; the refiner sees the CT and corrects it."""
    torch.manual_seed(0)
    net = _refiner(zero_head=True).network.train()
    yy, xx = np.mgrid[:32, :32]
    truth = ((yy - 16) / 10.0) ** 2 + ((xx - 15) / 11.0) ** 2 < 1
    shifted = ((yy - 16) / 10.0) ** 2 + ((xx - 19) / 11.0) ** 2 < 1
    rng = np.random.default_rng(0)
    image = np.where(truth, 0.4, -0.5)[None].repeat(3, axis=0) + rng.normal(0, 0.05, (3, 32, 32))
    # A coarse model is unsure near its edge: a logit of 1 per pixel from its (misplaced) boundary.
    distance = ndimage.distance_transform_edt(shifted) - ndimage.distance_transform_edt(~shifted)
    coarse = np.clip(distance, -3.0, 3.0)[None].repeat(3, axis=0)
    inputs = refiner_input(torch.tensor(image[None]).float(), torch.tensor(coarse[None]).float())[None]
    inputs = inputs.repeat(2, 1, 1, 1, 1)
    target = torch.tensor(truth[None, None, None].repeat(3, axis=2)).float().repeat(2, 1, 1, 1, 1)
    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)

    def dice() -> float:
        with torch.no_grad():
            net.eval()
            pred = _refined_logit(net, inputs) > 0
            net.train()
        t = target > 0
        return float(2 * (pred & t).sum() / (pred.sum() + t.sum()))

    before = dice()
    for _ in range(40):
        loss = loss_fn(_refined_logit(net, inputs), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = dice()
    assert before < 0.85 and after > 0.95


def _coarse_model(folder: Path) -> Path:
    """A random small segmentation model whose liver logit is positive everywhere (the box is the volume)."""
    torch.manual_seed(0)
    net = HybridUNet(PROFILES["small"])
    torch.nn.init.zeros_(net.head[-1].weight)
    torch.nn.init.constant_(net.head[-1].bias, 1.0)
    config = {
        "kind": MODEL_KIND,
        "profile": "small",
        "network": PROFILES["small"].to_dict(),
        "plan": SegmentationPlan(pixel_mm=6.0, slice_mm=5.0, divisor=16).to_dict(),
    }
    return save_model(folder, net.state_dict(), config)


def test_refinement_training_writes_a_model_the_segmenter_loads(tmp_path: Path) -> None:
    from liaids.phantom.cohort import synthesize_dataset

    data = synthesize_dataset(tmp_path / "ds", cases=2, seed=21, profile="qzh")
    coarse = _coarse_model(tmp_path / "coarse")
    out = tmp_path / "refine"
    train_liver_refinement(data, coarse, out, epochs=1, steps_per_epoch=2, seed=3)
    assert_training_artefacts(out)
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "liver-refinement" and len(config["coarse_model"]["sha256"]) == 64
    log = json.loads((out / "log.json").read_text())
    assert 0.0 <= log[0]["val_refined_liver_dice"] <= 1.0 and "val_coarse_liver_dice" in log[0]

    shutil.copytree(out, coarse / REFINEMENT_DIR)
    seg = LiverSegmenter.load(coarse)
    assert seg.refiner is not None
    assert LiverSegmenter.load(coarse, refine=False).refiner is None
    canonical = _volume((6, 64, 72), (0.8, 0.9, 5.0))
    assert seg.probabilities(canonical).shape == (2, 6, 64, 72)

    foreign = json.loads((coarse / REFINEMENT_DIR / "config.json").read_text())
    foreign["coarse_model"]["sha256"] = "0" * 64
    (coarse / REFINEMENT_DIR / "config.json").write_text(json.dumps(foreign))
    with pytest.raises(ModelLoadError, match="trained for other segmentation weights"):
        LiverSegmenter.load(coarse)
    assert LiverSegmenter.load(coarse, refine=False).refiner is None

    weights = coarse / REFINEMENT_DIR / "model.pt"
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(ModelLoadError, match="checksum mismatch") as err:
        LiverSegmenter.load(coarse)
    assert str(Path(REFINEMENT_DIR) / "model.pt") in str(err.value)
