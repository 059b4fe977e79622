"""Hybrid 2D/3D U-Net for liver and lesion segmentation (the paper's Fig. 1b).

Mostly 2D encoder-decoder blocks, with 3D blocks at the input, the bottom and the output, so a slab of
``D`` adjacent slices is segmented at once. Data layout: ``(N, 1, D, H, W)`` in, logits
``(N, 2, D, H, W)`` out: channel 0 liver, channel 1 lesion (independent sigmoids; lesion lies within the
liver). In training mode :meth:`HybridUNet.forward` also returns the deep-supervision logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from liaids.networks.blocks import SCSE, NonLocalBlock


@dataclass(frozen=True)
class UNetConfig:
    """Size of the network. ``paper`` is the published design for a GPU, ``small`` trains on a CPU.

    Args:
        channels: 2D encoder widths per level (the decoder mirrors them).
        slab: number of adjacent slices in one input slab (``D``).
        key_side: non-local keys pooled to at most this many positions per axis.
        deep_supervision: number of auxiliary heads (on the coarser decoder levels).
        out_channels: liver and lesion.
        stem_stride: in-plane stride of the 3D input block. 1 is the paper's design; 2 runs the 2D U-Net at
            half resolution (4x cheaper on a CPU) and upsamples before the 3D output block.
        stem_skip: with ``stem_stride`` > 1, also feed the full-resolution stem features to the 3D output
            block (a U-Net skip at the input's resolution), so the liver edge is drawn from full-resolution
            features rather than upsampled coarse ones. Ignored when ``stem_stride`` is 1. Off by default so
            model folders saved before it existed load unchanged.
        in_channels: input channels: 1 (the CT) for the segmentation network, 2 (the CT and the coarse
            liver logit) for the boundary refinement stage (:mod:`liaids.segmentation.refinement`).
    """

    channels: tuple[int, ...] = (32, 64, 128, 256)
    slab: int = 8
    key_side: int = 16
    deep_supervision: int = 3
    out_channels: int = 2
    stem_stride: int = 1
    stem_skip: bool = False
    in_channels: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, UNetConfig] = {
    "paper": UNetConfig(channels=(32, 64, 128, 256), slab=8, key_side=16),
    "small": UNetConfig(channels=(8, 16, 32, 64), slab=5, key_side=8, stem_stride=2, stem_skip=True),
}


def _groups(channels: int, width: int = 4) -> int:
    """Group count for a group convolution with about ``width`` channels per group."""
    groups = max(1, channels // width)
    while channels % groups:
        groups -= 1
    return groups


class ConvUnit2d(nn.Module):
    """Split channels in two halves, 5x5 and 7x7 group convolutions, concatenate with the input, scSE,
    then 1x1 conv + BatchNorm + GELU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.half = in_channels // 2
        rest = in_channels - self.half
        self.conv5 = (
            nn.Conv2d(self.half, self.half, 5, padding=2, groups=_groups(self.half)) if self.half else None
        )
        self.conv7 = nn.Conv2d(rest, rest, 7, padding=3, groups=_groups(rest))
        self.attention = SCSE(2, 2 * in_channels)
        self.project = nn.Sequential(
            nn.Conv2d(2 * in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.GELU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, : self.half], x[:, self.half :]
        parts = [self.conv5(a)] if self.conv5 is not None else []
        y = torch.cat([*parts, self.conv7(b), x], dim=1)
        return self.project(self.attention(y))


class Block2d(nn.Module):
    """Two :class:`ConvUnit2d` and an efficient 2D non-local block."""

    def __init__(self, in_channels: int, out_channels: int, key_side: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvUnit2d(in_channels, out_channels),
            ConvUnit2d(out_channels, out_channels),
            NonLocalBlock(2, out_channels, key_side=key_side),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Block3d(nn.Sequential):
    """3x3x3 convolution + InstanceNorm + GELU (optionally strided in-plane)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, stride=(1, stride, stride), padding=1, bias=False),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.GELU(),
        )


def _fold(x: torch.Tensor) -> torch.Tensor:
    """(N, C, D, H, W) -> (N*D, C, H, W): the 2D blocks see every slice of the slab.

    The result is channels-last in memory: on a CPU the 2D blocks' group convolutions then run about a
    quarter faster (oneDNN), with the same values up to float rounding.
    """
    n, c, d, h, w = x.shape
    return x.permute(0, 2, 3, 4, 1).reshape(n * d, h, w, c).permute(0, 3, 1, 2)


def _unfold(x: torch.Tensor, depth: int) -> torch.Tensor:
    nd, c, h, w = x.shape
    return x.reshape(nd // depth, depth, c, h, w).permute(0, 2, 1, 3, 4)


class HybridUNet(nn.Module):
    """The paper's liver segmentation network.

    Args:
        config: network size (see :data:`PROFILES`).

    Example::

        >>> net = HybridUNet(PROFILES["small"]).eval()
        >>> net(torch.zeros(1, 1, 5, 64, 64)).shape
        torch.Size([1, 2, 5, 64, 64])
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        self.stem = nn.Sequential(
            Block3d(config.in_channels, ch[0]), Block3d(ch[0], ch[0], stride=config.stem_stride)
        )
        self.encoder = nn.ModuleList(
            [Block2d(ch[max(i - 1, 0)], ch[i], config.key_side) for i in range(len(ch))]
        )
        self.pool = nn.MaxPool2d(2)
        bottom = ch[-1] * 2
        self.bottom = nn.Sequential(
            Block3d(ch[-1], bottom),
            NonLocalBlock(3, bottom, key_side=config.key_side),
            Block3d(bottom, ch[-1]),
        )
        self.skips = nn.ModuleList([nn.Conv2d(c, c, 1) for c in ch])
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        # Decoder level i takes the upsampled level i+1 features and the skip of encoder level i.
        self.decoder = nn.ModuleList(
            [Block2d(ch[min(i + 1, len(ch) - 1)] + ch[i], ch[i], config.key_side) for i in range(len(ch))]
        )
        self.head_up = (
            nn.Upsample(
                scale_factor=(1, config.stem_stride, config.stem_stride),
                mode="trilinear",
                align_corners=False,
            )
            if config.stem_stride > 1
            else nn.Identity()
        )
        self.stem_skip = config.stem_skip and config.stem_stride > 1
        head_in = 2 * ch[0] if self.stem_skip else ch[0]
        self.head = nn.Sequential(Block3d(head_in, ch[0]), nn.Conv3d(ch[0], config.out_channels, 1))
        n_aux = min(config.deep_supervision, len(ch) - 1)
        self.aux_heads = nn.ModuleList(
            [nn.Conv2d(ch[i], config.out_channels, 1) for i in range(1, 1 + n_aux)]
        )

    @property
    def divisor(self) -> int:
        """In-plane input sizes must be multiples of this."""
        return 2 ** (len(self.encoder) - 1) * self.config.stem_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Segment a slab.

        Args:
            x: ``(N, in_channels, D, H, W)`` normalised CT (and coarse logit); ``H`` and ``W`` divisible
                by :attr:`divisor`.

        Returns:
            In eval mode, logits ``(N, 2, D, H, W)``. In training mode, ``(logits, aux)`` where ``aux`` holds
            one logit map per deep-supervision head, ``(N, 2, D, H / (s 2**k), W / (s 2**k))`` for
            ``k = 1, 2, 3`` and stem stride ``s``.
        """
        depth = x.shape[2]
        levels = len(self.encoder)
        divisor = self.divisor
        if x.shape[-1] % divisor or x.shape[-2] % divisor:
            raise ValueError(f"H and W must be divisible by {divisor}, got {tuple(x.shape[-2:])}")
        full = self.stem[0](x)
        h = _fold(self.stem[1](full))
        features = []
        for i, block in enumerate(self.encoder):
            h = block(h if i == 0 else self.pool(h))
            features.append(h)
        h = _fold(self.bottom(_unfold(h, depth)))
        aux: list[torch.Tensor] = []
        for i in reversed(range(levels)):
            up = self.up(h) if i < levels - 1 else h
            h = self.decoder[i](torch.cat([up, self.skips[i](features[i])], dim=1))
            if self.training and 1 <= i <= len(self.aux_heads):
                aux.append(_unfold(self.aux_heads[i - 1](h), depth))
        h = self.head_up(_unfold(h, depth))
        logits = self.head(torch.cat([h, full], dim=1) if self.stem_skip else h)
        return (logits, aux[::-1]) if self.training else logits
