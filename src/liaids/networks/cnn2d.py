"""2D convolutional detection backbone: the paper's ablation baseline.

Three adjacent slices enter as the three channels of one 2D image (how an ImageNet backbone is usually fed
CT), a residual CNN returns four maps at strides 4, 8, 16 and 32, the same contract as
:class:`liaids.networks.cswin3d.CSWin3D`, so the two backbones are interchangeable in the detector.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CNN2DConfig:
    """Size of the backbone.

    Args:
        context: slices on each side of the target slice (1: three slices, as in the paper's ablation).
        widths: channels of the four stages.
        blocks: residual blocks per stage.
    """

    context: int = 1
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    blocks: tuple[int, int, int, int] = (2, 2, 2, 2)

    @property
    def in_slices(self) -> int:
        return 2 * self.context + 1

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, CNN2DConfig] = {
    "paper": CNN2DConfig(),  # ResNet-18 widths and depths
    "small": CNN2DConfig(widths=(24, 48, 96, 192), blocks=(1, 1, 2, 1)),
}


class ResidualBlock(nn.Module):
    """Two 3x3 conv + BatchNorm + ReLU with an identity (or strided 1x1) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class CNN2D(nn.Module):
    """Residual 2D backbone over ``2n+1`` slices as channels.

    Args:
        config: sizes; see :data:`PROFILES`.
    """

    strides: tuple[int, ...] = (4, 8, 16, 32)

    def __init__(self, config: CNN2DConfig) -> None:
        super().__init__()
        self.config = config
        self.out_channels = tuple(config.widths)
        w0 = config.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_slices, w0, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.stages = nn.ModuleList()
        previous = w0
        for s, (width, n_blocks) in enumerate(zip(config.widths, config.blocks, strict=True)):
            layers = [ResidualBlock(previous, width, 1 if s == 0 else 2)]
            layers += [ResidualBlock(width, width, 1) for _ in range(n_blocks - 1)]
            self.stages.append(nn.Sequential(*layers))
            previous = width

    def forward(self, slab: torch.Tensor) -> list[torch.Tensor]:
        """``(N, 2n+1, H, W)`` -> four maps ``(N, C_s, H / stride_s, W / stride_s)``."""
        if slab.shape[1] != self.config.in_slices:
            raise ValueError(f"expected {self.config.in_slices} slices, got {slab.shape[1]}")
        x = self.stem(slab)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
