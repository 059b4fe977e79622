"""Which series of a study is the non-contrast (NC), arterial (ART) and portal-venous (PV) phase.

Tags decide first (SeriesDescription keywords, ContrastBolusAgent, acquisition time order). The images then
confirm: the aorta is found without any model (a bright, round, compact blob of 15-35 mm just in front of the
vertebral body) and its HU, with a soft-tissue enhancement measure, must follow NC < PV < ART. When the tags
cannot decide, the images alone do; when tags and images disagree, a :class:`PhaseError` says so.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from liaids.codes import PHASES
from liaids.errors import PhaseError, StudyReadError
from liaids.io.dicom import SeriesInfo, read_series, scan_dicom_folder, select_ct_series, time_to_seconds
from liaids.types import Study, Volume

# SeriesDescription keywords, matched as whole token sequences of the lower-cased description.
_PHASE_PHRASES: dict[str, tuple[tuple[str, ...], ...]] = {
    "NC": (
        ("non", "contrast"),
        ("noncontrast",),
        ("non", "enhanced"),
        ("nonenhanced",),
        ("unenhanced",),
        ("plain",),
        ("native",),
        ("nativ",),
        ("pre",),
        ("precontrast",),
        ("without", "contrast"),
        ("w", "o"),
        ("nc",),
        ("nect",),
    ),
    "ART": (
        ("arterial",),
        ("art",),
        ("ap",),
        ("late", "arterial"),
        ("hepatic", "arterial"),
        ("early", "arterial"),
        ("arteriel",),
        ("arteriell",),
    ),
    "PV": (
        ("portal",),
        ("venous",),
        ("pv",),
        ("pvp",),
        ("portovenous",),
        ("portalvenous",),
        ("portal", "venous"),
    ),
}
# Later phases that are none of the three: excluded from the candidates.
_DELAYED_PHRASES: tuple[tuple[str, ...], ...] = (
    ("delayed",),
    ("delay",),
    ("equilibrium",),
    ("excretory",),
    ("transitional",),
    ("hepatobiliary",),
    ("hbp",),
)

#: Aorta HU above which a series cannot be non-contrast.
NC_AORTA_MAX_HU = 90.0
#: How much brighter the aorta must be in ART than in PV.
ART_PV_MARGIN_HU = 15.0
#: How much higher the soft-tissue median must be in PV than in NC.
PV_NC_SOFT_MARGIN_HU = 5.0

# Aorta search (mm and HU).
_AORTA_DIAMETER_MM = (15.0, 35.0)
_AORTA_THRESHOLDS_HU = (150.0, 110.0)
_AORTA_MAX_HU = 900.0
_BODY_HU = -400.0
_BONE_HU = 200.0
_VERTEBRA_MIN_AREA_MM2 = 300.0
_SOFT_TISSUE_HU = (0.0, 200.0)
_SOFT_TISSUE_HALF_HEIGHT_MM = 20.0


@dataclass(frozen=True)
class PhaseAssignment:
    """Result of :func:`identify_phases`.

    Args:
        series: phase name -> SeriesInstanceUID (the :class:`SeriesInfo` key).
        evidence: phase name -> human-readable reasons, in the order they were found; the extra key
            ``"notes"`` (when present) holds remarks on tag conflicts that concern no single phase.
        info: phase name -> the series' :class:`SeriesInfo`.
        measurements: phase name -> :func:`measure_enhancement` values, when images were checked.
        method: ``"tags"``, ``"tags+images"`` (tags confirmed by images) or ``"images"``.
    """

    series: dict[str, str]
    evidence: dict[str, list[str]]
    info: dict[str, SeriesInfo] = field(default_factory=dict, compare=False)
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)
    method: str = "tags"

    def label(self, phase: str) -> str:
        """``'description' (UID)`` of the series assigned to ``phase``."""
        info = self.info.get(phase)
        if info is None:
            return self.series.get(phase, "?")
        return f"'{info.series_description or 'no description'}' ({info.series_uid})"

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable summary (for ``Study.meta`` and reports)."""
        return {
            "series": dict(self.series),
            "evidence": {p: list(v) for p, v in self.evidence.items()},
            "measurements": {p: dict(m) for p, m in self.measurements.items()},
            "method": self.method,
        }


