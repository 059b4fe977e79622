"""Key images: for every lesion, one axial view per phase (NC, ART, PV) with the lesion's contour.

Each view is an axial slice of the phase in radiological display (patient's right on the image's left,
anterior at the top: the canonical orientation of :meth:`liaids.types.Volume.to_canonical` shown as is),
through the slice where the lesion's mask is largest, centred on the lesion, with the same field of view
in the three phases (2.5 x the lesion's largest in-plane extent, at least 50 mm), resampled to square
pixels. Window: level 40, width 400 HU (abdominal soft tissue).

Contours: the lesion in amber where it was detected in that phase, in cyan where its box was transferred
from the other phases; other lesions in magenta; the liver in green. Images are PNG bytes, written by a
small built-in encoder (no imaging library needed).

The triage's flagged findings (candidates below the reporting threshold, not segmented) get the same three
views through the middle slice of their box, with the box drawn instead of a contour.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from liaids.codes import PHASES
from liaids.types import Volume

if TYPE_CHECKING:
    from liaids.pipeline.diagnose import Diagnosis

WINDOW_HU: tuple[float, float] = (-160.0, 240.0)
PANEL_PX = 200
MIN_FOV_MM = 50.0
FOV_SCALE = 2.5
COLOURS: dict[str, tuple[int, int, int]] = {
    "found": (255, 191, 0),
    "transferred": (0, 200, 255),
    "other": (230, 60, 230),
    "liver": (60, 200, 90),
}


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode an RGB image as PNG.

    Args:
        rgb: ``(H, W, 3)`` uint8.

    Returns:
        The PNG file's bytes.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    h, w, _ = rgb.shape
    # Every row starts with filter type 0 (none).
    raw = np.hstack([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)]).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def _canonical_box(volume: Volume, canonical: Volume, bbox: Sequence[int]) -> np.ndarray:
    """A stored-voxel box ``(i0, j0, k0, i1, j1, k1)`` as a canonical-voxel box (same convention)."""
    b = np.asarray(bbox, float)
    corners = np.array(
        [[b[3 * x], b[1 + 3 * y], b[2 + 3 * z]] for x in (0, 1) for y in (0, 1) for z in (0, 1)]
    )
    idx = canonical.physical_to_index(volume.index_to_physical(corners - 0.5)) + 0.5
    return np.concatenate([np.rint(idx.min(axis=0)), np.rint(idx.max(axis=0))]).astype(int)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Two-pixel contour of a 2D mask (inner edge, thick enough to see at report size).

    The image border does not count as an edge: a liver cut by the field of view gets no line along it.
    """
    if not mask.any():
        return mask
    return mask & ~ndimage.binary_erosion(mask, iterations=2, border_value=1)


