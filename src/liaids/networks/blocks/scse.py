"""Concurrent spatial and channel squeeze-and-excitation (scSE, Roy et al. 2018), for 2D and 3D maps."""

from __future__ import annotations

import torch
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}


class ChannelSE(nn.Module):
    """cSE: global average pool -> FC(C, C/r) -> ReLU -> FC(C/r, C) -> sigmoid, scaling each channel.

    Args:
        spatial_dims: 2 or 3.
        channels: number of input channels.
        reduction: channel reduction ratio ``r`` (the hidden width is at least 1).
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 2) -> None:
        super().__init__()
        if spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.fc(x.flatten(2).mean(dim=2)))
        return x * weights.view(*weights.shape, *([1] * (x.dim() - 2)))


class SpatialSE(nn.Module):
    """sSE: 1x1 convolution to one channel -> sigmoid, scaling each position."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.conv = _CONV[spatial_dims](channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x))


class SCSE(nn.Module):
    """scSE = cSE(x) + sSE(x); output shape equals input shape ``(N, C, *spatial)``.

    Example::

        >>> block = SCSE(2, 16)
        >>> block(torch.zeros(1, 16, 8, 8)).shape
        torch.Size([1, 16, 8, 8])
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 2) -> None:
        super().__init__()
        self.cse = ChannelSE(spatial_dims, channels, reduction)
        self.sse = SpatialSE(spatial_dims, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cse(x) + self.sse(x)