# --------------------------------------------------------------------------------------------------
# Tags
# --------------------------------------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _contains(tokens: Sequence[str], phrase: Sequence[str]) -> bool:
    n = len(phrase)
    return any(tuple(tokens[i : i + n]) == tuple(phrase) for i in range(len(tokens) - n + 1))


def description_phases(description: str) -> set[str]:
    """Phases a SeriesDescription names, by whole-word keywords (``"Art"`` yes, ``"Cartilage"`` no).

    Args:
        description: the SeriesDescription.

    Returns:
        A subset of :data:`PHASES`, or ``{"DELAYED"}`` for a delayed/equilibrium/hepatobiliary series.
    """
    tokens = _tokens(description)
    if any(_contains(tokens, p) for p in _DELAYED_PHRASES):
        return {"DELAYED"}
    found = {phase for phase, phrases in _PHASE_PHRASES.items() if any(_contains(tokens, p) for p in phrases)}
    # "C-" (without contrast) is common on scanners; the tokeniser drops the sign.
    if re.search(r"(^|[\s_/(])c-($|[\s_/)])", description.lower()):
        found.add("NC")
    if "late" in tokens and "arterial" in tokens:
        found.discard("PV")
    return found


def _time_key(info: SeriesInfo) -> tuple[str, float] | None:
    seconds = time_to_seconds(info.acquisition_time) if info.acquisition_time else None
    if seconds is None:
        return None
    return (info.acquisition_date, seconds)


def _root_of(series: Sequence[SeriesInfo]) -> Path:
    files = [s.files[0].resolve().parent for s in series if s.files]
    return Path(os.path.commonpath(files)) if files else Path.cwd()


def _listing(series: Sequence[SeriesInfo]) -> str:
    return "; ".join(s.label for s in series) if series else "none"


def _candidates(series: Sequence[SeriesInfo]) -> tuple[list[SeriesInfo], list[SeriesInfo]]:
    """CT image series that may be one of the three phases, and those set aside as delayed phases."""
    ct = [s for s in series if s.is_ct_image]
    delayed = [s for s in ct if description_phases(s.series_description) == {"DELAYED"}]
    return [s for s in ct if s not in delayed], delayed


