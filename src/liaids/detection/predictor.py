"""Lesion detection on one CT volume with a trained detector.

Steps: canonical orientation -> crop to the liver (plus margin) and resample to the detection grid ->
2D detection on every grid slice with its ``2n+1``-slice slab -> 2D-to-3D merging -> the liver filter
(no liver voxel in the box, or too little liver in its core: dropped) -> the candidate filter, when the
model folder has one (``candidate_filter/``: a 3D CNN re-scores every candidate, see
:mod:`liaids.networks.candidate_filter`) -> boxes mapped back to the input's own voxel indices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.models.detection import FasterRCNN

from liaids.detection.candidates import CandidatePatchPlan, candidate_patch, candidate_scalars
from liaids.detection.merge import MergeSettings, keep_in_liver, merge_slices
from liaids.detection.preprocessing import (
    DetectionPlan,
    GridCrop,
    canonical_box_to_stored,
    slab_indices,
    to_detection_grid,
)
from liaids.errors import ModelLoadError
from liaids.model_store import builtin_model_dir, load_model_files, sha256
from liaids.networks.candidate_filter import CandidateFilter, CandidateFilterConfig
from liaids.networks.lesion_detector import DetectorConfig, build_detector
from liaids.provenance import software
from liaids.types import Volume

MODEL_KIND = "lesion-detection"
FILTER_KIND = "candidate-filter"
FILTER_FOLDER = "candidate_filter"
DEFAULT_MODEL = "detector_cswin3d_small"
SCHEMA_VERSION = "1.2"
NOT_FOR_CLINICAL_USE = "Not for clinical use: research software, not validated on real patients."


@dataclass(frozen=True)
class DetectedLesion:
    """One 3D lesion candidate.

    Args:
        bbox_ijk: ``[i0, j0, k0, i1, j1, k1]``, half-open voxel indices of the input volume as stored.
        score: detection confidence in [0, 1]: the candidate filter's probability when the detector has
            one, otherwise ``proposal_score``.
        n_boxes: number of 2D slice detections merged into it.
        proposal_score: Faster R-CNN's score (by default the highest 2D score behind it).
    """

    bbox_ijk: list[int]
    score: float
    n_boxes: int
    proposal_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bbox_ijk": self.bbox_ijk,
            "score": round(self.score, 4),
            "n_boxes": self.n_boxes,
        }
        if self.proposal_score is not None:
            out["proposal_score"] = round(self.proposal_score, 4)
        return out


@dataclass(frozen=True)
class Candidate:
    """A merged 3D candidate in canonical voxel indices (``[k0, j0, i0, k1, j1, i1]``, half-open)."""

    box_kji: np.ndarray
    score: float
    n_boxes: int


class LoadedCandidateFilter:
    """A trained candidate filter with its patch rule.

    Args:
        network: the filter network (eval mode).
        plan: how patches are cut.
        source: folder and checksum, for reports.
    """

    def __init__(self, network: CandidateFilter, plan: CandidatePatchPlan, source: dict[str, Any]) -> None:
        self.network = network
        self.plan = plan
        self.source = source

    @classmethod
    def load(cls, folder: str | Path, device: torch.device) -> LoadedCandidateFilter:
        """Load a ``candidate_filter`` folder.

        Raises:
            ModelLoadError: missing, truncated or foreign model files.
        """
        path = Path(folder)
        state, config = load_model_files(path, FILTER_KIND)
        try:
            network = CandidateFilter(CandidateFilterConfig.from_dict(config["network"]))
            network.load_state_dict(state)
            plan = CandidatePatchPlan.from_dict(config["patch"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(
                f"model does not fit its configuration ({exc})".splitlines()[0], path
            ) from exc
        network.to(device).eval()
        return cls(network, plan, {"folder": str(path), "sha256": sha256(path / "model.pt")})

    @torch.no_grad()
    def probabilities(
        self, canonical: Volume, liver_canonical: np.ndarray, candidates: list[Candidate], batch: int = 64
    ) -> np.ndarray:
        """P(lesion) for each candidate (all scored, whatever their proposal score)."""
        if not candidates:
            return np.zeros(0)
        device = next(self.network.parameters()).device
        out = []
        for start in range(0, len(candidates), batch):
            chunk = candidates[start : start + batch]
            patches = np.stack(
                [
                    candidate_patch(
                        canonical.array, liver_canonical, canonical.spacing_kji, c.box_kji, self.plan
                    )
                    for c in chunk
                ]
            )
            scalars = np.stack([candidate_scalars(c.score, c.box_kji, canonical.spacing_kji) for c in chunk])
            logits = self.network(torch.from_numpy(patches).to(device), torch.from_numpy(scalars).to(device))
            out.append(torch.sigmoid(logits).cpu().numpy())
        return np.concatenate(out).astype(float)


@torch.no_grad()
def detect_slices(
    network: FasterRCNN, grid: np.ndarray, context: int, batch: int = 8, device: torch.device | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the 2D detector on every slice of a uint8 grid volume.

    Args:
        network: detector in eval mode.
        grid: ``(K, J, I)`` uint8 image on the detection grid.
        context: ``n`` slices on each side.
        batch: slabs per forward pass.
        device: where the network lives.

    Returns:
        ``(slice_indices, boxes [N, 4] as x0, y0, x1, y1, scores)``.
    """
    depth = grid.shape[0]
    image = torch.from_numpy(grid)
    ks, boxes, scores = [], [], []
    for first in range(0, depth, batch):
        group = list(range(first, min(first + batch, depth)))
        slabs = [image[slab_indices(k, depth, context)].float().div_(255.0) for k in group]
        if device is not None:
            slabs = [s.to(device) for s in slabs]
        for k, out in zip(group, network(slabs), strict=True):
            n = len(out["scores"])
            if n:
                ks.append(np.full(n, k))
                boxes.append(out["boxes"].cpu().numpy())
                scores.append(out["scores"].cpu().numpy())
    if not ks:
        return np.zeros(0, int), np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    return np.concatenate(ks), np.concatenate(boxes), np.concatenate(scores)


