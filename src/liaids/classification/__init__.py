"""Lesion classification stage: lesion patches, cross-phase matching, the trained classifier."""

from liaids.classification.matching import (
    LiverAlignment,
    MatchedLesion,
    PhaseBox,
    align_livers,
    match_lesions,
)
from liaids.classification.patches import (
    PATCH_PLANS,
    BBox,
    BoxError,
    BoxErrors,
    PatchPlan,
    boxes_from_instances,
    extract_lesion_patches,
    extract_patches,
    jitter_box,
)
from liaids.classification.predictor import (
    LesionClassifier,
    LesionPrediction,
    clinical_vector,
    lesion_metrics,
)

__all__ = [
    "PATCH_PLANS",
    "BBox",
    "BoxError",
    "BoxErrors",
    "LesionClassifier",
    "LesionPrediction",
    "LiverAlignment",
    "MatchedLesion",
    "PatchPlan",
    "PhaseBox",
    "align_livers",
    "boxes_from_instances",
    "clinical_vector",
    "extract_lesion_patches",
    "extract_patches",
    "jitter_box",
    "lesion_metrics",
    "match_lesions",
]