def _assign_from_tags(
    candidates: Sequence[SeriesInfo], root: Path
) -> tuple[dict[str, SeriesInfo], dict[str, list[str]], list[str]]:
    """Assign what the tags can decide.

    Returns:
        ``(assigned, evidence, notes)``: possibly partial phase -> series, reasons per phase, and remarks
        (tag conflicts) that concern no single phase.

    Raises:
        PhaseError: two series claim the same phase in their descriptions.
    """
    assigned: dict[str, SeriesInfo] = {}
    evidence: dict[str, list[str]] = {p: [] for p in PHASES}
    notes: list[str] = []
    claims: dict[str, list[SeriesInfo]] = {p: [] for p in PHASES}
    for s in candidates:
        phases = description_phases(s.series_description)
        if len(phases) == 1:
            claims[next(iter(phases))].append(s)
        elif len(phases) > 1:
            notes.append(f"description of {s.label} names several phases ({', '.join(sorted(phases))})")
    for phase in PHASES:
        if len(claims[phase]) > 1:
            raise PhaseError(
                f"{len(claims[phase])} series claim phase {phase} by their description: "
                f"{_listing(claims[phase])}. Keep one series per phase in the folder",
                root,
            )
        if claims[phase]:
            s = claims[phase][0]
            assigned[phase] = s
            evidence[phase].append(f"SeriesDescription '{s.series_description}' names {phase}")

    def unassigned() -> list[SeriesInfo]:
        taken = {s.series_uid for s in assigned.values()}
        return [s for s in candidates if s.series_uid not in taken]

    # ContrastBolusAgent: only telling when some series have it and others do not.
    with_agent = [s for s in candidates if s.contrast_agent]
    without_agent = [s for s in candidates if not s.contrast_agent]
    if with_agent and without_agent:
        if "NC" not in assigned and len(without_agent) == 1 and without_agent[0] in unassigned():
            s = without_agent[0]
            assigned["NC"] = s
            evidence["NC"].append(f"no ContrastBolusAgent, unlike the other series ({s.label})")
        for phase, s in assigned.items():
            if phase == "NC" and s.contrast_agent:
                notes.append(f"NC series {s.label} records ContrastBolusAgent '{s.contrast_agent}'")
            if phase != "NC" and not s.contrast_agent:
                notes.append(f"{phase} series {s.label} records no ContrastBolusAgent")
    # Acquisition time order (NC, then ART, then PV) for the rest, when it agrees with what is known.
    if len(candidates) == len(PHASES) and len(assigned) < len(PHASES):
        keys = [_time_key(s) for s in candidates]
        if all(k is not None for k in keys) and len(set(keys)) == len(keys):
            by_time = [s for _, s in sorted(zip(keys, candidates, strict=True), key=lambda kv: kv[0])]
            agrees = all(by_time[PHASES.index(p)].series_uid == s.series_uid for p, s in assigned.items())
            if agrees:
                for phase, s in zip(PHASES, by_time, strict=True):
                    if phase not in assigned:
                        assigned[phase] = s
                        evidence[phase].append(
                            f"acquisition time {s.acquisition_time} is "
                            f"{('first', 'second', 'third')[PHASES.index(phase)]} of the three series"
                        )
            else:
                notes.append("acquisition time order disagrees with the descriptions; times ignored")
    # Two phases known and exactly one series left: it is the third phase.
    rest = unassigned()
    if len(candidates) == len(PHASES) and len(assigned) == len(PHASES) - 1 and len(rest) == 1:
        phase = next(p for p in PHASES if p not in assigned)
        assigned[phase] = rest[0]
        evidence[phase].append("the one series left once the other two phases were identified")
    return assigned, evidence, notes


def _check_patient(assigned: Mapping[str, SeriesInfo], root: Path) -> None:
    ids = {phase: s.patient_id for phase, s in assigned.items() if s.patient_id}
    if len(set(ids.values())) > 1:
        detail = ", ".join(
            f"{phase} {assigned[phase].label} has PatientID '{pid}'" for phase, pid in ids.items()
        )
        raise PhaseError(f"mismatched PatientID across the phases: {detail}", root)


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _body_mask(slice_hu: np.ndarray) -> np.ndarray:
    return ndimage.binary_fill_holes(_largest_component(slice_hu > _BODY_HU))