def _panel(
    canonical_ct: Volume,
    canonical_instances: np.ndarray,
    canonical_liver: np.ndarray,
    k: int,
    centre_ji: tuple[float, float],
    fov_mm: float,
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The windowed axial slice ``k`` around a centre, with the liver's contour drawn.

    Returns:
        The RGB panel, the lesion instances sampled on it, and the canonical row (j) and column (i)
        coordinate of each panel row and column.
    """
    si, sj, _ = canonical_ct.spacing
    offsets = (np.arange(PANEL_PX) + 0.5) / PANEL_PX * fov_mm - fov_mm / 2.0
    rows = centre_ji[0] + offsets / sj
    cols = centre_ji[1] + offsets / si
    grid = np.meshgrid(rows, cols, indexing="ij")
    ct = ndimage.map_coordinates(canonical_ct.array[k].astype(np.float32), grid, order=1, cval=-1000.0)
    instances, liver = (
        ndimage.map_coordinates(a[k].astype(np.int32), grid, order=0, cval=0)
        for a in (canonical_instances, canonical_liver)
    )
    lo, hi = WINDOW_HU
    grey = (np.clip((ct - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgb[_outline(liver > 0)] = COLOURS["liver"]
    return rgb, instances, (rows, cols)


def _box_centre_slice(box: np.ndarray, n_k: int) -> tuple[int, tuple[float, float]]:
    """The middle slice of a canonical box and its in-plane centre ``(j, i)``."""
    i0, j0, k0, i1, j1, k1 = box
    k = int(np.clip((k0 + k1 - 1) // 2, 0, n_k - 1))
    return k, ((j0 + j1 - 1) / 2.0, (i0 + i1 - 1) / 2.0)


def lesion_view(
    canonical_ct: Volume,
    canonical_instances: np.ndarray,
    canonical_liver: np.ndarray,
    lesion_id: int,
    fallback_box: np.ndarray,
    fov_mm: float,
    found: bool,
) -> np.ndarray:
    """One key image: the axial slice of one phase through a lesion.

    Args:
        canonical_ct: the phase's CT, canonical orientation.
        canonical_instances: its lesion instance mask, canonical.
        canonical_liver: its liver mask (boolean), canonical.
        lesion_id: the lesion shown.
        fallback_box: the lesion's canonical box ``(i0, j0, k0, i1, j1, k1)``, used when its mask is empty.
        fov_mm: side of the square field of view.
        found: detected in this phase (amber contour) or transferred (cyan).

    Returns:
        ``(PANEL_PX, PANEL_PX, 3)`` uint8 RGB.
    """
    mask = canonical_instances == lesion_id
    per_slice = mask.sum(axis=(1, 2))
    if per_slice.any():
        k = int(np.argmax(per_slice))
        jj, ii = np.nonzero(mask[k])
        centre = (float(jj.mean()), float(ii.mean()))
    else:
        k, centre = _box_centre_slice(fallback_box, canonical_ct.shape[0])
    rgb, instances, _ = _panel(canonical_ct, canonical_instances, canonical_liver, k, centre, fov_mm)
    rgb[_outline((instances > 0) & (instances != lesion_id))] = COLOURS["other"]
    rgb[_outline(instances == lesion_id)] = COLOURS["found" if found else "transferred"]
    return rgb


def finding_view(
    canonical_ct: Volume,
    canonical_instances: np.ndarray,
    canonical_liver: np.ndarray,
    box: np.ndarray,
    fov_mm: float,
    found: bool,
) -> np.ndarray:
    """One key image of a triage finding: the axial slice through the middle of its box, box outlined.

    A finding is not segmented (it is not reported as a lesion), so its box is drawn instead of a contour.

    Args:
        canonical_ct: the phase's CT, canonical orientation.
        canonical_instances: the phase's lesion instance mask (the reported lesions), canonical.
        canonical_liver: its liver mask (boolean), canonical.
        box: the finding's canonical box ``(i0, j0, k0, i1, j1, k1)``.
        fov_mm: side of the square field of view.
        found: detected in this phase (amber box) or transferred (cyan).

    Returns:
        ``(PANEL_PX, PANEL_PX, 3)`` uint8 RGB.
    """
    k, centre = _box_centre_slice(box, canonical_ct.shape[0])
    rgb, instances, (rows, cols) = _panel(
        canonical_ct, canonical_instances, canonical_liver, k, centre, fov_mm
    )
    rgb[_outline(instances > 0)] = COLOURS["other"]
    # Voxel j spans [j - 0.5, j + 0.5), so the half-open box spans [j0 - 0.5, j1 - 0.5).
    inside_rows = (rows >= box[1] - 0.5) & (rows < box[4] - 0.5)
    inside_cols = (cols >= box[0] - 0.5) & (cols < box[3] - 0.5)
    rgb[_outline(np.outer(inside_rows, inside_cols))] = COLOURS["found" if found else "transferred"]
    return rgb


def _canonical_phases(diagnosis: Diagnosis) -> dict[str, tuple[Volume, np.ndarray, np.ndarray]]:
    """Phase -> its CT, lesion instance mask and liver mask, in canonical orientation."""
    study = diagnosis.input.study
    canonical: dict[str, tuple[Volume, np.ndarray, np.ndarray]] = {}
    for p in PHASES:
        ct = study[p].to_canonical()
        instances = study[p].with_array(diagnosis.instances[p].array).to_canonical().array
        liver = study[p].with_array(diagnosis.livers[p].array > 0).to_canonical().array
        canonical[p] = (ct, instances, liver)
    return canonical


def _field_of_view(boxes: Mapping[str, np.ndarray], canonical: Mapping[str, tuple[Volume, ...]]) -> float:
    """Side in mm of the square field of view shared by the three phases' views of one lesion."""
    extents = [
        max((b[3] - b[0]) * canonical[p][0].spacing[0], (b[4] - b[1]) * canonical[p][0].spacing[1])
        for p, b in boxes.items()
    ]
    return max(MIN_FOV_MM, FOV_SCALE * max(extents))


def render_key_images(diagnosis: Diagnosis) -> dict[int, dict[str, bytes]]:
    """Key images of every lesion of a run.

    Args:
        diagnosis: the run's result.

    Returns:
        Lesion id -> phase -> PNG bytes.
    """
    return render_report_images(diagnosis, findings=False)[0]


def render_finding_images(diagnosis: Diagnosis) -> dict[int, dict[str, bytes]]:
    """Key images of the triage findings that are malignant or indeterminate (the ones report.html lists).

    Args:
        diagnosis: the run's result.

    Returns:
        Finding id (1 for ``F1``...) -> phase -> PNG bytes.
    """
    return render_report_images(diagnosis, lesions=False)[1]


def render_report_images(
    diagnosis: Diagnosis, *, lesions: bool = True, findings: bool = True
) -> tuple[dict[int, dict[str, bytes]], dict[int, dict[str, bytes]]]:
    """Key images of a run's lesions and of its flagged triage findings, the volumes made canonical once.

    Args:
        diagnosis: the run's result.
        lesions, findings: which of the two to render (the other comes back empty).

    Returns:
        ``(lesion id -> phase -> PNG, finding id -> phase -> PNG)``; see :func:`render_key_images` and
        :func:`render_finding_images`.
    """
    shown = diagnosis.lesions if lesions else []
    flagged = [f for f in diagnosis.triage_findings if f.category != "benign"] if findings else []
    if not shown and not flagged:
        return {}, {}
    study = diagnosis.input.study
    canonical = _canonical_phases(diagnosis)

    def boxes_and_fov(stored: Mapping[str, Sequence[int]]) -> tuple[dict[str, np.ndarray], float]:
        boxes = {p: _canonical_box(study[p], canonical[p][0], stored[p]) for p in PHASES}
        return boxes, _field_of_view(boxes, canonical)

    lesion_images: dict[int, dict[str, bytes]] = {}
    for lesion in shown:
        boxes, fov = boxes_and_fov({p: lesion.phases[p].bbox_ijk for p in PHASES})
        lesion_images[lesion.lesion_id] = {
            p: encode_png(lesion_view(*canonical[p], lesion.lesion_id, boxes[p], fov, lesion.phases[p].found))
            for p in PHASES
        }
    finding_images: dict[int, dict[str, bytes]] = {}
    for finding in flagged:
        boxes, fov = boxes_and_fov(finding.match.boxes)
        finding_images[finding.finding_id] = {
            p: encode_png(finding_view(*canonical[p], boxes[p], fov, finding.match.found[p])) for p in PHASES
        }
    return lesion_images, finding_images


def phase_captions(found: Mapping[str, bool]) -> dict[str, str]:
    """Caption of each phase's key image: the phase and whether the lesion was detected or transferred."""
    return {p: f"{p}: {'detected' if found[p] else 'transferred'}" for p in PHASES}
