"""Building blocks shared by the segmentation, detection and classification networks."""

from liaids.networks.blocks.non_local import NonLocalBlock
from liaids.networks.blocks.scse import SCSE, ChannelSE, SpatialSE

__all__ = ["SCSE", "ChannelSE", "NonLocalBlock", "SpatialSE"]