def _components(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pixel coordinates ``(rows, cols)`` of each connected component of a 2D mask."""
    labels, _ = ndimage.label(mask)
    out = []
    for idx, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        rr, cc = np.nonzero(labels[box] == idx)
        out.append((rr + box[0].start, cc + box[1].start))
    return out


def _find_aorta_in_slice(
    slice_hu: np.ndarray, pixel_mm: tuple[float, float]
) -> tuple[float, float, float, float, float] | None:
    """Best aorta candidate in one canonical axial slice (rows run posterior, columns run left).

    Returns:
        ``(row, column, diameter_mm, compactness, mean_hu)`` or None.
    """
    dy, dx = pixel_mm
    body = _body_mask(slice_hu)
    if body.sum() * dx * dy < 10_000:  # under 1 dm^2: no abdomen in this slice
        return None
    rows, cols = np.nonzero(body)
    body_col = cols.mean()
    # Vertebral body: the largest bone component near the midline, in the back 60% of the body (lower in
    # the abdomen the belly makes the body centre move forward, but not that far).
    vertebra = None
    best_area = _VERTEBRA_MIN_AREA_MM2
    back = rows.min() + 0.4 * np.ptp(rows)
    for rr, cc in _components((slice_hu >= _BONE_HU) & body):
        area = rr.size * dx * dy
        if area > best_area and rr.mean() > back and abs(cc.mean() - body_col) * dx < 40.0:
            vertebra, best_area = (rr, cc), area
    exclude = np.zeros_like(body)
    if vertebra is not None:
        exclude[vertebra] = True
        anterior_edge = float(vertebra[0].min())
        center_col = float(np.median(vertebra[1]))
        # The aorta lies in front of the vertebral body (posterior elements are bone too: keep them out).
        row_range = (anterior_edge - 70.0 / dy, anterior_edge + 3.0 / dy)
    else:
        center_col = float(body_col)
        row_range = (rows.min() + 0.35 * np.ptp(rows), rows.min() + 0.75 * np.ptp(rows))
    col_range = (center_col - 60.0 / dx, center_col + 60.0 / dx)
    # Light smoothing so that noise does not punch holes in the lumen or join it to neighbours.
    smooth = ndimage.gaussian_filter(slice_hu, sigma=1.0)
    best: tuple[float, float, float, float, float] | None = None
    for threshold in _AORTA_THRESHOLDS_HU:
        mask = (smooth >= threshold) & (smooth <= _AORTA_MAX_HU) & body & ~exclude
        for rr, cc in _components(mask):
            area = rr.size * dx * dy
            diameter = 2.0 * np.sqrt(area / np.pi)
            if not _AORTA_DIAMETER_MM[0] <= diameter <= _AORTA_DIAMETER_MM[1]:
                continue
            r0, c0 = rr.mean(), cc.mean()
            if not (row_range[0] <= r0 <= row_range[1] and col_range[0] <= c0 <= col_range[1]):
                continue
            # Compactness: area over the disc reaching the farthest pixel (about 1 for a disc).
            r_max = np.sqrt(((rr - r0) * dy) ** 2 + ((cc - c0) * dx) ** 2).max() + 0.5 * min(dx, dy)
            compactness = float(area / (np.pi * r_max**2))
            if compactness < 0.6:
                continue
            mean_hu = float(slice_hu[rr, cc].mean())
            if best is None or (compactness, mean_hu) > (best[3], best[4]):
                best = (float(r0), float(c0), float(diameter), compactness, mean_hu)
        if best is not None:
            break
    return best


def find_aorta(volume: Volume) -> dict[str, Any] | None:
    """Look for the abdominal aorta in the middle slices of one volume, without any model.

    It works only where the aorta is enhanced (ART, PV): in a non-contrast series it is not brighter than
    its surroundings, and its position is taken from another phase instead.

    Args:
        volume: a CT volume in HU (any axis order; it is reoriented internally).

    Returns:
        ``{"position_mm": [x, y, z] (LPS), "diameter_mm", "compactness", "mean_hu"}`` or None.
    """
    canon = volume.to_canonical()
    arr = canon.array
    K = arr.shape[0]
    if K == 0:
        return None
    lo, hi = int(0.25 * (K - 1)), int(np.ceil(0.75 * (K - 1)))
    ks = sorted({round(float(k)) for k in np.linspace(lo, hi, num=min(7, hi - lo + 1))})
    pixel = (canon.spacing[1], canon.spacing[0])
    found = []
    for k in ks:
        hit = _find_aorta_in_slice(np.asarray(arr[k], dtype=np.float32), pixel)
        if hit is not None:
            found.append((k, *hit))
    if not found:
        return None
    # The most compact candidate; its brightness breaks ties.
    k, row, col, diameter, compactness, mean_hu = max(found, key=lambda f: (round(f[4], 2), f[5]))
    position = canon.index_to_physical(np.array([col, row, k], dtype=float))
    return {
        "position_mm": [float(v) for v in position],
        "diameter_mm": float(diameter),
        "compactness": float(compactness),
        "mean_hu": float(mean_hu),
    }


def measure_enhancement(volume: Volume, aorta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Measure the aorta and the soft-tissue enhancement of one series.

    Args:
        volume: a CT volume in HU.
        aorta: a :func:`find_aorta` result, possibly from another phase of the same patient (its physical
            position is used). When None the aorta is searched in ``volume`` itself.

    Returns:
        ``aorta_hu`` (mean HU in a disc of 0.6 x the aorta radius on three slices, None when the aorta is
        unknown or outside the volume), ``soft_tissue_hu`` (median HU of body voxels in [0, 200) HU, the
        aorta excluded, within 20 mm of the aorta level: liver, spleen, muscle, a portal-venous proxy),
        ``aorta_position_mm``, ``aorta_diameter_mm`` and ``aorta_found_here``.
    """
    return _measure(volume.to_canonical(), aorta, {})


def _measure(
    canon: Volume, aorta: Mapping[str, Any] | None, body_masks: dict[int, np.ndarray]
) -> dict[str, Any]:
    """:func:`measure_enhancement` of a canonical volume; ``body_masks`` caches its slices' body masks
    between calls on the same volume (they cost most of the time)."""
    found_here = aorta is None
    if aorta is None:
        aorta = find_aorta(canon)
    arr = canon.array
    n_k, n_j, n_i = arr.shape
    dx, dy, dz = canon.spacing
    result: dict[str, Any] = {
        "aorta_hu": None,
        "soft_tissue_hu": None,
        "aorta_position_mm": None,
        "aorta_diameter_mm": None,
        "aorta_found_here": bool(found_here and aorta is not None),
    }
    disc = np.zeros((n_j, n_i), dtype=bool)
    if aorta is not None:
        col, row, k = canon.physical_to_index(np.asarray(aorta["position_mm"], dtype=float))
        k_center = round(float(k))
        result["aorta_position_mm"] = list(aorta["position_mm"])
        result["aorta_diameter_mm"] = float(aorta["diameter_mm"])
        radius = 0.3 * float(aorta["diameter_mm"])
        yy, xx = np.mgrid[0:n_j, 0:n_i]
        disc = ((yy - row) * dy) ** 2 + ((xx - col) * dx) ** 2 <= radius**2
        k_range = [kk for kk in (k_center - 1, k_center, k_center + 1) if 0 <= kk < n_k]
        if disc.any() and k_range and 0 <= k_center < n_k:
            result["aorta_hu"] = float(np.mean(arr[k_range][:, disc]))
        ks = np.arange(n_k)
        near = ks[np.abs(ks - float(k)) * dz <= _SOFT_TISSUE_HALF_HEIGHT_MM]
    else:
        near = np.array([], dtype=int)
    if near.size == 0:
        near = np.arange(int(0.4 * n_k), max(int(0.6 * n_k), int(0.4 * n_k) + 1))
    if near.size > 9:  # a few slices are enough for a median
        near = near[np.linspace(0, near.size - 1, 9).round().astype(int)]
    values = []
    for kk in near:
        s = np.asarray(arr[kk], dtype=np.float32)
        if int(kk) not in body_masks:
            body_masks[int(kk)] = _body_mask(s)
        keep = body_masks[int(kk)] & (s >= _SOFT_TISSUE_HU[0]) & (s < _SOFT_TISSUE_HU[1]) & ~disc
        values.append(s[keep])
    soft = np.concatenate(values) if values else np.array([])
    if soft.size:
        result["soft_tissue_hu"] = float(np.median(soft))
    return result


def _measure_all(volumes: Mapping[str, Volume]) -> dict[str, dict[str, Any]]:
    """Measure several series of one patient at one shared aorta position.

    Each series' detection is measured in every series; the one whose HU changes most between the series
    wins (contrast passes through the aorta, while a bone or calcification mistaken for it stays constant),
    the brightest detection breaking ties.
    """
    volumes = {key: vol.to_canonical() for key, vol in volumes.items()}  # reorient once, not per call
    detections = {key: find_aorta(vol) for key, vol in volumes.items()}
    found = {k: d for k, d in detections.items() if d is not None}
    body_masks: dict[str, dict[int, np.ndarray]] = {key: {} for key in volumes}
    if not found:
        return {key: _measure(vol, None, body_masks[key]) for key, vol in volumes.items()}
    trials = {
        ref: {key: _measure(vol, found[ref], body_masks[key]) for key, vol in volumes.items()}
        for ref in found
    }

    def score(ref: str) -> tuple[float, float]:
        values = [m["aorta_hu"] for m in trials[ref].values() if m["aorta_hu"] is not None]
        spread = max(values) - min(values) if len(values) == len(volumes) else -1.0
        return (spread, float(found[ref]["mean_hu"]))

    ref_key = max(found, key=score)
    out = trials[ref_key]
    for key, m in out.items():
        m["aorta_found_here"] = key == ref_key
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} HU"


