"""2D slice detections -> 3D lesions (after the authors' rule), and the liver filter.

Boxes on the same slice or up to ``max_gap`` slices apart are joined (union-find) when their
intersection over the smaller box's area reaches ``min_iom``; a 3D lesion is the union of its 2D boxes.
Lesions whose box holds no liver voxel are dropped.

Scoring differs from the authors' post-processing by default: they score a 3D lesion by the *mean* of
its 2D scores and keep it when that reaches 0.2. On thin grids a lesion's first and last slices carry
low-score boxes, so the mean punishes exactly the lesions seen on many slices; on the phantom validation
cases the mean rule kept 0.11 of lesions at 2 false positives per scan where the *maximum* kept 0.71
(``small`` 2D model, epoch 8). The default is therefore the maximum with a 0.05 floor; the authors'
rule is ``MergeSettings(score="mean", min_score_3d=0.2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MergeSettings:
    """The 2D-to-3D rule; defaults from the authors' post-processing.

    Args:
        max_gap: join boxes at most this many slices apart.
        min_iom: join when intersection / smaller area >= this.
        min_score_2d: 2D boxes below this score are ignored.
        min_score_3d: 3D lesions whose aggregated score is below this are dropped.
        score: ``max`` (default) or ``mean`` (the authors') of the member scores.
    """

    max_gap: int = 3
    min_iom: float = 0.5
    min_score_2d: float = 0.05
    min_score_3d: float = 0.05
    score: str = "max"


@dataclass(frozen=True)
class Lesion3D:
    """A merged lesion: half-open box ``[k0, j0, i0, k1, j1, i1]`` on the grid it was found on, its score
    and the number of 2D boxes behind it."""

    box_kji: np.ndarray
    score: float
    n_boxes: int


def _find(parent: list[int], a: int) -> int:
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


def iom_2d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over the smaller area for boxes ``[x0, y0, x1, y1]``: ``(N, M)``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    smaller = np.minimum(area_a[:, None], area_b[None, :])
    return inter / np.maximum(smaller, 1e-9)


def merge_slices(
    slice_indices: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    settings: MergeSettings = MergeSettings(),
) -> list[Lesion3D]:
    """Merge 2D detections into 3D lesions.

    Args:
        slice_indices: ``(N,)`` slice ``k`` of each 2D box.
        boxes: ``(N, 4)`` boxes ``[x0, y0, x1, y1]`` (x = column ``i``, y = row ``j``), pixels of the grid.
        scores: ``(N,)`` detection scores.
        settings: the merging rule.

    Returns:
        3D lesions sorted by descending score.
    """
    keep = scores >= settings.min_score_2d
    ks, bx, sc = np.asarray(slice_indices)[keep], np.asarray(boxes, float)[keep], np.asarray(scores)[keep]
    n = len(sc)
    if n == 0:
        return []
    parent = list(range(n))
    # Compare each slice only with itself and the next max_gap slices (not all pairs of the volume).
    by_slice: dict[int, np.ndarray] = {int(k): np.flatnonzero(ks == k) for k in np.unique(ks)}
    for k, here in by_slice.items():
        there = [by_slice[k2] for k2 in range(k, k + settings.max_gap + 1) if k2 in by_slice]
        others = np.concatenate(there)
        close = iom_2d(bx[here], bx[others]) >= settings.min_iom
        for a_pos, b_pos in zip(*np.nonzero(close), strict=True):
            a, b = int(here[a_pos]), int(others[b_pos])
            ra, rb = _find(parent, a), _find(parent, b)
            if ra != rb:
                parent[rb] = ra
    groups: dict[int, list[int]] = {}
    for m in range(n):
        groups.setdefault(_find(parent, m), []).append(m)
    lesions = []
    for members in groups.values():
        idx = np.asarray(members)
        member_scores = sc[idx]
        score = float(member_scores.mean() if settings.score == "mean" else member_scores.max())
        if score < settings.min_score_3d:
            continue
        k0, k1 = int(ks[idx].min()), int(ks[idx].max()) + 1
        x0, y0 = np.floor(bx[idx, 0].min()), np.floor(bx[idx, 1].min())
        x1, y1 = np.ceil(bx[idx, 2].max()), np.ceil(bx[idx, 3].max())
        box = np.array([k0, y0, x0, k1, max(y1, y0 + 1), max(x1, x0 + 1)], dtype=int)
        lesions.append(Lesion3D(box, score, len(idx)))
    return sorted(lesions, key=lambda les: -les.score)


def touches_liver(box_kji: np.ndarray, liver: np.ndarray) -> bool:
    """True when the half-open box ``[k0, j0, i0, k1, j1, i1]`` holds at least one liver voxel."""
    k0, j0, i0, k1, j1, i1 = (int(v) for v in box_kji)
    return bool(liver[max(k0, 0) : k1, max(j0, 0) : j1, max(i0, 0) : i1].any())
