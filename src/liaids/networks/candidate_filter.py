"""Candidate filter: a small 3D CNN that re-scores the detector's candidates (false-positive reduction).

Not part of the paper: the authors' detector keeps what Faster R-CNN scores. Ours, trained on the phantom,
ranks the IVC, the gallbladder and hepatic veins as high as lesions, because each 2D box sees a few slices
only. A second look at every candidate in 3D is the usual remedy in lesion detection (the LUNA16 challenge
made it a track of its own).

Input: patches ``(N, 2, D, H, W)`` (windowed CT and liver mask, :mod:`liaids.detection.candidates`) and
scalars ``(N, 2)`` (the detector's score, log2 of the box size in cm). Output: one logit per candidate,
"this is a lesion".

Pipeline::

    patch -> stages of (3x3x3 conv + BN + GELU) x 2 (the first strided in-plane, the others halving the
    map) -> scSE -> global average and max pooling -> concat scalars -> FC + GELU -> FC -> correction
    logit = logit(proposal score) + correction

The filter learns a correction to the detector's own logit rather than a score from scratch: before
training it ranks the candidates exactly as the detector does, so a short CPU training can only start from
there (trained from scratch, one epoch ranked worse than the proposals).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from liaids.networks.blocks import SCSE


@dataclass(frozen=True)
class CandidateFilterConfig:
    """Size of the filter.

    Args:
        widths: channels of the stages; every stage after the first halves the map.
        hidden: width of the hidden fully connected layer.
        in_channels: patch channels (CT and liver mask).
        n_scalars: scalar inputs.
        dropout: dropout before the last layer.
        stem_stride: stride ``(k, j, i)`` of the first stage (in-plane 2 quarters the cost on a CPU).
    """

    widths: tuple[int, ...] = (16, 32, 64)
    hidden: int = 64
    in_channels: int = 2
    n_scalars: int = 2
    dropout: float = 0.2
    stem_stride: tuple[int, int, int] = (1, 2, 2)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CandidateFilterConfig:
        return cls(
            widths=tuple(int(w) for w in data["widths"]),
            hidden=int(data["hidden"]),
            in_channels=int(data["in_channels"]),
            n_scalars=int(data["n_scalars"]),
            dropout=float(data["dropout"]),
            stem_stride=tuple(int(v) for v in data.get("stem_stride", (1, 1, 1))),  # type: ignore[arg-type]
        )


PROFILES: dict[str, CandidateFilterConfig] = {
    "paper": CandidateFilterConfig(widths=(32, 64, 128, 256), hidden=256, stem_stride=(1, 1, 1)),
    "small": CandidateFilterConfig(),
}


def _conv_unit(cin: int, cout: int, stride: int | tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(cout),
        nn.GELU(),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm3d(cout),
        nn.GELU(),
    )


class CandidateFilter(nn.Module):
    """3D CNN over a candidate's patch plus its scalars -> lesion logit.

    Example::

        >>> net = CandidateFilter(PROFILES["small"])
        >>> net(torch.zeros(2, 2, 16, 48, 48), torch.zeros(2, 2)).shape
        torch.Size([2])
    """

    def __init__(self, config: CandidateFilterConfig) -> None:
        super().__init__()
        self.config = config
        stages, cin = [], config.in_channels
        for n, width in enumerate(config.widths):
            stages.append(_conv_unit(cin, width, stride=config.stem_stride if n == 0 else 2))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.attention = SCSE(3, cin)
        self.head = nn.Sequential(
            nn.Linear(2 * cin + config.n_scalars, config.hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, 1),
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, patches: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        x = self.attention(self.stages(patches))
        pooled = torch.cat([x.mean(dim=(2, 3, 4)), x.amax(dim=(2, 3, 4)), scalars], dim=1)
        return self.head(pooled)[:, 0] + torch.logit(scalars[:, 0], eps=1e-4)