@dataclass
class LesionDetector:
    """A loaded detector with its plan and merge rule.

    Example::

        det = LesionDetector.load()                     # shipped small 3D CSWin model
        lesions = det.detect(ct_volume, liver_volume)   # list of DetectedLesion
    """

    network: FasterRCNN
    config: DetectorConfig
    plan: DetectionPlan
    merge: MergeSettings
    device: torch.device
    source: dict[str, Any]

    candidate_filter: LoadedCandidateFilter | None = None

    @classmethod
    def load(
        cls, folder: str | Path | None = None, device: str = "cpu", candidate_filter: bool = True
    ) -> LesionDetector:
        """Load a detector model folder (default: the shipped ``small`` 3D CSWin model).

        Args:
            folder: the model folder.
            device: ``cpu`` or ``cuda``.
            candidate_filter: use the folder's ``candidate_filter/`` when there is one (False: the
                proposal scores alone, for ablations and for training a new filter).

        Raises:
            ModelLoadError: missing, truncated or foreign model files.
        """
        path = Path(folder) if folder is not None else builtin_model_dir(DEFAULT_MODEL)
        state, config = load_model_files(path, MODEL_KIND)
        try:
            det_cfg = DetectorConfig.from_dict(config["network"])
            network = build_detector(det_cfg)
            network.load_state_dict(state)
            plan = DetectionPlan.from_dict(config["plan"])
            merge = MergeSettings(**config.get("merge", {}))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(
                f"model does not fit its configuration ({exc})".splitlines()[0], path
            ) from exc
        dev = torch.device(device)
        network.to(dev).eval()
        source: dict[str, Any] = {
            "folder": str(path),
            "sha256": sha256(path / "model.pt"),
            "backbone": det_cfg.backbone,
        }
        filter_ = None
        if candidate_filter and (path / FILTER_FOLDER).is_dir():
            filter_ = LoadedCandidateFilter.load(path / FILTER_FOLDER, dev)
            source["candidate_filter"] = filter_.source
        return cls(network, det_cfg, plan, merge, dev, source, filter_)

    def candidates(self, canonical: Volume, liver_canonical: np.ndarray) -> list[Candidate]:
        """Merged 3D candidates that pass the liver filter, before the candidate filter.

        Args:
            canonical: CT in canonical orientation (HU).
            liver_canonical: boolean liver mask in the same orientation.

        Returns:
            candidates in canonical voxel indices, by descending proposal score.
        """
        if not liver_canonical.any():
            return []
        ks, boxes, scores, crop = self._slice_boxes(canonical, liver_canonical)
        found = []
        for lesion in merge_slices(ks, boxes, scores, self.merge):
            box = crop.grid_to_canonical_box(lesion.box_kji)
            if keep_in_liver(box, liver_canonical, self.merge):
                found.append(Candidate(box, float(lesion.score), int(lesion.n_boxes)))
        return found

    def _slice_boxes(
        self, canonical: Volume, liver_canonical: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, GridCrop]:
        """2D boxes of every grid the plan reads, in the pixels of the first grid, and that grid's crop."""
        parts, first = [], None
        for plan in self.plan.inference_grids:
            grid, crop, _ = to_detection_grid(canonical, plan, liver_canonical)
            ks, boxes, scores = detect_slices(self.network, grid, self.config.context, device=self.device)
            if first is None:
                first = crop
            elif len(boxes):
                # Same crop and slices (the liver's box, the plan's slice spacing); only the pixel differs.
                sx, sy = first.shape[2] / crop.shape[2], first.shape[1] / crop.shape[1]
                boxes = boxes * np.array([sx, sy, sx, sy], dtype=boxes.dtype)
            parts.append((ks, boxes, scores))
        assert first is not None
        ks, boxes, scores = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
        return ks, boxes, scores, first

    def detect(self, volume: Volume, liver: Volume | np.ndarray) -> list[DetectedLesion]:
        """Detect lesions in one CT volume.

        Args:
            volume: CT in HU.
            liver: liver mask in the volume's geometry (a label map: anything > 0 is liver, so a
                segmentation with lesion label 2 works as it is).

        Returns:
            lesions sorted by descending score, boxes in the volume's own voxel indices.
        """
        liver_array = liver.array if isinstance(liver, Volume) else np.asarray(liver)
        if liver_array.shape != volume.shape:
            raise ValueError(f"liver mask shape {liver_array.shape} differs from the CT's {volume.shape}")
        canonical = volume.to_canonical()
        liver_canonical = volume.with_array(liver_array > 0).to_canonical().array
        found = self.candidates(canonical, liver_canonical)
        if self.candidate_filter is None:
            return [
                DetectedLesion(canonical_box_to_stored(volume, c.box_kji), c.score, c.n_boxes) for c in found
            ]
        found = [c for c in found if c.score >= self.candidate_filter.plan.min_score]
        probs = self.candidate_filter.probabilities(canonical, liver_canonical, found)
        lesions = [
            DetectedLesion(canonical_box_to_stored(volume, c.box_kji), float(p), c.n_boxes, c.score)
            for c, p in zip(found, probs, strict=True)
        ]
        return sorted(lesions, key=lambda les: -les.score)


