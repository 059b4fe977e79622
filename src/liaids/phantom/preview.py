"""PNG preview of a case: the three phases side by side at several levels, with lesion contours."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liaids.codes import LESION_TYPES, PHASES
from liaids.types import Volume

_COLOURS = dict(
    zip(
        LESION_TYPES,
        ["#e6194b", "#f58231", "#ffe119", "#3cb44b", "#42d4f4", "#4363d8", "#f032e6"],
        strict=True,
    )
)


def _levels(
    liver: dict[str, Volume], lesions: dict[str, Volume], lesion_types: dict[int, str], n_levels: int
) -> list[tuple[str, dict[str, int]]]:
    """Per level, a title and the slice index to show in each phase (phases are not voxel-aligned)."""
    levels: list[tuple[str, dict[str, int]]] = []
    ids = sorted(lesion_types, key=lambda i: -int((lesions["PV"].array == i).sum()))
    for lid in ids[:n_levels]:
        per_phase = {}
        for p in PHASES:
            area = (lesions[p].array == lid).sum(axis=(1, 2))
            per_phase[p] = int(np.argmax(area)) if area.any() else -1
        levels.append((f"lesion {lid} ({lesion_types[lid]})", per_phase))
    fractions = [0.3, 0.5, 0.7, 0.85]
    for f in fractions[: max(0, n_levels - len(levels))]:
        per_phase = {}
        for p in PHASES:
            ks = np.nonzero(liver[p].array.any(axis=(1, 2)))[0]
            per_phase[p] = int(ks[0] + f * (ks[-1] - ks[0])) if len(ks) else liver[p].shape[0] // 2
        levels.append((f"liver {int(f * 100)} % height", per_phase))
    return levels


def write_preview(
    path: Path,
    images: dict[str, Volume],
    liver: dict[str, Volume],
    lesions: dict[str, Volume],
    lesion_types: dict[int, str],
    title: str,
    n_levels: int = 4,
) -> Path:
    """Write a PNG: rows are levels, columns NC/ART/PV (window 400/50), liver outline and lesion contours.

    Args:
        path: output PNG path.
        images, liver, lesions: per-phase volumes (canonical orientation).
        lesion_types: lesion id -> type code, for contour colours and labels.
        title: figure title (case id, diagnosis).
        n_levels: number of rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = _levels(liver, lesions, lesion_types, n_levels)
    fig, axes = plt.subplots(len(levels), 3, figsize=(9, 3 * len(levels)), squeeze=False)
    for row, (label, per_phase) in enumerate(levels):
        for col, phase in enumerate(PHASES):
            ax = axes[row][col]
            ax.set_axis_off()
            k = per_phase[phase]
            if k < 0:
                ax.set_title(f"{phase}: not in scan range", fontsize=8)
                continue
            ax.imshow(images[phase].array[k], cmap="gray", vmin=-150, vmax=250, interpolation="nearest")
            ax.contour(liver[phase].array[k], levels=[0.5], colors="#00ff00", linewidths=0.4)
            les = lesions[phase].array[k]
            for lid in np.unique(les[les > 0]):
                colour = _COLOURS.get(lesion_types.get(int(lid), ""), "white")
                ax.contour(les == lid, levels=[0.5], colors=colour, linewidths=0.8)
            ax.set_title(f"{phase} slice {k} - {label}", fontsize=8)
    fig.suptitle(f"{title}\nNot for clinical use - synthetic phantom", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
