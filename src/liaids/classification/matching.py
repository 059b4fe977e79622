"""Cross-phase lesion matching: one lesion = one box per phase, found there or transferred from the others.

Breathing moves the liver between the NC, ART and PV acquisitions (mostly along z, up to 2 cm) and the
scanned z ranges differ, so boxes detected in each phase are compared only after the phases are aligned
on their liver masks, in world millimetres (each volume's own geometry):

* ``translation`` (default): a rigid translation per phase, found by registering the liver's volume
  profiles along x, y and z (liver volume per millimetre of each world axis) to the reference phase's,
  searching around the liver-centroid difference and comparing only where both scans have data. Unlike
  the centroid alone it stays right when one phase's scan cuts off the top or bottom of the liver.
* ``bbox``: the authors' rule: a point keeps its relative position inside the liver's bounding box.

Aligned boxes (in the reference phase's world frame, slightly enlarged by ``margin_mm`` against residual
misalignment and slice quantisation) are grouped greedily by overlap, at most one box per phase per
lesion. A lesion missed in a phase gets the mean of its found boxes moved into that phase
(``found[phase] = False``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from liaids.classification.patches import BBox, box_corners, check_box
from liaids.codes import PHASES
from liaids.errors import LiaidsError
from liaids.types import Volume

METHODS: tuple[str, ...] = ("translation", "bbox")
_REFERENCE_ORDER: tuple[str, ...] = ("PV", "ART", "NC")
_PROFILE_STEP_MM = 0.5


@dataclass(frozen=True)
class PhaseBox:
    """A lesion detected in one phase: its box in that phase's voxels and the detector's score."""

    bbox_ijk: BBox
    score: float = 1.0


@dataclass(frozen=True)
class MatchedLesion:
    """One lesion across the three phases.

    Attributes:
        boxes: phase -> ``bbox_ijk`` in that phase's voxels (every phase present).
        found: phase -> True when detected there, False when the box was transferred.
        scores: phase -> detector score, None where not found.
        score: the highest score over the phases where it was found.
    """

    boxes: dict[str, BBox]
    found: dict[str, bool]
    scores: dict[str, float | None]
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "boxes": {p: list(b) for p, b in self.boxes.items()},
            "found": dict(self.found),
            "scores": dict(self.scores),
            "score": self.score,
        }

    @classmethod
    def from_report_lesion(cls, lesion: Mapping[str, Any]) -> MatchedLesion:
        """The matched lesion a ``report.json`` lesion was made from (per-phase boxes, found, scores; the
        lesion's ``detection_score`` as its score), for tools that re-run a stage on an earlier run."""
        phases = lesion["phases"]
        return cls(
            boxes={p: tuple(int(v) for v in phases[p]["bbox_ijk"]) for p in PHASES},  # type: ignore[misc]
            found={p: bool(phases[p]["found"]) for p in PHASES},
            scores={p: phases[p]["detection_score"] for p in PHASES},
            score=float(lesion["detection_score"]),
        )


@dataclass(frozen=True)
class LiverAlignment:
    """Per-phase, per-axis affine maps from a phase's world mm to the reference phase's world mm.

    ``x_ref = scale[p] * x_p + offset[p]`` along each world axis (x, y, z). For ``translation`` the scale
    is 1 and ``-offset[p]`` is the liver's displacement in phase ``p`` relative to the reference.

    Attributes:
        reference: the reference phase.
        method: ``translation``, ``bbox`` or ``identity`` (no usable liver masks).
        scale, offset: phase -> ``(3,)`` arrays.
        reliable: phase -> False where that phase's liver mask was empty (identity used).
    """

    reference: str
    method: str
    scale: dict[str, np.ndarray]
    offset: dict[str, np.ndarray]
    reliable: dict[str, bool]

    def to_reference(self, phase: str, xyz: np.ndarray) -> np.ndarray:
        """World mm of ``phase`` ``(..., 3)`` -> world mm of the reference phase."""
        return np.asarray(xyz, float) * self.scale[phase] + self.offset[phase]

    def from_reference(self, phase: str, xyz: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_reference`."""
        return (np.asarray(xyz, float) - self.offset[phase]) / self.scale[phase]

    def displacement_mm(self, phase: str, other: str) -> np.ndarray:
        """Liver displacement of ``phase`` relative to ``other`` (translation part, mm)."""
        return (self.offset[other] - self.offset[phase]).astype(float)

    def box_to_reference(self, phase: str, volume: Volume, bbox: BBox) -> np.ndarray:
        """A voxel box of ``phase`` as an axis-aligned reference mm box ``(x0, y0, z0, x1, y1, z1)``."""
        xyz = self.to_reference(phase, volume.index_to_physical(box_corners(bbox) - 0.5))
        return np.concatenate([xyz.min(axis=0), xyz.max(axis=0)])

    def box_from_reference(self, phase: str, volume: Volume, box_mm: np.ndarray) -> BBox:
        """A reference mm box as a voxel box of ``phase``, clipped to the volume (at least one voxel)."""
        xyz = self.from_reference(phase, box_corners(box_mm))
        idx = volume.physical_to_index(xyz) + 0.5
        lo = np.rint(idx.min(axis=0)).astype(int)
        hi = np.maximum(np.rint(idx.max(axis=0)).astype(int), lo + 1)
        limit = np.asarray(volume.shape[::-1])
        lo = np.clip(lo, 0, limit - 1)
        hi = np.clip(hi, lo + 1, limit)
        return (*lo.tolist(), *hi.tolist())  # type: ignore[return-value]

    def transfer(self, bbox: BBox, source: str, target: str, volumes: Mapping[str, Volume]) -> BBox:
        """Move a box found in ``source`` to where the lesion lies in ``target``."""
        box_mm = self.box_to_reference(source, volumes[source], bbox)
        return self.box_from_reference(target, volumes[target], box_mm)


def _axis_positions(volume: Volume) -> list[tuple[int, np.ndarray]]:
    """For each world axis: the voxel axis (i, j, k) along it and the world positions of its voxels."""
    d = volume.direction_matrix
    out = []
    for world in range(3):
        voxel = int(np.argmax(np.abs(d[world])))
        n = volume.shape[2 - voxel]
        pos = volume.origin[world] + d[world, voxel] * volume.spacing[voxel] * np.arange(n)
        out.append((voxel, pos))
    return out


@dataclass
class _LiverShape:
    centroid: np.ndarray  # (3,) world mm
    lo: np.ndarray  # (3,) world mm, bounding box
    hi: np.ndarray
    profiles: list[tuple[np.ndarray, np.ndarray]]  # per world axis: (grid mm, liver mm^3 per mm)
    coverage: list[tuple[float, float]]  # per world axis: scanned range in mm


def _liver_shape(volume: Volume, mask: np.ndarray) -> _LiverShape | None:
    if mask.shape != volume.shape:
        raise LiaidsError(f"liver mask shape {mask.shape} differs from its volume's {volume.shape}")
    mask = mask > 0
    if not mask.any():
        return None
    voxel_mm3 = float(np.prod(volume.spacing))
    kji = np.argwhere(mask)
    centroid = volume.index_to_physical(kji[:, ::-1].mean(axis=0))
    world = volume.index_to_physical(np.array([kji[:, ::-1].min(axis=0), kji[:, ::-1].max(axis=0)], float))
    lo, hi = world.min(axis=0), world.max(axis=0)
    profiles, coverage = [], []
    for voxel_axis, pos in _axis_positions(volume):
        other = tuple(a for a in range(3) if a != 2 - voxel_axis)
        per_voxel = mask.sum(axis=other) * voxel_mm3 / volume.spacing[voxel_axis]
        order = np.argsort(pos)
        pos, per_voxel = pos[order], per_voxel[order]
        half = volume.spacing[voxel_axis] / 2.0
        span = (float(pos[0] - half), float(pos[-1] + half))
        grid = np.arange(span[0], span[1] + 1e-6, _PROFILE_STEP_MM)
        profiles.append((grid, np.interp(grid, pos, per_voxel)))
        coverage.append(span)
    return _LiverShape(centroid, lo, hi, profiles, coverage)


def _profile_shift(moving: _LiverShape, fixed: _LiverShape, axis: int, start: float, radius: float) -> float:
    """Shift ``t`` (mm) minimising the mean squared profile difference ``moving(x + t)`` vs ``fixed(x)``."""
    grid_f, prof_f = fixed.profiles[axis]
    grid_m, prof_m = moving.profiles[axis]
    lo_m, hi_m = moving.coverage[axis]
    scale = float(np.mean(prof_f**2)) + 1e-6
    shifts = np.arange(start - radius, start + radius + 1e-6, _PROFILE_STEP_MM)
    costs = np.full(len(shifts), np.inf)
    # The compared stretch must cover at least half of the fixed phase's liver.
    liver_f = grid_f[prof_f > 0]
    min_overlap = 0.5 * (liver_f[-1] - liver_f[0] + _PROFILE_STEP_MM)
    for n, t in enumerate(shifts):
        inside = (grid_f + t >= lo_m) & (grid_f + t <= hi_m)
        if not inside.any():
            continue
        covered = grid_f[inside]
        liver_covered = covered[(covered >= liver_f[0]) & (covered <= liver_f[-1])]
        if len(liver_covered) * _PROFILE_STEP_MM < min_overlap:
            continue
        warped = np.interp(covered + t, grid_m, prof_m)
        costs[n] = float(np.mean((warped - prof_f[inside]) ** 2)) / scale
    if not np.isfinite(costs).any():
        return start
    best = int(np.argmin(costs))
    # Parabolic refinement between grid steps.
    if 0 < best < len(shifts) - 1 and np.isfinite(costs[best - 1 : best + 2]).all():
        c0, c1, c2 = costs[best - 1 : best + 2]
        denom = c0 - 2 * c1 + c2
        if denom > 0:
            return float(shifts[best] + 0.5 * (c0 - c2) / denom * _PROFILE_STEP_MM)
    return float(shifts[best])


def align_livers(
    volumes: Mapping[str, Volume],
    livers: Mapping[str, Volume | np.ndarray] | None,
    method: str = "translation",
    reference: str | None = None,
    search_mm: float = 30.0,
) -> LiverAlignment:
    """Align the phases of a study on their liver masks.

    Args:
        volumes: phase -> CT volume (only the geometry is used).
        livers: phase -> liver mask on that phase's grid (Volume or ``(K, J, I)`` array); None = no
            alignment (world coordinates are compared as they are).
        method: ``translation`` or ``bbox`` (see the module docstring).
        reference: reference phase (default: PV, else ART, else NC, the first with a liver).
        search_mm: the translation search covers the centroid difference +- this many mm per axis.

    Returns:
        The alignment.

    Raises:
        LiaidsError: an unknown method or a mask whose shape differs from its volume.
    """
    if method not in METHODS:
        raise LiaidsError(f"unknown alignment method {method!r}; expected one of {', '.join(METHODS)}")
    phases = [p for p in PHASES if p in volumes]
    shapes: dict[str, _LiverShape | None] = {p: None for p in phases}
    if livers is not None:
        for p in phases:
            if p in livers:
                mask = livers[p].array if isinstance(livers[p], Volume) else np.asarray(livers[p])
                shapes[p] = _liver_shape(volumes[p], mask)
    ref = reference or next((p for p in _REFERENCE_ORDER if shapes.get(p) is not None), phases[0])
    ones, zeros = np.ones(3), np.zeros(3)
    scale = {p: ones.copy() for p in phases}
    offset = {p: zeros.copy() for p in phases}
    reliable = {p: shapes[p] is not None and shapes[ref] is not None for p in phases}
    fixed = shapes[ref]
    for p in phases:
        moving = shapes[p]
        if p == ref or moving is None or fixed is None:
            continue
        if method == "bbox":
            extent = np.maximum(moving.hi - moving.lo, 1e-3)
            scale[p] = (fixed.hi - fixed.lo) / extent
            offset[p] = fixed.lo - scale[p] * moving.lo
        else:
            start = moving.centroid - fixed.centroid
            shift = np.array([_profile_shift(moving, fixed, a, float(start[a]), search_mm) for a in range(3)])
            offset[p] = -shift
    used = "identity" if not any(reliable.values()) else method
    return LiverAlignment(ref, used, scale, offset, reliable)


def _pairwise_overlaps(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3D IoU and IoM (intersection over the smaller volume) of every pair of mm boxes ``(n, 6)``."""
    lo = np.maximum(boxes[:, None, :3], boxes[None, :, :3])
    hi = np.minimum(boxes[:, None, 3:], boxes[None, :, 3:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)
    vol = np.prod(boxes[:, 3:] - boxes[:, :3], axis=1)
    union = vol[:, None] + vol[None, :] - inter
    smaller = np.minimum(vol[:, None], vol[None, :])
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    iom = np.divide(inter, smaller, out=np.zeros_like(inter), where=smaller > 0)
    return iou, iom


def _as_phase_box(item: PhaseBox | Sequence[int]) -> PhaseBox:
    return item if isinstance(item, PhaseBox) else PhaseBox(tuple(item), 1.0)  # type: ignore[arg-type]


def match_lesions(
    detections: Mapping[str, Sequence[PhaseBox | Sequence[int]]],
    volumes: Mapping[str, Volume],
    livers: Mapping[str, Volume | np.ndarray] | None = None,
    *,
    method: str = "translation",
    alignment: LiverAlignment | None = None,
    min_iou: float = 0.1,
    min_iom: float = 0.3,
    margin_mm: float = 2.0,
) -> list[MatchedLesion]:
    """Group per-phase lesion detections into lesions and give every lesion a box in every phase.

    Args:
        detections: phase -> boxes found in that phase (:class:`PhaseBox` or plain ``bbox_ijk``, score 1).
        volumes: phase -> CT volume of each of NC, ART, PV (geometry only).
        livers: phase -> liver mask, for the alignment (None: compare in world coordinates).
        method: alignment method when ``alignment`` is not given.
        alignment: a precomputed :func:`align_livers` result.
        min_iou, min_iom: two boxes of different phases may be the same lesion when, after alignment and
            enlargement by ``margin_mm``, their IoU or their IoM reaches these values.
        margin_mm: enlargement of every aligned box on each side.

    Returns:
        Matched lesions, highest score first.

    Raises:
        BoxError: a malformed box or one outside its volume.
        LiaidsError: a phase is missing from ``volumes``.
    """
    missing = [p for p in PHASES if p not in volumes]
    if missing:
        raise LiaidsError(f"matching needs a volume for every phase; missing {missing}")
    align = alignment or align_livers(volumes, livers, method)
    items: list[tuple[str, PhaseBox, np.ndarray]] = []
    for p in PHASES:
        for n, raw in enumerate(detections.get(p, [])):
            det = _as_phase_box(raw)
            box = check_box(det.bbox_ijk, volumes[p].shape, f"{p} detection {n}")
            det = PhaseBox(box, float(det.score))
            mm = align.box_to_reference(p, volumes[p], box)
            items.append((p, det, np.concatenate([mm[:3] - margin_mm, mm[3:] + margin_mm])))

    pairs = []
    if items:
        iou, iom = _pairwise_overlaps(np.array([it[2] for it in items]))
        phase_of = np.array([it[0] for it in items])
        candidate = (iou >= min_iou) | (iom >= min_iom)
        candidate &= phase_of[:, None] != phase_of[None, :]
        for a, b in zip(*np.nonzero(np.triu(candidate, k=1)), strict=True):
            pairs.append((float(iou[a, b] + iom[a, b]), int(a), int(b)))
    # Greedy grouping, best overlaps first; a group holds at most one detection per phase.
    group_of = list(range(len(items)))
    members: dict[int, list[int]] = {n: [n] for n in range(len(items))}
    for _, a, b in sorted(pairs, reverse=True):
        ga, gb = group_of[a], group_of[b]
        if ga == gb or {items[n][0] for n in members[ga]} & {items[n][0] for n in members[gb]}:
            continue
        for n in members[gb]:
            group_of[n] = ga
        members[ga].extend(members.pop(gb))

    lesions = []
    for group in members.values():
        found = {items[n][0]: items[n][1] for n in group}
        mean_mm = np.mean([items[n][2] for n in group], axis=0)
        mean_mm = np.concatenate([mean_mm[:3] + margin_mm, mean_mm[3:] - margin_mm])
        boxes = {
            p: found[p].bbox_ijk if p in found else align.box_from_reference(p, volumes[p], mean_mm)
            for p in PHASES
        }
        lesions.append(
            MatchedLesion(
                boxes=boxes,
                found={p: p in found for p in PHASES},
                scores={p: found[p].score if p in found else None for p in PHASES},
                score=max(d.score for d in found.values()),
            )
        )
    return sorted(lesions, key=lambda les: -les.score)