def _volumes_by_phase(assignment: PhaseAssignment, volumes: Mapping[str, Volume]) -> dict[str, Volume]:
    by_phase = {}
    for phase, uid in assignment.series.items():
        if uid in volumes:
            by_phase[phase] = volumes[uid]
        elif phase in volumes:
            by_phase[phase] = volumes[phase]
    return by_phase


def _rule_violations(assignment: PhaseAssignment, m: Mapping[str, Mapping[str, Any]]) -> list[str]:
    problems = []
    nc, art, pv = (m.get(p, {}) for p in PHASES)
    if nc.get("aorta_hu") is not None and nc["aorta_hu"] >= NC_AORTA_MAX_HU:
        problems.append(
            f"NC series {assignment.label('NC')} has an enhanced aorta ({_fmt(nc['aorta_hu'])}, "
            f"non-contrast must be < {NC_AORTA_MAX_HU:.0f} HU)"
        )
    art_hu, pv_hu = art.get("aorta_hu"), pv.get("aorta_hu")
    if art_hu is not None and pv_hu is not None and art_hu < pv_hu + ART_PV_MARGIN_HU:
        problems.append(
            f"aorta is {_fmt(art_hu)} in ART series {assignment.label('ART')} but {_fmt(pv_hu)} in PV series "
            f"{assignment.label('PV')} (ART must be higher by >= {ART_PV_MARGIN_HU:.0f} HU)"
        )
    nc_soft, pv_soft = nc.get("soft_tissue_hu"), pv.get("soft_tissue_hu")
    if nc_soft is not None and pv_soft is not None and pv_soft < nc_soft + PV_NC_SOFT_MARGIN_HU:
        problems.append(
            f"soft tissue is {_fmt(pv_soft)} in PV series {assignment.label('PV')} but {_fmt(nc_soft)} in NC "
            f"series {assignment.label('NC')} (PV must be higher by >= {PV_NC_SOFT_MARGIN_HU:.0f} HU)"
        )
    return problems


