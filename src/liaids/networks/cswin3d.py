"""CSWin Transformer extended to 3D: the detection backbone over ``2n+1`` adjacent slices.

Data layout: ``(N, 2n+1, H, W)`` in (the slices as channels, the target slice in the middle), a list of
four 2D feature maps of the centre slice out, at strides 4, 8, 16 and 32, for a feature pyramid.

Design, after the paper and the authors' configuration:

* a 3D convolutional stem (stride 4 in-plane, 1 along z) turns the slab into tokens;
* every block attends *within one slice* (depth folded into the batch): half of the heads inside
  horizontal stripes, the other half inside vertical stripes of width ``stripe``, the last stage over the
  whole map; a locally-enhanced positional term (LePE, a depthwise 3x3 convolution of the values inside
  each stripe) is added to the attention output;
* between stages a 3D convolution (kernel 3, stride 2 in-plane, unpadded along z while more than one
  slice remains) merges neighbouring slices, so context from the adjacent slices flows into the centre
  slice, which stays the centre;
* the centre slice of each stage's output is what the 2D pyramid sees.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class CSWin3DConfig:
    """Size of the backbone.

    Args:
        context: ``n``, the number of slices on each side of the target slice (input depth ``2n+1``).
        embed_dim: channels of the first stage (doubled at every merge).
        depths: transformer blocks per stage.
        heads: attention heads per stage.
        stripes: stripe width per stage; the last stage always attends over the whole map.
        mlp_ratio: hidden width of the block MLP relative to its input.
        drop_path: stochastic depth rate of the last block (linearly increasing from 0).
    """

    context: int = 5
    embed_dim: int = 64
    depths: tuple[int, int, int, int] = (1, 2, 9, 1)
    heads: tuple[int, int, int, int] = (2, 4, 8, 16)
    stripes: tuple[int, int, int, int] = (1, 2, 7, 7)
    mlp_ratio: float = 4.0
    drop_path: float = 0.2

    @property
    def in_slices(self) -> int:
        return 2 * self.context + 1

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**s for s in range(4))

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, CSWin3DConfig] = {
    # The authors' configuration (CSWin-T widths) with the paper's 11 slices.
    "paper": CSWin3DConfig(),
    "small": CSWin3DConfig(
        context=2, embed_dim=24, depths=(1, 1, 2, 1), heads=(2, 2, 4, 8), stripes=(1, 2, 4, 4), drop_path=0.05
    ),
}


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample during training."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def _to_windows(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """``(N, H, W, C)`` with ``H % wh == W % ww == 0`` -> ``(N * windows, wh * ww, C)``."""
    n, h, w, c = x.shape
    x = x.view(n, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


def _from_windows(x: torch.Tensor, n: int, h: int, w: int, wh: int, ww: int) -> torch.Tensor:
    c = x.shape[-1]
    x = x.view(n, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h, w, c)


class StripeAttention(nn.Module):
    """Multi-head self-attention inside windows of ``wh x ww`` tokens, with LePE.

    A window of ``stripe x W`` is a horizontal stripe, ``H x stripe`` a vertical one, ``H x W`` global
    attention. Maps that do not divide into whole stripes are zero-padded and the padded keys masked.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"{dim} channels do not split into {heads} heads")
        self.heads = heads
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: tuple[int, int]
    ) -> torch.Tensor:
        """Attend within windows.

        Args:
            q, k, v: ``(N, H, W, C)`` queries, keys and values of this branch.
            window: ``(wh, ww)`` window size; clipped to the map.

        Returns:
            ``(N, H, W, C)``.
        """
        n, h, w, c = q.shape
        wh, ww = min(window[0], h), min(window[1], w)
        ph, pw = (-h) % wh, (-w) % ww
        mask = None
        if ph or pw:
            q, k, v = (F.pad(t, (0, 0, 0, pw, 0, ph)) for t in (q, k, v))
            valid = F.pad(q.new_ones(1, h, w, 1), (0, 0, 0, pw, 0, ph))
            valid = _to_windows(valid.expand(n, -1, -1, -1), wh, ww)[..., 0] > 0  # (Nw, L)
            mask = valid[:, None, None, :]  # broadcast over heads and queries
        hp, wp = h + ph, w + pw
        qw, kw, vw = (_to_windows(t, wh, ww) for t in (q, k, v))
        nw, length = qw.shape[:2]

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(nw, length, self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(qw), split(kw), split(vw), attn_mask=mask)
        out = out.transpose(1, 2).reshape(nw, length, c)
        # LePE sees each window as a small image, so positions never leak across stripes.
        lepe = self.lepe(vw.transpose(1, 2).reshape(nw, c, wh, ww)).flatten(2).transpose(1, 2)
        out = _from_windows(out + lepe, n, hp, wp, wh, ww)
        return out[:, :h, :w]


