"""Three-phase lesion classifier network: sizes of both profiles, variants, interaction, malignancy rule."""

from __future__ import annotations

import pytest
import torch

from liaids.codes import LESION_TYPES, MALIGNANT_TYPES
from liaids.networks.lesion_classifier import (
    PROFILES,
    VARIANTS,
    ClassifierConfig,
    LesionClassifierNet,
    PhaseBackbone,
    PhaseInteraction,
    lesion_weights,
    malignant_probability,
)


def test_paper_profile_gives_196_channels_per_phase_and_a_588_d_interaction() -> None:
    cfg = PROFILES["paper"]
    assert (cfg.init_features, cfg.growth, cfg.blocks, cfg.bottleneck) == (64, 16, (2, 4, 8), 4)
    assert cfg.scale_channels == (48, 56, 92) and cfg.backbone_channels == 196 and cfg.fused_dim == 588
    torch.manual_seed(0)
    net = LesionClassifierNet(cfg).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 2, 16, 16), torch.rand(1, 7), torch.full((1, 3, 3), 0.5))
    assert out.logits.shape == (1, 7)
    assert out.fused.shape == (1, 588)
    assert out.image_features.shape == (1, cfg.image_dim)


def test_transitions_keep_z_and_halve_x_y() -> None:
    maps = PhaseBackbone(PROFILES["paper"]).eval()(torch.rand(1, 1, 3, 32, 32))
    assert [tuple(m.shape[1:]) for m in maps] == [(48, 3, 16, 16), (56, 3, 8, 8), (92, 3, 4, 4)]


def test_small_profile_is_light_and_runs_on_its_patch_shape() -> None:
    from liaids.classification.patches import PATCH_PLANS

    net = LesionClassifierNet(PROFILES["small"]).eval()
    assert sum(p.numel() for p in net.parameters()) < 500_000  # < 2 MB of float32 weights
    with torch.no_grad():
        out = net(torch.rand(2, 3, *PATCH_PLANS["small"].shape), torch.rand(2, 7), torch.rand(2, 3, 3))
    assert out.logits.shape == (2, 7) and out.fused.shape == (2, PROFILES["small"].fused_dim)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_are_one_network_configured(variant: str) -> None:
    cfg = PROFILES["small"].with_variant(variant)
    net = LesionClassifierNet(cfg).eval()
    patches = torch.rand(2, 3, 4, 16, 16)
    clinical = torch.rand(2, 7)
    with torch.no_grad():
        out = net(
            None if variant == "clinical" else patches,
            None if variant == "image" else clinical,
            None if variant == "clinical" else torch.full((2, 3, 3), 0.3),
        )
    assert out.logits.shape == (2, len(LESION_TYPES))
    has_image = variant != "clinical"
    assert hasattr(net, "backbones") == has_image
    assert (out.image_features is not None) == has_image
    if has_image:
        assert out.fused.shape == (2, cfg.fused_dim)


def test_missing_or_malformed_inputs_are_refused() -> None:
    net = LesionClassifierNet(PROFILES["small"]).eval()
    extents = torch.full((1, 3, 3), 0.5)
    with pytest.raises(ValueError, match="clinical must be"):
        net(torch.rand(1, 3, 4, 16, 16), None, extents)
    with pytest.raises(ValueError, match="patches must be"):
        net(torch.rand(1, 2, 4, 16, 16), torch.rand(1, 7), extents)
    with pytest.raises(ValueError, match="lesion pooling needs extents"):
        net(torch.rand(1, 3, 4, 16, 16), torch.rand(1, 7))
    with pytest.raises(ValueError, match="unknown variant"):
        ClassifierConfig(variant="late-fusion")


