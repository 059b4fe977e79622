"""Data contracts between the pipeline stages.

Orientation convention (used everywhere after I/O):

* ``Volume.array`` is indexed ``[k, j, i]`` = ``[slice, row, column]``, the same order SimpleITK's
  ``GetArrayFromImage`` gives. For a DICOM series ``k`` follows the slice position along the slice
  normal (ascending), ``j`` the DICOM row and ``i`` the DICOM column. For NIfTI, ``i, j, k`` are the
  file's own voxel axes.
* ``spacing``, ``origin`` and ``direction`` are in ITK/DICOM patient coordinates (LPS, millimetres),
  in ``(x, y, z)`` = ``(i, j, k)`` order; ``direction`` is the 3x3 matrix whose *columns* are the
  unit vectors of the ``i``, ``j`` and ``k`` axes. Physical point of voxel ``(i, j, k)``::

      p = origin + direction @ (spacing * (i, j, k))

* :meth:`Volume.to_canonical` permutes and flips axes so that ``direction`` is as close as possible
  to identity: ``i`` towards patient left, ``j`` towards posterior, ``k`` towards superior. This is
  how a standard axial DICOM series is stored, and the orientation networks are trained in.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from liaids.codes import PHASES


@dataclass(frozen=True)
class Volume:
    """One 3D image (CT in HU, or a label map) with its geometry.

    Args:
        array: voxel values, shape ``(K, J, I)``.
        spacing: voxel size in mm along ``(i, j, k)``.
        origin: physical position (LPS, mm) of voxel ``(0, 0, 0)``.
        direction: 3x3 matrix, columns are the directions of the ``i``, ``j``, ``k`` axes.
        meta: free-form provenance (source path, DICOM tags such as SeriesInstanceUID), JSON-serialisable.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a Volume needs a 3D array, got shape {self.array.shape}")
        if len(self.spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be three positive numbers, got {self.spacing}")
        if len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError("origin needs 3 numbers and direction 9 (row-major 3x3)")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(K, J, I)``."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_kji(self) -> tuple[float, float, float]:
        """Spacing in array-axis order ``(k, j, i)``, for numpy and scipy calls."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        """Direction as a 3x3 array (columns = i, j, k axis directions)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def index_to_physical(self, ijk: np.ndarray) -> np.ndarray:
        """Map voxel indices ``(..., 3)`` in ``(i, j, k)`` order to LPS millimetres."""
        ijk = np.asarray(ijk, dtype=float)
        return np.asarray(self.origin) + (ijk * np.asarray(self.spacing)) @ self.direction_matrix.T

    def physical_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """Map LPS millimetres ``(..., 3)`` to continuous voxel indices in ``(i, j, k)`` order."""
        rel = np.asarray(xyz, dtype=float) - np.asarray(self.origin)
        return (rel @ np.linalg.inv(self.direction_matrix).T) / np.asarray(self.spacing)

    def with_array(self, array: np.ndarray, **meta: Any) -> Volume:
        """Same geometry, new voxels (for a mask or prediction on this volume)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from volume shape {self.array.shape}")
        return replace(self, array=array, meta={**self.meta, **meta})

    def same_geometry(self, other: Volume, tol: float = 1e-3) -> bool:
        """True when shape, spacing, origin and direction agree within ``tol`` (mm, or unitless)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def _canonical_axes(self) -> tuple[list[int], list[float], list[int]]:
        """``(perm, signs, np_axes)``: new axis ``n`` is old axis ``perm[n]`` times ``signs[n]``."""
        d = self.direction_matrix
        # For each patient axis (x, y, z) pick the array axis most aligned with it.
        perm = [int(np.argmax(np.abs(d[row]))) for row in range(3)]
        if sorted(perm) != [0, 1, 2]:
            # Oblique beyond 45 degrees on two axes: fall back to a greedy unique assignment.
            remaining = [0, 1, 2]
            perm = []
            for row in range(3):
                best = max(remaining, key=lambda c, r=row: abs(d[r, c]))
                perm.append(best)
                remaining.remove(best)
        signs = [float(np.sign(d[row, perm[row]])) or 1.0 for row in range(3)]
        # perm[n] is the (i, j, k) axis that becomes new axis n; numpy axes are reversed (k, j, i).
        np_axes = [2 - perm[2], 2 - perm[1], 2 - perm[0]]
        return perm, signs, np_axes

    def to_canonical(self) -> Volume:
        """Reorient by axis permutation and flips so that ``i``→left, ``j``→posterior, ``k``→superior.

        No interpolation happens: voxels are only reordered, spacing is permuted and the origin moved
        to the new first voxel, so every physical position is kept. :meth:`from_canonical` undoes it.
        """
        perm, signs, np_axes = self._canonical_axes()
        d = self.direction_matrix
        arr = np.transpose(self.array, np_axes)
        new_spacing = tuple(float(self.spacing[perm[n]]) for n in range(3))
        new_dir = d[:, perm] * np.asarray(signs)[None, :]
        # Index of the new first voxel in the old (i, j, k) frame.
        first = np.zeros(3)
        for n in range(3):
            if signs[n] < 0:
                first[perm[n]] = self.array.shape[2 - perm[n]] - 1
                arr = np.flip(arr, axis=2 - n)
        new_origin = tuple(float(v) for v in self.index_to_physical(first))
        return Volume(
            array=np.ascontiguousarray(arr),
            spacing=new_spacing,  # type: ignore[arg-type]
            origin=new_origin,  # type: ignore[arg-type]
            direction=tuple(float(v) for v in new_dir.reshape(-1)),
            meta=dict(self.meta),
        )

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Bring an array laid out like ``self.to_canonical().array`` back to this volume's own layout.

        Used to return a prediction made in canonical orientation in the input's geometry.
        """
        _perm, signs, np_axes = self._canonical_axes()
        for n in range(3):
            if signs[n] < 0:
                array = np.flip(array, axis=2 - n)
        return np.ascontiguousarray(np.transpose(array, np.argsort(np_axes)))


@dataclass(frozen=True)
class Study:
    """A triple-phase CT study: one :class:`Volume` per phase name in :data:`liaids.codes.PHASES`.

    The phases are *not* assumed voxel-aligned: breathing moves the liver between acquisitions and the
    scanned z ranges may differ.
    """

    phases: dict[str, Volume]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.phases) - set(PHASES)
        if unknown:
            raise ValueError(f"unknown phase names {sorted(unknown)}; use {', '.join(PHASES)}")

    def __getitem__(self, phase: str) -> Volume:
        return self.phases[phase]
