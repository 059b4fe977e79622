"""Shared blocks (scSE, non-local) and the hybrid 2D/3D liver U-Net: shapes and behaviour."""

from __future__ import annotations

import pytest
import torch

from liaids.networks.blocks import SCSE, ChannelSE, NonLocalBlock, SpatialSE
from liaids.networks.liver_unet import PROFILES, HybridUNet


@pytest.mark.parametrize("dims", [2, 3])
def test_scse_is_the_sum_of_channel_and_spatial_excitation(dims: int) -> None:
    torch.manual_seed(0)
    block = SCSE(dims, 6).eval()
    x = torch.randn(2, 6, *([5] * dims))
    assert torch.allclose(block(x), block.cse(x) + block.sse(x))
    assert block(x).shape == x.shape


def test_cse_scales_whole_channels_and_sse_whole_positions() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 4, 6, 6) + 0.1
    ratio = ChannelSE(2, 4)(x) / x
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-6)  # one factor per channel
    ratio = SpatialSE(2, 4)(x) / x
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-6)  # one factor per position
    assert ((ratio > 0) & (ratio < 1)).all()


@pytest.mark.parametrize("dims", [2, 3])
def test_fresh_non_local_block_is_identity(dims: int) -> None:
    block = NonLocalBlock(dims, 8).eval()
    x = torch.randn(1, 8, *([6] * dims))
    assert torch.allclose(block(x), x)


def test_non_local_block_sees_distant_positions_and_pooling_is_exact_when_small() -> None:
    torch.manual_seed(0)
    full = NonLocalBlock(2, 4, key_side=0).eval()
    torch.nn.init.ones_(full.out[1].weight)
    x = torch.randn(1, 4, 12, 12)
    y = full(x)
    x2 = x.clone()
    x2[0, :, 11, 11] += 5.0  # change one far corner
    assert not torch.allclose(full(x2)[0, :, 0, 0], y[0, :, 0, 0])  # the opposite corner responds
    pooled = NonLocalBlock(2, 4, key_side=12).eval()
    pooled.load_state_dict(full.state_dict())
    assert torch.allclose(pooled(x), y, atol=1e-6)  # maps no larger than key_side: same as full attention


@pytest.mark.parametrize("profile", ["small", "paper"])
def test_unet_shapes_for_both_profiles(profile: str) -> None:
    cfg = PROFILES[profile]
    net = HybridUNet(cfg)
    x = torch.randn(1, 1, cfg.slab, 32, 32)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (1, 2, cfg.slab, 32, 32)
    net.train()
    logits, aux = net(x)
    assert logits.shape == (1, 2, cfg.slab, 32, 32)
    s = cfg.stem_stride
    assert [a.shape[-1] for a in aux] == [32 // (s * 2), 32 // (s * 4), 32 // (s * 8)]


def test_unet_rejects_sizes_it_cannot_pool() -> None:
    with pytest.raises(ValueError, match="divisible by 16"):
        HybridUNet(PROFILES["small"]).eval()(torch.zeros(1, 1, 5, 30, 32))


def test_small_profile_head_sees_full_resolution_stem_features() -> None:
    """With a strided stem the 3D output block gets the stem's full-resolution features as a skip."""
    cfg = PROFILES["small"]
    net = HybridUNet(cfg).eval()
    seen: list[torch.Size] = []
    net.head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape))
    with torch.no_grad():
        net(torch.randn(1, 1, cfg.slab, 32, 32))
    assert seen == [torch.Size([1, 2 * cfg.channels[0], cfg.slab, 32, 32])]


def test_model_config_saved_without_stem_skip_builds_the_earlier_network() -> None:
    """Model folders written before ``stem_skip`` existed keep loading: the key defaults to off."""
    from liaids.networks.liver_unet import UNetConfig

    saved = {k: v for k, v in PROFILES["small"].to_dict().items() if k != "stem_skip"}
    net = HybridUNet(UNetConfig(**saved))
    assert net.head[0][0].in_channels == saved["channels"][0]
