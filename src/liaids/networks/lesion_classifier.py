"""Three-phase lesion classifier: per-phase 3D DenseNets with scSE, phase interaction, clinical fusion.

The paper's Fig. 1c. Data layout: ``patches`` ``(N, 3, D, H, W)`` with channels in
:data:`liaids.codes.PHASES` order (NC, ART, PV), one lesion-centred patch per phase scaled to [0, 1];
``clinical`` ``(N, 7)`` as :meth:`liaids.clinical.ClinicalInfo.encode` gives it. Output: logits over
:data:`liaids.codes.LESION_TYPES` plus the lesion's image features.

Pipeline of the ``full`` variant::

    NC, ART, PV patch -> three independent DenseNet+scSE backbones -> 3 scales of feature maps per phase
    pairwise products (ART*PV, ART*NC, PV*NC) per scale -> adaptive pooling -> concat scales
    -> signed square root -> L2 normalisation per pair -> concat pairs (588-d at ``paper`` size)
    -> two FC layers = image feature -> concat clinical vector -> two FC layers -> 7 logits

Pooling: the paper's "adaptive pooling" is either a global average (``pooling="global"``) or, the default,
an average over the lesion's region of each map (``pooling="lesion"``, the box centred in its patch and
enlarged by ``pool_margin``, like RoI pooling in a detector). The crop rule keeps at least 45 mm of context,
so a 5-10 mm cyst or metastasis covers 1-5 % of the patch and a global average drowns it: on the
phantom's lesions, logistic regression on per-phase mean intensities reaches 0.40 validation accuracy when
the means are taken at the patch centre and 0.13 over the whole patch. The deep maps still see the
surrounding liver through their receptive fields.

Variants (one network, chosen by :attr:`ClassifierConfig.variant`): ``full``; ``image`` (no clinical
input); ``clinical`` (clinical input only, no backbones); ``concat`` (per-phase pooled features
concatenated instead of the pairwise interaction, same normalisation and width; the paper's ablation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from liaids.codes import CLINICAL_FIELDS, LESION_TYPES, MALIGNANT_INDICES, PHASES
from liaids.networks.blocks import SCSE

VARIANTS: tuple[str, ...] = ("full", "image", "clinical", "concat")
POOLINGS: tuple[str, ...] = ("lesion", "global")
#: Phase pairs of the interaction, as (first, second) phase names.
PHASE_PAIRS: tuple[tuple[str, str], ...] = (("ART", "PV"), ("ART", "NC"), ("PV", "NC"))


@dataclass(frozen=True)
class ClassifierConfig:
    """Size and variant of the network. ``paper`` is the published design, ``small`` trains on a CPU.

    Args:
        variant: ``full``, ``image``, ``clinical`` or ``concat`` (see the module docstring).
        init_features: channels of the stem convolution.
        growth: channels each dense layer adds.
        blocks: dense layers per dense block; one transition (halving x/y, keeping z) follows each block.
        bottleneck: a dense layer's 1x1x1 convolution has ``bottleneck * growth`` channels.
        compression: a transition keeps this share of its input channels.
        stem_stride: in-plane stride of the stem (2 quarters the cost on a CPU).
        scse_reduction: channel reduction ratio of the scSE blocks.
        pooling: ``lesion`` (average over the lesion box region of each map, like RoI pooling; needs the
            box extents) or ``global`` (average over the whole patch).
        pool_margin: the lesion region is the box enlarged by this factor (rim, capsule, oedema ring).
        image_hidden: width of the first image FC layer.
        image_dim: width of the image feature (second image FC layer).
        head_hidden: width of the first classification FC layer.
        dropout: dropout before each second FC layer.
        clinical_dim: length of the clinical vector.
        n_classes: number of lesion types.
    """

    variant: str = "full"
    init_features: int = 64
    growth: int = 16
    blocks: tuple[int, ...] = (2, 4, 8)
    bottleneck: int = 4
    compression: float = 0.5
    stem_stride: int = 1
    scse_reduction: int = 2
    pooling: str = "lesion"
    pool_margin: float = 1.25
    image_hidden: int = 256
    image_dim: int = 128
    head_hidden: int = 64
    dropout: float = 0.2
    clinical_dim: int = len(CLINICAL_FIELDS)
    n_classes: int = len(LESION_TYPES)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; expected one of {', '.join(VARIANTS)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {', '.join(POOLINGS)}")
        if not self.blocks or min(self.blocks) < 1:
            raise ValueError(f"blocks must be positive layer counts, got {self.blocks}")

    @property
    def uses_image(self) -> bool:
        return self.variant != "clinical"

    @property
    def uses_clinical(self) -> bool:
        return self.variant != "image"

    @property
    def scale_channels(self) -> tuple[int, ...]:
        """Channels of the three (or more) multi-scale outputs of one backbone."""
        out, ch = [], self.init_features
        for n in self.blocks:
            ch = int((ch + n * self.growth) * self.compression)
            out.append(ch)
        return tuple(out)

    @property
    def backbone_channels(self) -> int:
        """Channels of one phase's multi-scale concatenation (196 at ``paper`` size)."""
        return sum(self.scale_channels)

    @property
    def fused_dim(self) -> int:
        """Length of the pooled interaction (or concatenation) vector (588 at ``paper`` size)."""
        return len(PHASE_PAIRS) * self.backbone_channels

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        """Inverse of :meth:`to_dict`; unknown or missing keys are an error (a config of another version)."""
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(data) - names), sorted(names - set(data))
        if unknown or missing:
            raise ValueError(f"classifier config keys unknown {unknown}, missing {missing}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def with_variant(self, variant: str) -> ClassifierConfig:
        return ClassifierConfig.from_dict({**self.to_dict(), "variant": variant})


PROFILES: dict[str, ClassifierConfig] = {
    # DenseNet-36: init 64, growth 16, blocks (2, 4, 8), bottleneck 4 -> scales of 48, 56, 92 = 196 channels.
    "paper": ClassifierConfig(),
    "small": ClassifierConfig(
        init_features=16,
        growth=8,
        blocks=(2, 2, 2),
        bottleneck=2,
        stem_stride=2,
        image_hidden=64,
        image_dim=32,
        head_hidden=32,
    ),
}


class DenseLayer(nn.Sequential):
    """BN-ReLU-Conv1x1x1 (bottleneck) -> BN-ReLU-Conv3x3x3 (growth channels)."""

    def __init__(self, in_channels: int, growth: int, bottleneck: int) -> None:
        width = bottleneck * growth
        super().__init__(
            nn.BatchNorm3d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(in_channels, width, 1, bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
            nn.Conv3d(width, growth, 3, padding=1, bias=False),
        )


class DenseBlock(nn.Module):
    """Dense layers, each seeing the concatenation of the block input and all earlier layer outputs."""

    def __init__(self, in_channels: int, n_layers: int, growth: int, bottleneck: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [DenseLayer(in_channels + n * growth, growth, bottleneck) for n in range(n_layers)]
        )
        self.out_channels = in_channels + n_layers * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class Transition(nn.Sequential):
    """BN-ReLU-Conv1x1x1 (compression) -> average pooling that halves x/y and keeps z -> scSE.

    z is kept because a patch has few slices (thick 5 mm slices) but many in-plane pixels.
    """

    def __init__(self, in_channels: int, out_channels: int, scse_reduction: int) -> None:
        super().__init__(
            nn.BatchNorm3d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(in_channels, out_channels, 1, bias=False),
            nn.AvgPool3d((1, 2, 2), ceil_mode=True),
            SCSE(3, out_channels, scse_reduction),
        )


class PhaseBackbone(nn.Module):
    """One phase's 3D DenseNet with scSE; returns the output of every transition (multi-scale).

    Args:
        config: network size.

    Example::

        >>> net = PhaseBackbone(PROFILES["paper"])
        >>> [f.shape[1] for f in net(torch.zeros(1, 1, 4, 32, 32))]
        [48, 56, 92]
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        s = config.stem_stride
        self.stem = nn.Sequential(
            nn.Conv3d(1, config.init_features, 3, stride=(1, s, s), padding=1, bias=False),
            nn.BatchNorm3d(config.init_features),
            nn.ReLU(inplace=True),
        )
        stages = []
        ch = config.init_features
        for n_layers, out_ch in zip(config.blocks, config.scale_channels, strict=True):
            block = DenseBlock(ch, n_layers, config.growth, config.bottleneck)
            stages.append(nn.Sequential(block, Transition(block.out_channels, out_ch, config.scse_reduction)))
            ch = out_ch
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, 1, D, H, W)`` -> one map per scale, ``(N, C_s, D, H / (stride 2**(s+1)), ...)``."""
        h = self.stem(x)
        out = []
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return out


def lesion_weights(extents: torch.Tensor, shape: tuple[int, ...], margin: float) -> torch.Tensor:
    """Pooling weights of the centred lesion region on a ``(D, H, W)`` grid.

    Each cell's weight is the share of it that the region covers (product over the three axes), so a
    lesion smaller than one cell of a coarse map still gets the cell(s) it lies in.

    Args:
        extents: ``(N, 3)`` share of the patch the lesion box spans along (D, H, W).
        shape: the map's ``(D, H, W)``.
        margin: enlargement of the box.

    Returns:
        ``(N, 1, D, H, W)`` weights summing to 1 per lesion.
    """
    half = (extents.clamp(min=1e-3) * margin).clamp(max=1.0) / 2.0
    weights = None
    for axis, n in enumerate(shape):
        edges = torch.arange(n + 1, dtype=extents.dtype, device=extents.device) / n
        lo, hi = 0.5 - half[:, axis : axis + 1], 0.5 + half[:, axis : axis + 1]
        cover = (torch.minimum(edges[1:], hi) - torch.maximum(edges[:-1], lo)).clamp(min=0.0) * n
        view = [cover.shape[0]] + [1] * len(shape)
        view[1 + axis] = n
        weights = cover.view(view) if weights is None else weights * cover.view(view)
    assert weights is not None
    weights = weights.unsqueeze(1)
    return weights / weights.sum(dim=(2, 3, 4), keepdim=True).clamp(min=1e-12)


def _pool_normalise(maps: list[torch.Tensor], weights: list[torch.Tensor] | None) -> torch.Tensor:
    """Pooling per scale (lesion-weighted or global average), concatenation, signed square root, L2."""
    if weights is None:
        pooled = torch.cat([m.mean(dim=(2, 3, 4)) for m in maps], dim=1)
    else:
        pooled = torch.cat([(m * w).sum(dim=(2, 3, 4)) for m, w in zip(maps, weights, strict=True)], dim=1)
    # Signed sqrt damps the few large products that dominate bilinear features (as in bilinear CNNs).
    pooled = torch.sign(pooled) * torch.sqrt(pooled.abs() + 1e-8)
    return F.normalize(pooled, dim=1)


class PhaseInteraction(nn.Module):
    """Pairwise element-wise products of same-scale maps of two phases, pooled and normalised per pair.

    With ``concat=True`` each phase's maps are pooled and normalised on their own instead (the ablation).
    A pair is pooled over the mean of its two phases' lesion regions.
    """

    def __init__(self, concat: bool = False) -> None:
        super().__init__()
        self.concat = concat

    def forward(
        self,
        features: dict[str, list[torch.Tensor]],
        weights: dict[str, list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Phase name -> multi-scale maps (and pooling weights, None = global)  ->  ``(N, 3 * C)``."""
        if self.concat:
            parts = [_pool_normalise(features[p], None if weights is None else weights[p]) for p in PHASES]
        else:
            parts = []
            for a, b in PHASE_PAIRS:
                pair_weights = (
                    None
                    if weights is None
                    else [(wa + wb) / 2.0 for wa, wb in zip(weights[a], weights[b], strict=True)]
                )
                products = [fa * fb for fa, fb in zip(features[a], features[b], strict=True)]
                parts.append(_pool_normalise(products, pair_weights))
        return torch.cat(parts, dim=1)


class ClassifierOutput(NamedTuple):
    """What :meth:`LesionClassifierNet.forward` returns (the same type in training and evaluation).

    Attributes:
        logits: ``(N, 7)`` over :data:`liaids.codes.LESION_TYPES`.
        image_features: ``(N, image_dim)`` output of the two image FC layers, ``None`` for ``clinical``.
        fused: ``(N, 588)`` pooled phase interaction (or concatenation), ``None`` for ``clinical``.
    """

    logits: torch.Tensor
    image_features: torch.Tensor | None
    fused: torch.Tensor | None


class LesionClassifierNet(nn.Module):
    """The paper's lesion classification network.

    Args:
        config: size and variant (see :data:`PROFILES`).

    Example::

        >>> net = LesionClassifierNet(PROFILES["small"]).eval()
        >>> out = net(torch.zeros(2, 3, 8, 32, 32), torch.zeros(2, 7), torch.full((2, 3, 3), 0.5))
        >>> out.logits.shape, out.image_features.shape
        (torch.Size([2, 7]), torch.Size([2, 32]))
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        if config.uses_image:
            self.backbones = nn.ModuleDict({p: PhaseBackbone(config) for p in PHASES})
            self.interaction = PhaseInteraction(concat=config.variant == "concat")
            self.image_head = nn.Sequential(
                nn.Linear(config.fused_dim, config.image_hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(config.dropout),
                nn.Linear(config.image_hidden, config.image_dim),
                nn.ReLU(inplace=True),
            )
        head_in = (config.image_dim if config.uses_image else 0) + (
            config.clinical_dim if config.uses_clinical else 0
        )
        self.head = nn.Sequential(
            nn.Linear(head_in, config.head_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.head_hidden, config.n_classes),
        )

    def forward(
        self,
        patches: torch.Tensor | None,
        clinical: torch.Tensor | None = None,
        extents: torch.Tensor | None = None,
    ) -> ClassifierOutput:
        """Classify lesions.

        Args:
            patches: ``(N, 3, D, H, W)`` in PHASES order, values in [0, 1]; ignored (may be ``None``) for
                the ``clinical`` variant.
            clinical: ``(N, 7)`` encoded clinical vectors; ignored (may be ``None``) for ``image``.
            extents: ``(N, 3, 3)`` per phase, share of the patch the lesion box spans along (D, H, W), as
                :func:`liaids.classification.patches.extract_lesion_patches` returns; needed by ``lesion``
                pooling.

        Returns:
            :class:`ClassifierOutput` with logits, image features and the pooled fused vector.
        """
        parts: list[torch.Tensor] = []
        image = fused = None
        cfg = self.config
        if cfg.uses_image:
            if patches is None or patches.dim() != 5 or patches.shape[1] != len(PHASES):
                got = None if patches is None else tuple(patches.shape)
                raise ValueError(f"patches must be (N, {len(PHASES)}, D, H, W), got {got}")
            features = {p: self.backbones[p](patches[:, n : n + 1]) for n, p in enumerate(PHASES)}
            weights = None
            if cfg.pooling == "lesion":
                if extents is None or tuple(extents.shape) != (len(patches), len(PHASES), 3):
                    got = None if extents is None else tuple(extents.shape)
                    raise ValueError(
                        f"lesion pooling needs extents of shape (N, {len(PHASES)}, 3), got {got}"
                    )
                weights = {
                    p: [
                        lesion_weights(extents[:, n].float(), tuple(m.shape[2:]), cfg.pool_margin)
                        for m in maps
                    ]
                    for n, (p, maps) in enumerate(features.items())
                }
            fused = self.interaction(features, weights)
            image = self.image_head(fused)
            parts.append(image)
        if cfg.uses_clinical:
            if clinical is None or clinical.dim() != 2 or clinical.shape[1] != cfg.clinical_dim:
                got = None if clinical is None else tuple(clinical.shape)
                raise ValueError(f"clinical must be (N, {cfg.clinical_dim}), got {got}")
            parts.append(clinical.to(parts[0].dtype if parts else clinical.dtype))
        return ClassifierOutput(self.head(torch.cat(parts, dim=1)), image, fused)


def malignant_probability(probabilities: torch.Tensor) -> torch.Tensor:
    """P(malignant) = P(HCC) + P(ICC) + P(HM).

    Args:
        probabilities: ``(..., 7)`` class probabilities in :data:`liaids.codes.LESION_TYPES` order.

    Returns:
        ``(...)`` malignant probabilities.
    """
    return probabilities[..., list(MALIGNANT_INDICES)].sum(dim=-1)
