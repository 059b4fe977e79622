"""Faster R-CNN for focal liver lesions, composed from torchvision's parts.

backbone (3D CSWin or 2D CNN over adjacent slices) -> FPN P2-P6 -> shared RPN head -> RoIAlign on P2-P5
-> two shared FC layers -> lesion / background score and box refinement. Anchor, sampling and test
settings follow the authors' configuration (``../shared/reference/liaids-facts.md``).

Images are slabs ``(2n+1, H, W)`` already on the detection grid (see :mod:`liaids.detection.preprocessing`),
so torchvision's resizing transform is replaced by one that only pads to a multiple of 32.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from liaids.networks import cnn2d, cswin3d

BACKBONES = ("cswin3d", "cnn2d")
SIZE_DIVISOR = 32


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that shapes the detector; saved with the weights.

    Args:
        backbone: ``cswin3d`` (the paper's) or ``cnn2d`` (the ablation).
        backbone_config: the backbone's own config as a dict (see its ``PROFILES``).
        fpn_channels: channels of every pyramid level.
        representation: width of the two shared FC layers of the box head.
        anchor_scales: anchor sizes as multiples of each level's stride.
        anchor_ratios: anchor aspect ratios.
        rpn_*: region proposal settings; ``box_*``: second-stage settings.
    """

    backbone: str = "cswin3d"
    backbone_config: dict[str, Any] = field(default_factory=lambda: cswin3d.PROFILES["paper"].to_dict())
    fpn_channels: int = 256
    representation: int = 1024
    anchor_scales: tuple[float, ...] = (1.0, 3.0)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    rpn_batch: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 1000
    rpn_nms: float = 0.7
    box_fg_iou: float = 0.5
    box_bg_iou: float = 0.5
    box_batch: int = 512
    box_positive_fraction: float = 0.25
    box_score_threshold: float = 0.05
    box_nms: float = 0.1
    box_detections: int = 100

    @property
    def context(self) -> int:
        return int(self.backbone_config["context"])

    @property
    def in_slices(self) -> int:
        return 2 * self.context + 1

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        kwargs = dict(data)
        for key in ("anchor_scales", "anchor_ratios"):
            kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def profile(backbone: str, name: str) -> DetectorConfig:
    """Detector config for a backbone (``cswin3d`` or ``cnn2d``) and size profile (``paper``/``small``)."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose {', '.join(BACKBONES)}")
    table = cswin3d.PROFILES if backbone == "cswin3d" else cnn2d.PROFILES
    if name not in table:
        raise ValueError(f"unknown profile {name!r}; choose {', '.join(table)}")
    config = DetectorConfig(backbone=backbone, backbone_config=table[name].to_dict())
    if name == "small":
        # Narrower pyramid and head, fewer proposals: a CPU runs it on every slice of a liver.
        config = replace(
            config,
            fpn_channels=64,
            representation=256,
            rpn_pre_nms_test=500,
            rpn_post_nms_test=200,
            rpn_pre_nms_train=1000,
            rpn_post_nms_train=500,
            # RoIAlign's backward pass runs single-threaded on a CPU and took 40 % of a training step at
            # 256 RoIs per image; a crop holds one to three lesions, which 64 RoIs (up to 16 positive) cover.
            box_batch=64,
        )
    return config


def build_backbone(config: DetectorConfig) -> nn.Module:
    """The backbone module named by ``config.backbone``."""
    raw = dict(config.backbone_config)
    if config.backbone == "cswin3d":
        return cswin3d.CSWin3D(
            cswin3d.CSWin3DConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        )
    if config.backbone == "cnn2d":
        return cnn2d.CNN2D(
            cnn2d.CNN2DConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        )
    raise ValueError(f"unknown backbone {config.backbone!r}")


class BackboneWithPyramid(nn.Module):
    """Backbone maps at strides 4-32 -> FPN levels ``'0'..'3'`` (P2-P5) and ``'pool'`` (P6)."""

    def __init__(self, body: nn.Module, fpn_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            list(body.out_channels), fpn_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body(x)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


class SlabTransform(nn.Module):
    """Batch slabs of equal depth, zero-padding height and width to a multiple of 32; no resizing."""

    def forward(
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, torch.Tensor]] | None]:
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        h = -(-max(s[0] for s in sizes) // SIZE_DIVISOR) * SIZE_DIVISOR
        w = -(-max(s[1] for s in sizes) // SIZE_DIVISOR) * SIZE_DIVISOR
        batch = torch.stack([F.pad(im, (0, w - im.shape[-1], 0, h - im.shape[-2])) for im in images])
        return ImageList(batch, sizes), targets

    def postprocess(
        self,
        result: list[dict[str, torch.Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        return result


def build_detector(config: DetectorConfig) -> FasterRCNN:
    """Faster R-CNN with one foreground class (lesion) for the given config.

    Images passed to the model are ``(2n+1, H, W)`` float tensors; boxes are ``[x0, y0, x1, y1]`` in
    pixels of the detection grid (x = column i, y = row j).
    """
    backbone = BackboneWithPyramid(build_backbone(config), config.fpn_channels)
    strides = (4, 8, 16, 32, 64)
    anchors = AnchorGenerator(
        sizes=tuple(tuple(float(s * st) for s in config.anchor_scales) for st in strides),
        aspect_ratios=(tuple(config.anchor_ratios),) * len(strides),
    )
    roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    box_head = TwoMLPHead(config.fpn_channels * 7 * 7, config.representation)
    model = FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(config.representation, 2),
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_train,
        rpn_post_nms_top_n_train=config.rpn_post_nms_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_test,
        rpn_post_nms_top_n_test=config.rpn_post_nms_test,
        rpn_nms_thresh=config.rpn_nms,
        rpn_fg_iou_thresh=config.rpn_fg_iou,
        rpn_bg_iou_thresh=config.rpn_bg_iou,
        rpn_batch_size_per_image=config.rpn_batch,
        rpn_positive_fraction=config.rpn_positive_fraction,
        box_score_thresh=config.box_score_threshold,
        box_nms_thresh=config.box_nms,
        box_detections_per_img=config.box_detections,
        box_fg_iou_thresh=config.box_fg_iou,
        box_bg_iou_thresh=config.box_bg_iou,
        box_batch_size_per_image=config.box_batch,
        box_positive_fraction=config.box_positive_fraction,
    )
    model.transform = SlabTransform()
    return model