def check_phases(
    assignment: PhaseAssignment, volumes: Mapping[str, Volume], path: str | Path | None = None
) -> dict[str, dict[str, Any]]:
    """Check an assignment against the images: NC aorta < 90 HU, ART aorta > PV aorta, PV soft tissue > NC.

    Args:
        assignment: the phases to check.
        volumes: the volumes, keyed by SeriesInstanceUID (as in :func:`identify_phases`) or by phase name.
        path: folder named in errors (defaults to the series' common folder).

    Returns:
        Phase name -> :func:`measure_enhancement` values. When no aorta is found the rules on it are
        skipped (the values say None).

    Raises:
        PhaseError: a volume is missing, or the images contradict the assignment (the message names the
            series and the measured values).
    """
    root = Path(path) if path is not None else _root_of(list(assignment.info.values()))
    by_phase = _volumes_by_phase(assignment, volumes)
    missing = [p for p in assignment.series if p not in by_phase]
    if missing:
        raise PhaseError(f"no volume given for phase(s) {', '.join(missing)}", root)
    measured = _measure_all(by_phase)
    problems = _rule_violations(assignment, measured)
    if problems:
        hint = ""
        if all(measured[p]["aorta_hu"] is not None for p in PHASES):
            ranked = sorted(PHASES, key=lambda p: measured[p]["aorta_hu"])
            by_image = {"NC": ranked[0], "PV": ranked[1], "ART": ranked[2]}
            hint = ". By aorta HU alone: " + ", ".join(
                f"{q} = {assignment.label(p)}" for q, p in by_image.items()
            )
        raise PhaseError("series tags and images disagree: " + "; ".join(problems) + hint, root)
    return measured


