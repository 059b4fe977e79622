"""Detection networks: backbone shapes and strides, stripe attention properties, the composed detector."""

from __future__ import annotations

import pytest
import torch

from liaids.networks import cnn2d, cswin3d
from liaids.networks.cswin3d import CSWinBlock, StripeAttention
from liaids.networks.lesion_detector import build_detector, profile


@pytest.mark.parametrize("name", ["small", "paper"])
def test_cswin3d_shapes_and_strides(name: str) -> None:
    config = cswin3d.PROFILES[name]
    net = cswin3d.CSWin3D(config).eval()
    x = torch.randn(2, config.in_slices, 96, 64)
    with torch.no_grad():
        maps = net(x)
    assert len(maps) == 4
    for m, channels, stride in zip(maps, net.out_channels, net.strides, strict=True):
        assert m.shape == (2, channels, 96 // stride, 64 // stride)
    assert config.in_slices == (11 if name == "paper" else 5)
    if name == "paper":
        assert net.out_channels == (64, 128, 256, 512)
        assert config.depths == (1, 2, 9, 1)


def test_cswin3d_rejects_wrong_slab_depth() -> None:
    net = cswin3d.CSWin3D(cswin3d.PROFILES["small"])
    with pytest.raises(ValueError, match="expected 5 slices"):
        net(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("name", ["small", "paper"])
def test_cnn2d_shapes_and_strides(name: str) -> None:
    config = cnn2d.PROFILES[name]
    net = cnn2d.CNN2D(config).eval()
    with torch.no_grad():
        maps = net(torch.randn(1, 3, 64, 96))
    for m, channels, stride in zip(maps, net.out_channels, net.strides, strict=True):
        assert m.shape == (1, channels, 64 // stride, 96 // stride)


def test_centre_slice_depends_on_neighbours_only_through_merges() -> None:
    """The first stage attends within a slice, so changing a far slice leaves stage-1 centre maps unchanged
    while the deepest map (after the 3D merges) sees it."""
    torch.manual_seed(0)
    net = cswin3d.CSWin3D(cswin3d.PROFILES["small"]).eval()
    x = torch.randn(1, 5, 64, 64)
    y = x.clone()
    y[:, 0] += 3.0  # the outermost slice
    with torch.no_grad():
        a, b = net(x), net(y)
    # The 3D stem (kernel 3 along z) reaches one slice out, so the centre ignores slice 0 at stage 1 ...
    assert torch.allclose(a[0], b[0], atol=1e-5)
    # ... and the merged slabs bring it in at the deeper stages.
    assert not torch.allclose(a[3], b[3], atol=1e-4)


def _reference_attention(q, k, v, heads: int, lepe: torch.nn.Conv2d) -> torch.Tensor:
    """Plain multi-head attention over all tokens of ``(N, H, W, C)`` plus LePE over the whole map."""
    n, h, w, c = q.shape
    d = c // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(n, h * w, heads, d).transpose(1, 2)

    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / d**0.5, dim=-1)
    out = (weights @ split(v)).transpose(1, 2).reshape(n, h, w, c)
    return out + lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def test_stripe_attention_equals_full_attention_when_stripe_covers_map() -> None:
    torch.manual_seed(1)
    attn = StripeAttention(dim=16, heads=4)
    q, k, v = (torch.randn(2, 6, 5, 16) for _ in range(3))
    reference = _reference_attention(q, k, v, 4, attn.lepe)
    for window in [(6, 5), (100, 100)]:
        assert torch.allclose(attn(q, k, v, window), reference, atol=1e-5)


def test_cswin_block_with_wide_stripes_is_full_multihead_attention() -> None:
    """Both stripe branches together (heads split in halves) equal one full multi-head attention."""
    torch.manual_seed(2)
    block = CSWinBlock(dim=16, heads=4, stripe=64, mlp_ratio=2.0, drop_path=0.0).eval()
    x = torch.randn(1, 7, 9, 16)
    q, k, v = block.qkv(block.norm1(x)).chunk(3, dim=-1)
    halves = [
        _reference_attention(q[..., s], k[..., s], v[..., s], 2, branch.lepe)
        for s, branch in zip((slice(0, 8), slice(8, 16)), block.branches, strict=True)
    ]
    expected = x + block.proj(torch.cat(halves, dim=-1))
    expected = expected + block.mlp(block.norm2(expected))
    with torch.no_grad():
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_horizontal_stripes_with_padding_match_stripe_by_stripe_attention() -> None:
    """A 5-row map in stripes of 2 rows (last stripe padded): each stripe attends only to itself."""
    torch.manual_seed(3)
    attn = StripeAttention(dim=8, heads=2)
    q, k, v = (torch.randn(1, 5, 4, 8) for _ in range(3))
    out = attn(q, k, v, (2, 4))
    for r0 in (0, 2, 4):
        rows = slice(r0, min(r0 + 2, 5))
        expected = _reference_attention(q[:, rows], k[:, rows], v[:, rows], 2, attn.lepe)
        assert torch.allclose(out[:, rows], expected, atol=1e-5)


@pytest.mark.parametrize("backbone", ["cswin3d", "cnn2d"])
def test_detector_trains_and_predicts(backbone: str) -> None:
    torch.manual_seed(0)
    config = profile(backbone, "small")
    model = build_detector(config)
    # A bright square on a dark background, the same in every slice of the slab.
    image = torch.zeros(config.in_slices, 96, 96)
    image[:, 30:50, 40:60] = 1.0
    target = {"boxes": torch.tensor([[40.0, 30.0, 60.0, 50.0]]), "labels": torch.tensor([1])}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    first = None
    for _ in range(30):
        losses = model([image], [target])
        loss = sum(losses.values())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first
    model.eval()
    with torch.no_grad():
        out = model([image + 0.01 * torch.randn_like(image)])[0]
    assert out["boxes"].shape[1] == 4 and len(out["scores"]) == len(out["boxes"])
    assert out["scores"].le(1).all()


def test_detector_paper_profile_matches_published_settings() -> None:
    config = profile("cswin3d", "paper")
    assert config.fpn_channels == 256 and config.representation == 1024
    assert config.anchor_scales == (1.0, 3.0) and config.anchor_ratios == (0.5, 1.0, 2.0)
    assert (config.rpn_fg_iou, config.rpn_bg_iou, config.rpn_batch) == (0.7, 0.3, 256)
    assert (config.box_fg_iou, config.box_batch, config.box_positive_fraction) == (0.5, 512, 0.25)
    assert config.box_nms == 0.1 and config.box_detections == 100
    model = build_detector(config)
    sizes = model.rpn.anchor_generator.sizes
    assert sizes[0] == (4.0, 12.0) and sizes[-1] == (64.0, 192.0)


def test_slab_transform_pads_to_multiple_of_32() -> None:
    model = build_detector(profile("cnn2d", "small"))
    batch, _ = model.transform([torch.zeros(3, 70, 40), torch.zeros(3, 33, 90)])
    assert batch.tensors.shape == (2, 3, 96, 96)
    assert batch.image_sizes == [(70, 40), (33, 90)]