def detect(
    input_path: str | Path,
    output_path: str | Path,
    liver_path: str | Path | None = None,
    weights: str | Path | None = None,
    liver_weights: str | Path | None = None,
    device: str = "cpu",
) -> Path:
    """Detect lesions in one CT volume and write them as JSON (``liaids detect INPUT -o OUT.json``).

    Args:
        input_path: NIfTI file or DICOM series folder.
        output_path: JSON file to write (schema ``liaids.detections`` version 1.2, see the README).
        liver_path: liver mask (NIfTI, same geometry); segmented with the liver model when None.
        weights: detector model folder; default the shipped ``small`` 3D CSWin model.
        liver_weights: segmentation model folder used when no mask is given.
        device: ``cpu`` or ``cuda``.

    Returns:
        ``output_path``.
    """
    from liaids.errors import LiaidsError
    from liaids.io import read_volume
    from liaids.io.atomic import atomic_write_text

    volume = read_volume(input_path)
    detector = LesionDetector.load(weights, device)
    if liver_path is not None:
        liver = read_volume(liver_path)
        if not liver.same_geometry(volume, tol=1e-2):
            raise LiaidsError(f"liver mask geometry differs from the CT {Path(input_path).name}", liver_path)
        liver_source: dict[str, Any] = {"mask": str(liver_path)}
    else:
        from liaids.segmentation.predictor import LiverSegmenter

        segmenter = LiverSegmenter.load(liver_weights, device)
        liver = segmenter.segment(volume)
        liver_source = {"segmented_with": segmenter.config.get("profile"), "mask": None}
    lesions = detector.detect(volume, liver)
    report = {
        "schema": "liaids.detections",
        "version": SCHEMA_VERSION,
        "notice": NOT_FOR_CLINICAL_USE,
        "software": software(device),
        "input": {
            "path": str(input_path),
            "shape_ijk": list(reversed(volume.shape)),
            "spacing_mm": list(volume.spacing),
            "origin_mm": list(volume.origin),
            "direction": list(volume.direction),
        },
        "liver": liver_source,
        "detector": detector.source,
        "lesions": [{"id": n + 1, **les.to_dict()} for n, les in enumerate(lesions)],
    }
    out = Path(output_path)
    atomic_write_text(out, json.dumps(report, indent=1) + "\n")
    return out