def test_interaction_multiplies_phase_pairs_then_signed_sqrt_and_l2() -> None:
    # One scale, two channels, constant maps: the pooled product is the product of the constants.
    values = {"NC": (1.0, 2.0), "ART": (3.0, -1.0), "PV": (2.0, 2.0)}
    maps = {p: [torch.tensor(v).view(1, 2, 1, 1, 1).expand(1, 2, 2, 3, 3)] for p, v in values.items()}
    out = PhaseInteraction()(maps)
    assert out.shape == (1, 6)
    expected = []
    for a, b in (("ART", "PV"), ("ART", "NC"), ("PV", "NC")):
        prod = torch.tensor(values[a]) * torch.tensor(values[b])
        signed = torch.sign(prod) * prod.abs().sqrt()
        expected.append(signed / signed.norm())
    assert torch.allclose(out[0], torch.cat(expected), atol=1e-4)
    concat = PhaseInteraction(concat=True)(maps)
    assert concat.shape == (1, 6) and torch.allclose(concat[0, 2:4].norm(), torch.tensor(1.0))


def test_probabilities_sum_to_one_and_malignant_is_hcc_icc_hm() -> None:
    torch.manual_seed(0)
    net = LesionClassifierNet(PROFILES["small"]).eval()
    with torch.no_grad():
        logits = net(torch.rand(3, 3, 4, 16, 16), torch.rand(3, 7), torch.rand(3, 3, 3)).logits
    probs = torch.softmax(logits, dim=1)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3), atol=1e-6)
    malignant = [LESION_TYPES.index(t) for t in sorted(MALIGNANT_TYPES)]
    assert torch.allclose(malignant_probability(probs), probs[:, malignant].sum(dim=1))
    one_hot = torch.eye(len(LESION_TYPES))
    expected = torch.tensor([1.0 if t in MALIGNANT_TYPES else 0.0 for t in LESION_TYPES])
    assert torch.equal(malignant_probability(one_hot), expected)
    assert [t for t in LESION_TYPES if t in MALIGNANT_TYPES] == ["HCC", "ICC", "HM"]


def test_config_round_trips_through_json_form() -> None:
    cfg = PROFILES["small"].with_variant("concat")
    assert ClassifierConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown \['depth'\]"):
        ClassifierConfig.from_dict({**cfg.to_dict(), "depth": 3})
    with pytest.raises(ValueError, match=r"missing \['pooling'\]"):
        ClassifierConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "pooling"})


def test_lesion_pooling_weights_cover_the_centred_box_even_below_one_cell() -> None:
    # A box spanning half the patch on a 1 x 8 x 8 grid: the central 4 x 4 cells (margin 1).
    w = lesion_weights(torch.tensor([[1.0, 0.5, 0.5]]), (1, 8, 8), margin=1.0)[0, 0, 0]
    assert torch.allclose(w.sum(), torch.tensor(1.0))
    assert (w[2:6, 2:6] > 0).all() and w[:2].sum() == 0 and w[:, 6:].sum() == 0
    # A 5 % box on a 3 x 3 map: all weight on the centre cell.
    w = lesion_weights(torch.tensor([[0.05, 0.05, 0.05]]), (3, 3, 3), margin=1.25)[0, 0]
    assert w[1, 1, 1] == pytest.approx(1.0)


def test_lesion_pooling_reads_the_lesion_not_the_context() -> None:
    # Two patches differing only inside a small central lesion: lesion pooling separates them far more.
    torch.manual_seed(0)
    maps = torch.rand(1, 4, 2, 16, 16).repeat(2, 1, 1, 1, 1)
    maps[1, :, :, 7:9, 7:9] += 3.0
    features = {p: [maps] for p in ("NC", "ART", "PV")}
    extents = torch.full((2, 3), 0.125)
    weights = {p: [lesion_weights(extents, (2, 16, 16), 1.0)] for p in features}
    lesion = PhaseInteraction()(features, weights)
    plain = PhaseInteraction()(features, None)
    assert (lesion[0] - lesion[1]).norm() > 3 * (plain[0] - plain[1]).norm()