def _assign_from_images(
    candidates: Sequence[SeriesInfo], volumes: Mapping[str, Volume], root: Path
) -> tuple[dict[str, SeriesInfo], dict[str, dict[str, Any]]]:
    """Lowest aorta HU = NC, highest = ART, the remaining one = PV."""
    measured = _measure_all({s.series_uid: volumes[s.series_uid] for s in candidates})
    if any(m["aorta_hu"] is None for m in measured.values()):
        raise PhaseError(
            "tags do not identify the phases and the aorta could not be measured in every series: "
            + _listing(candidates),
            root,
        )
    ranked = sorted(candidates, key=lambda s: measured[s.series_uid]["aorta_hu"])
    assigned = {"NC": ranked[0], "ART": ranked[-1], "PV": ranked[1]}
    return assigned, {p: measured[s.series_uid] for p, s in assigned.items()}


# --------------------------------------------------------------------------------------------------
# Putting it together
# --------------------------------------------------------------------------------------------------


def identify_phases(
    series: Sequence[SeriesInfo], volumes: Mapping[str, Volume] | None = None
) -> PhaseAssignment:
    """Decide which series is NC, ART and PV.

    Tags first (SeriesDescription keywords, ContrastBolusAgent present on all but one series, acquisition
    time order). With ``volumes`` the images then confirm the tags (:func:`check_phases`), or decide alone
    when the tags cannot (lowest aorta HU = NC, highest = ART, the third = PV).

    Args:
        series: the study's series (non-CT objects, localizers and delayed phases are set aside).
        volumes: optional volumes keyed by SeriesInstanceUID; needed when tags are not decisive.

    Returns:
        The assignment with its evidence (and measurements when images were used).

    Raises:
        PhaseError: a phase is missing, two series claim one phase, PatientIDs differ, the tags are not
            decisive and no images were given, or tags and images disagree.
    """
    candidates, delayed = _candidates(series)
    root = _root_of(list(series))
    found = _listing(candidates) + (f" (set aside as delayed phases: {_listing(delayed)})" if delayed else "")
    if not candidates:
        raise PhaseError(f"no CT image series found among {len(series)} series", root)
    assigned, evidence, notes = _assign_from_tags(candidates, root)
    if len(candidates) < len(PHASES):
        missing = [p for p in PHASES if p not in assigned]
        raise PhaseError(
            f"missing phase(s) {', '.join(missing)}: need one CT series per phase ({', '.join(PHASES)}), "
            f"found {len(candidates)}: {found}",
            root,
        )
    method = "tags"
    measurements: dict[str, dict[str, Any]] = {}
    if len(assigned) < len(PHASES):
        missing = [p for p in PHASES if p not in assigned]
        if len(candidates) > len(PHASES):
            raise PhaseError(
                f"cannot tell which series is {', '.join(missing)}: {len(candidates)} CT series and their "
                f"tags do not decide: {found}. Keep only the three phase series in the folder",
                root,
            )
        lacking = [s for s in candidates if volumes is None or s.series_uid not in volumes]
        if lacking:
            raise PhaseError(
                f"series tags do not identify phase(s) {', '.join(missing)} and no images were given to "
                f"decide: {found}",
                root,
            )
        assert volumes is not None
        assigned_by_tags = bool(assigned)
        by_image, measurements = _assign_from_images(candidates, volumes, root)
        conflicts = [
            f"{assigned[p].label} is {p} by its tags but {q} by the images"
            for p in assigned
            for q, s in by_image.items()
            if s.series_uid == assigned[p].series_uid and q != p
        ]
        if conflicts:
            detail = ", ".join(f"{p} aorta {_fmt(measurements[p]['aorta_hu'])}" for p in PHASES)
            raise PhaseError(f"series tags and images disagree: {'; '.join(conflicts)} ({detail})", root)
        for phase, s in by_image.items():
            if phase not in assigned:
                assigned[phase] = s
                evidence[phase].append(
                    f"aorta {_fmt(measurements[phase]['aorta_hu'])} is the "
                    f"{ {'NC': 'lowest', 'ART': 'highest', 'PV': 'middle'}[phase] } of the three series"
                )
        method = "tags+images" if assigned_by_tags else "images"
    _check_patient(assigned, root)
    result = PhaseAssignment(
        series={p: assigned[p].series_uid for p in PHASES},
        evidence={p: [*evidence[p]] for p in PHASES},
        info={p: assigned[p] for p in PHASES},
        method=method,
    )
    if notes:
        result.evidence.setdefault("notes", []).extend(notes)
    if volumes is not None and all(s.series_uid in volumes for s in result.info.values()):
        if method == "tags":
            measurements = check_phases(result, volumes, root)
            method = "tags+images"
        else:
            problems = _rule_violations(result, measurements)
            if problems:
                raise PhaseError("the images do not show three distinct phases: " + "; ".join(problems), root)
        for phase in PHASES:
            m = measurements[phase]
            result.evidence[phase].append(
                f"image check: aorta {_fmt(m['aorta_hu'])}, soft tissue {_fmt(m['soft_tissue_hu'])}"
            )
        result = replace(result, measurements=measurements, method=method)
    return result


