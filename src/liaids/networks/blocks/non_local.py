"""Non-local (self-attention) block for 2D and 3D maps, with sub-sampled keys for efficiency.

Embedded-Gaussian non-local block (Wang et al. 2018) as a residual: ``y = x + W(softmax(theta^T phi) g)``.
The "efficient" form pools keys and values (``phi``, ``g``) to at most ``key_side`` positions along every
spatial axis, so the attention costs ``L x key_side ** spatial_dims`` instead of ``L x L`` for ``L``
positions and the block can run at full resolution. ``W`` ends in a normalisation layer
initialised to zero, so a fresh block is the identity.
"""

from __future__ import annotations

import torch
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_POOL = {2: nn.functional.adaptive_max_pool2d, 3: nn.functional.adaptive_max_pool3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.InstanceNorm3d}


class NonLocalBlock(nn.Module):
    """Residual non-local block.

    Args:
        spatial_dims: 2 or 3.
        channels: input (= output) channels.
        inter_channels: width of the attention embedding (default ``channels // 2``, at least 1).
        key_side: keys and values are max-pooled to at most this many positions per axis (0 = no pooling,
            full attention).
    """

    def __init__(
        self, spatial_dims: int, channels: int, inter_channels: int | None = None, key_side: int = 16
    ) -> None:
        super().__init__()
        if spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        conv = _CONV[spatial_dims]
        inter = inter_channels or max(1, channels // 2)
        self.theta = conv(channels, inter, 1)
        self.phi = conv(channels, inter, 1)
        self.g = conv(channels, inter, 1)
        self.spatial_dims = spatial_dims
        self.key_side = key_side
        norm = _NORM[spatial_dims](channels, affine=True)
        self.out = nn.Sequential(conv(inter, channels, 1), norm)
        nn.init.zeros_(norm.weight)
        nn.init.zeros_(norm.bias)
        self.scale = inter**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, *spatial = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2)  # (N, L, inter)
        pooled = x
        if self.key_side and any(s > self.key_side for s in spatial):
            pooled = _POOL[self.spatial_dims](x, [min(s, self.key_side) for s in spatial])
        k = self.phi(pooled).flatten(2)  # (N, inter, L')
        v = self.g(pooled).flatten(2).transpose(1, 2)  # (N, L', inter)
        attn = torch.softmax(q @ k * self.scale, dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(n, -1, *spatial)
        return x + self.out(y)