class CSWinBlock(nn.Module):
    """LayerNorm -> cross-shaped window attention -> residual; LayerNorm -> MLP -> residual."""

    def __init__(self, dim: int, heads: int, stripe: int | None, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.stripe = stripe  # None: global attention (the last stage)
        branches = 1 if stripe is None else 2
        if heads % branches or dim % branches:
            raise ValueError(f"{dim} channels / {heads} heads do not split into {branches} stripe branches")
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.branches = nn.ModuleList(
            StripeAttention(dim // branches, heads // branches) for _ in range(branches)
        )
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, C)`` -> ``(N, H, W, C)``."""
        _, h, w, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        if self.stripe is None:
            attended = self.branches[0](q, k, v, (h, w))
        else:
            half = c // 2
            horizontal = self.branches[0](q[..., :half], k[..., :half], v[..., :half], (self.stripe, w))
            vertical = self.branches[1](q[..., half:], k[..., half:], v[..., half:], (h, self.stripe))
            attended = torch.cat([horizontal, vertical], dim=-1)
        x = x + self.drop_path(self.proj(attended))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ChannelNorm3d(nn.Module):
    """LayerNorm over channels of a ``(N, C, D, H, W)`` tensor."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class CSWin3D(nn.Module):
    """The 3D CSWin backbone (see the module docstring).

    Args:
        config: sizes; see :data:`PROFILES`.

    Attributes:
        out_channels: channels of the four returned maps.
        strides: their in-plane strides (4, 8, 16, 32).
    """

    strides: tuple[int, ...] = (4, 8, 16, 32)

    def __init__(self, config: CSWin3DConfig) -> None:
        super().__init__()
        self.config = config
        dims = config.channels
        self.out_channels = dims
        self.stem = nn.Sequential(
            nn.Conv3d(1, dims[0], kernel_size=(3, 7, 7), stride=(1, 4, 4), padding=(1, 3, 3)),
            ChannelNorm3d(dims[0]),
        )
        total = sum(config.depths)
        rates = [config.drop_path * b / max(1, total - 1) for b in range(total)]
        self.stages = nn.ModuleList()
        self.merges = nn.ModuleList()
        depth, block = config.in_slices, 0
        for s, (dim, n_blocks, heads) in enumerate(zip(dims, config.depths, config.heads, strict=True)):
            stripe = None if s == 3 else config.stripes[s]
            self.stages.append(
                nn.ModuleList(
                    CSWinBlock(dim, heads, stripe, config.mlp_ratio, rates[block + b])
                    for b in range(n_blocks)
                )
            )
            block += n_blocks
            if s < 3:
                # Unpadded along z, so the slab shrinks by two slices around a centre that stays centred.
                pad_z = 0 if depth >= 3 else 1
                depth = depth - 2 + 2 * pad_z
                self.merges.append(
                    nn.Sequential(
                        nn.Conv3d(dim, dims[s + 1], kernel_size=3, stride=(1, 2, 2), padding=(pad_z, 1, 1)),
                        ChannelNorm3d(dims[s + 1]),
                    )
                )

    def forward(self, slab: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of the centre slice.

        Args:
            slab: ``(N, 2n+1, H, W)``, ``H`` and ``W`` multiples of 32 for exact strides.

        Returns:
            four tensors ``(N, C_s, H / stride_s, W / stride_s)``.
        """
        if slab.shape[1] != self.config.in_slices:
            raise ValueError(f"expected {self.config.in_slices} slices, got {slab.shape[1]}")
        x = self.stem(slab[:, None])  # (N, C, D, H, W)
        features = []
        for s, blocks in enumerate(self.stages):
            n, c, d, h, w = x.shape
            tokens = x.permute(0, 2, 3, 4, 1).reshape(n * d, h, w, c)
            for blk in blocks:
                tokens = blk(tokens)
            x = tokens.view(n, d, h, w, c).permute(0, 4, 1, 2, 3)
            features.append(x[:, :, d // 2])
            if s < 3:
                x = self.merges[s](x)
        return features
