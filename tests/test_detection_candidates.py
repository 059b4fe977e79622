"""Candidate filter: patch rule, network shapes, a filter that learns, ranking quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from liaids.detection.candidates import CandidatePatchPlan, candidate_patch, candidate_scalars, patch_side_mm
from liaids.networks.candidate_filter import PROFILES, CandidateFilter
from liaids.train.candidate_filter import CandidateSet, augment, predict, ranking_quality


def _ball_volume() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """60 x 100 x 100 voxels of 2.5 x 1 x 1 mm: liver (60 HU) with a 10 mm bright ball at (30, 50, 50)."""
    spacing = (2.5, 1.0, 1.0)
    k, j, i = np.meshgrid(np.arange(60), np.arange(100), np.arange(100), indexing="ij")
    hu = np.full((60, 100, 100), 60.0, np.float32)
    liver = np.ones((60, 100, 100), bool)
    r = np.sqrt(((k - 30) * spacing[0]) ** 2 + (j - 50) ** 2 + (i - 50) ** 2)
    hu[r <= 5.0] = 250.0
    return hu, liver, spacing


def test_patch_is_centred_on_the_box_and_scaled_to_the_window() -> None:
    hu, liver, spacing = _ball_volume()
    plan = CandidatePatchPlan()
    box = np.array([28, 45, 45, 32, 55, 55])  # the ball: 10 mm in each direction
    assert patch_side_mm(box, spacing, plan) == 24.0  # 2 x 10 mm is below the 24 mm floor
    patch = candidate_patch(hu, liver, spacing, box, plan)
    assert patch.shape == (2, *plan.shape) and patch.dtype == np.float32
    centre = patch[0, 6:10, 20:28, 20:28].mean()
    corner = patch[0, :3, :6, :6].mean()
    assert centre > 0.85  # 250 HU near the top of the -210..300 window
    assert corner == pytest.approx((60.0 + 210.0) / 510.0, abs=0.02)
    assert np.allclose(patch[1], 1.0)


def test_patch_beyond_the_volume_is_air_and_not_liver() -> None:
    hu, liver, spacing = _ball_volume()
    box = np.array([0, 0, 0, 4, 10, 10])  # in the corner: half the cube lies outside
    patch = candidate_patch(hu, liver, spacing, box, CandidatePatchPlan())
    assert patch[0, 0, 0, 0] == 0.0 and patch[1, 0, 0, 0] == 0.0
    assert patch[1, -1, -1, -1] == pytest.approx(1.0)


def test_scalars_are_score_and_log2_size_in_cm() -> None:
    s = candidate_scalars(0.7, np.array([0, 0, 0, 4, 20, 10]), (2.5, 1.0, 1.0))
    assert s.tolist() == pytest.approx([0.7, 1.0])  # largest extent 20 mm = 2 cm


@pytest.mark.parametrize("profile", ["small", "paper"])
def test_filter_gives_one_logit_per_candidate(profile: str) -> None:
    net = CandidateFilter(PROFILES[profile]).eval()
    out = net(torch.rand(3, 2, 16, 48, 48), torch.rand(3, 2))
    assert out.shape == (3,) and torch.isfinite(out).all()


def _synthetic_candidates(n_scans: int, per_scan: int, rng: np.random.Generator) -> CandidateSet:
    """Scans with one true lesion each: a bright ball (true) among bright tubes (vessels, false).

    The proposal score is noise around 0.5, so only the patch tells the two apart.
    """
    k, j, i = np.meshgrid(np.arange(16), np.arange(48), np.arange(48), indexing="ij")
    ball = (((k - 8) * 3) ** 2 + (j - 24) ** 2 + (i - 24) ** 2) <= 64
    tube = ((j - 24) ** 2 + (i - 24) ** 2) <= 64
    patches, labels, scan, boxes, scans = [], [], [], [], []
    for s in range(n_scans):
        truth = np.array([[10, 10, 10, 20, 20, 20]])
        scans.append((f"scan{s}", truth, np.array([15.0])))
        for c in range(per_scan):
            is_lesion = c == 0
            ct = np.where(ball if is_lesion else tube, 0.9, 0.5) + rng.normal(0, 0.05, ball.shape)
            patches.append(np.stack([ct, np.ones_like(ct)]))
            labels.append(is_lesion)
            scan.append(s)
            boxes.append(truth[0] if is_lesion else truth[0] + 40 * c)
    p = np.round(np.clip(np.asarray(patches), 0, 1) * 255).astype(np.uint8)
    scalars = np.stack([0.4 + 0.2 * rng.random(len(labels)), np.zeros(len(labels))], axis=1).astype(
        np.float32
    )
    return CandidateSet(p, scalars, np.asarray(labels), np.asarray(scan), np.asarray(boxes), scans)


def test_ranking_quality_counts_lesions_found_at_few_false_positives() -> None:
    rng = np.random.default_rng(0)
    cands = _synthetic_candidates(4, 5, rng)
    perfect = ranking_quality(cands, cands.labels.astype(float))
    assert perfect["recall_at_2fp"] == 1.0 and perfect["cpm"] == 1.0
    inverted = ranking_quality(cands, 1.0 - cands.labels.astype(float))
    assert inverted["recall_at_2fp"] == 0.0


def test_untrained_filter_ranks_like_the_detector() -> None:
    rng = np.random.default_rng(1)
    cands = _synthetic_candidates(3, 4, rng)
    probs = predict(CandidateFilter(PROFILES["small"]), cands)
    assert probs == pytest.approx(cands.scalars[:, 0], abs=1e-5)


def test_filter_learns_to_tell_a_ball_from_a_tube() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train, val = _synthetic_candidates(12, 4, rng), _synthetic_candidates(6, 4, rng)
    net = CandidateFilter(PROFILES["small"])
    before = ranking_quality(val, val.scalars[:, 0])["cpm"]
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    pos, neg = np.nonzero(train.labels)[0], np.nonzero(~train.labels)[0]
    losses = []
    for _ in range(25):
        index = np.concatenate([rng.choice(pos, 8), rng.choice(neg, 8)])
        patches = augment(torch.from_numpy(train.patches[index]).float() / 255.0, rng)
        logits = net(patches, torch.from_numpy(train.scalars[index]))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, torch.from_numpy(train.labels[index].astype(np.float32))
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = ranking_quality(val, predict(net, val))["cpm"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert after == 1.0 and after > before