def read_study(folder: str | Path) -> Study:
    """Read a triple-phase CT study from a folder holding its series (in any sub-folder layout).

    Args:
        folder: the study folder.

    Returns:
        The study, volumes keyed by phase; ``meta`` holds the assignment (series, evidence, image
        measurements), the patient's ID, age and sex, and the source folder.

    Raises:
        StudyReadError: no DICOM or no CT series, or a series cannot be read.
        PhaseError: the phases cannot be identified (see :func:`identify_phases`).
    """
    folder = Path(folder)
    scan = scan_dicom_folder(folder)
    if not any(s.is_ct_image for s in scan.series):
        select_ct_series(scan)  # raises the precise "no DICOM" / "modality MR" / "no CT" error
        raise StudyReadError("no CT image series", folder)  # pragma: no cover - select_ct_series raised
    candidates, _ = _candidates(scan.series)
    assigned, _, _ = _assign_from_tags(candidates, folder)
    if len(assigned) == len(PHASES):
        to_read = [assigned[p] for p in PHASES]
    elif len(candidates) == len(PHASES):
        to_read = list(candidates)
    else:
        identify_phases(scan.series)  # raises the explanation (missing phase, too many series...)
        raise PhaseError("cannot identify the phases", folder)  # pragma: no cover
    volumes = {s.series_uid: read_series(s, scan.root) for s in to_read}
    assignment = identify_phases(scan.series, volumes)
    phases = {
        p: replace(volumes[uid], meta={**volumes[uid].meta, "phase": p})
        for p, uid in assignment.series.items()
    }
    first = assignment.info["NC"]
    meta = {
        "source": str(folder),
        "phase_assignment": assignment.to_json(),
        "PatientID": first.patient_id,
        "PatientAge": first.patient_age,
        "PatientSex": first.patient_sex,
        "StudyInstanceUID": first.study_uid,
    }
    return Study(phases=phases, meta=meta)
