"""Volume geometry: index <-> physical mapping and to_canonical keeping every voxel where it is."""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

from liaids.types import Study, Volume


def _signed_permutations() -> list[np.ndarray]:
    """All 48 axis permutations with flips (24 right-handed, 24 left-handed)."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            for col, row in enumerate(perm):
                m[row, col] = signs[col]
            out.append(m)
    return out


def _rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    """A random rotation by at most ``max_angle`` radians (Rodrigues' formula)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-max_angle, max_angle)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _volume(direction: np.ndarray, rng: np.random.Generator) -> Volume:
    shape = (3, 4, 5)  # distinct sizes catch swapped axes
    return Volume(
        array=rng.integers(-1000, 1000, size=shape).astype(np.int16),
        spacing=tuple(float(v) for v in rng.uniform(0.5, 3.0, 3)),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in rng.uniform(-300, 300, 3)),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),
    )


def _assert_same_voxels(canonical: Volume, original: Volume) -> None:
    """Every voxel of ``canonical`` sits at a physical point where ``original`` has the same value."""
    n_k, n_j, n_i = canonical.shape
    kk, jj, ii = np.meshgrid(np.arange(n_k), np.arange(n_j), np.arange(n_i), indexing="ij")
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)
    points = canonical.index_to_physical(ijk)
    back = original.physical_to_index(points)
    np.testing.assert_allclose(back, np.rint(back), atol=1e-6)  # lands on voxel centres
    idx = np.rint(back).astype(int)
    np.testing.assert_array_equal(
        canonical.array[kk.ravel(), jj.ravel(), ii.ravel()], original.array[idx[:, 2], idx[:, 1], idx[:, 0]]
    )
    assert sorted(canonical.shape) == sorted(original.shape)
    assert sorted(canonical.spacing) == pytest.approx(sorted(original.spacing))


@pytest.mark.parametrize(
    "direction", _signed_permutations(), ids=lambda m: ",".join(f"{v:+.0f}" for v in m.ravel())
)
def test_to_canonical_keeps_positions_and_gives_identity(direction: np.ndarray):
    rng = np.random.default_rng(zlib.crc32(direction.tobytes()))
    volume = _volume(direction, rng)
    canonical = volume.to_canonical()
    np.testing.assert_allclose(canonical.direction_matrix, np.eye(3), atol=1e-12)
    _assert_same_voxels(canonical, volume)
    assert canonical.to_canonical().same_geometry(canonical, tol=1e-9)


def test_to_canonical_on_oblique_directions():
    rng = np.random.default_rng(42)
    perms = _signed_permutations()
    for trial in range(40):
        direction = _rotation(rng, np.radians(30)) @ perms[trial % len(perms)]
        volume = _volume(direction, rng)
        canonical = volume.to_canonical()
        d = canonical.direction_matrix
        assert np.all(np.diag(d) > 0.5), d  # each axis now points mostly along +x, +y, +z
        assert np.all(np.argmax(np.abs(d), axis=1) == [0, 1, 2])
        _assert_same_voxels(canonical, volume)


def test_index_physical_round_trip():
    rng = np.random.default_rng(3)
    for _ in range(20):
        direction = _rotation(rng, np.pi)
        volume = _volume(direction, rng)
        ijk = rng.uniform(-10, 10, size=(50, 3))
        xyz = volume.index_to_physical(ijk)
        np.testing.assert_allclose(volume.physical_to_index(xyz), ijk, atol=1e-9)
        # Voxel (0, 0, 0) is the origin, and one step along i moves by spacing[0] along direction column 0.
        np.testing.assert_allclose(volume.index_to_physical(np.zeros(3)), volume.origin)
        step = volume.index_to_physical(np.array([1.0, 0, 0])) - np.asarray(volume.origin)
        np.testing.assert_allclose(step, volume.spacing[0] * volume.direction_matrix[:, 0])


def test_volume_validation_and_helpers():
    with pytest.raises(ValueError, match="3D"):
        Volume(np.zeros((2, 2)), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        Volume(np.zeros((2, 2, 2)), (1, 0, 1))
    v = Volume(np.zeros((2, 3, 4)), (1.0, 2.0, 3.0), meta={"a": 1})
    assert v.shape == (2, 3, 4) and v.spacing_kji == (3.0, 2.0, 1.0)
    mask = v.with_array(np.ones((2, 3, 4), np.uint8), kind="mask")
    assert mask.same_geometry(v) and mask.meta == {"a": 1, "kind": "mask"}
    with pytest.raises(ValueError, match="differs"):
        v.with_array(np.ones((2, 3, 5)))
    with pytest.raises(ValueError, match="unknown phase"):
        Study(phases={"DELAYED": v})
    assert Study(phases={"NC": v})["NC"] is v


def test_from_canonical_undoes_to_canonical_for_every_axis_order() -> None:

    rng = np.random.default_rng(3)
    arr = rng.normal(size=(4, 5, 6)).astype(np.float32)
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            d = np.zeros((3, 3))
            for col, (row, sign) in enumerate(zip(perm, signs, strict=True)):
                d[row, col] = sign
            vol = Volume(arr, (0.7, 0.8, 2.0), (1.0, 2.0, 3.0), tuple(d.reshape(-1)))
            canon = vol.to_canonical()
            assert np.array_equal(vol.from_canonical(canon.array), arr)
