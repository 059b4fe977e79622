"""NIfTI reading/writing, and the atomic output helpers that writers rely on."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 - the usual alias

from liaids.errors import LiaidsError, StudyReadError
from liaids.io import (
    atomic_write_bytes,
    atomic_write_text,
    read_nifti,
    read_volume,
    staged_output_dir,
    write_nifti,
)
from liaids.types import Volume

# An oblique, flipped direction (rotation about z by 30 degrees, then x and y flipped).
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
OBLIQUE = tuple(
    float(v) for v in (np.array([[_C, -_S, 0], [_S, _C, 0], [0, 0, 1]]) @ np.diag([-1, -1, 1])).ravel()
)


def _volume(array: np.ndarray) -> Volume:
    return Volume(array=array, spacing=(0.75, 0.8, 2.5), origin=(-123.456, 78.9, -600.25), direction=OBLIQUE)


def _assert_geometry(a: Volume, b: Volume) -> None:
    # NIfTI keeps the geometry in float32.
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-6)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-4)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii"])
def test_ct_round_trip_is_int16(tmp_path: Path, name: str):
    rng = np.random.default_rng(0)
    volume = _volume(np.rint(rng.normal(0, 400, (6, 20, 24))).astype(np.float32))
    write_nifti(volume, tmp_path / name)
    back = read_nifti(tmp_path / name)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, volume.array)
    _assert_geometry(back, volume)
    assert back.meta == {"source": str(tmp_path / name), "format": "nifti"}
    assert read_volume(tmp_path / name).shape == (6, 20, 24)


@pytest.mark.parametrize(
    ("dtype", "stored"),
    [(np.uint8, np.uint8), (np.int32, np.int32), (np.uint16, np.uint16), (np.bool_, np.uint8)],
)
def test_label_maps_keep_integer_type(tmp_path: Path, dtype: type, stored: type):
    labels = (np.arange(6 * 10 * 12).reshape(6, 10, 12) % 3).astype(dtype)
    write_nifti(_volume(labels), tmp_path / "labels.nii.gz", compression_level=6)
    back = read_nifti(tmp_path / "labels.nii.gz")
    assert back.array.dtype == stored
    np.testing.assert_array_equal(back.array, labels.astype(stored))


def test_non_integral_or_out_of_range_floats_stay_float(tmp_path: Path):
    probs = np.linspace(0, 1, 6 * 10 * 12).reshape(6, 10, 12)
    write_nifti(_volume(probs), tmp_path / "p.nii.gz")
    back = read_nifti(tmp_path / "p.nii.gz")
    assert back.array.dtype == np.float32
    np.testing.assert_allclose(back.array, probs, atol=1e-7)
    big = np.full((2, 3, 4), 40000.0)
    write_nifti(_volume(big), tmp_path / "big.nii")
    assert read_nifti(tmp_path / "big.nii").array.dtype == np.float32


def test_write_is_atomic_and_checks_name(tmp_path: Path):
    volume = _volume(np.zeros((2, 3, 4), np.int16))
    with pytest.raises(LiaidsError, match=r"must end with \.nii or \.nii\.gz"):
        write_nifti(volume, tmp_path / "x.nrrd")
    write_nifti(volume, tmp_path / "sub" / "x.nii.gz")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["x.nii.gz"]  # no temporary left behind


def test_read_errors(tmp_path: Path):
    with pytest.raises(StudyReadError, match="no such file") as info:
        read_nifti(tmp_path / "missing.nii.gz")
    assert str(tmp_path / "missing.nii.gz") in str(info.value)
    (tmp_path / "text.nii.gz").write_text("not gzip at all")
    with pytest.raises(StudyReadError, match="not a gzip file"):
        read_nifti(tmp_path / "text.nii.gz")
    (tmp_path / "text.nii").write_bytes(b"\x01" * 600)
    with pytest.raises(StudyReadError, match="not a NIfTI file"):
        read_nifti(tmp_path / "text.nii")
    with gzip.open(tmp_path / "short.nii.gz", "wb") as fh:
        fh.write(b"tiny")
    with pytest.raises(StudyReadError, match="not a NIfTI file"):
        read_nifti(tmp_path / "short.nii.gz")


def test_truncated_files(tmp_path: Path):
    rng = np.random.default_rng(1)
    volume = _volume(rng.normal(0, 100, (8, 32, 32)).astype(np.float32))
    write_nifti(volume, tmp_path / "a.nii.gz")
    data = (tmp_path / "a.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(StudyReadError, match="truncated or corrupt gzip") as info:
        read_nifti(tmp_path / "cut.nii.gz")
    assert str(tmp_path / "cut.nii.gz") in str(info.value)
    # A complete gzip stream around an incomplete NIfTI.
    with gzip.open(tmp_path / "a.nii.gz") as fh:
        raw = fh.read()
    with gzip.open(tmp_path / "short.nii.gz", "wb") as fh:
        fh.write(raw[: len(raw) - 1000])
    with pytest.raises(StudyReadError, match="truncated NIfTI"):
        read_nifti(tmp_path / "short.nii.gz")
    (tmp_path / "short.nii").write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(StudyReadError, match="truncated NIfTI"):
        read_nifti(tmp_path / "short.nii")


def test_dimensions(tmp_path: Path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.int16)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(StudyReadError, match="not a 3D volume"):
        read_nifti(tmp_path / "flat.nii.gz")
    sitk.WriteImage(
        sitk.GetImageFromArray(np.zeros((2, 3, 5, 6), np.int16), isVector=False), str(tmp_path / "t2.nii.gz")
    )
    with pytest.raises(StudyReadError, match="not a 3D volume"):
        read_nifti(tmp_path / "t2.nii.gz")
    sitk.WriteImage(
        sitk.GetImageFromArray(np.ones((1, 3, 5, 6), np.int16), isVector=False), str(tmp_path / "t1.nii.gz")
    )
    assert read_nifti(tmp_path / "t1.nii.gz").shape == (3, 5, 6)
    rgb = sitk.GetImageFromArray(np.zeros((3, 5, 6, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nii.gz"))
    with pytest.raises(StudyReadError, match="not a scalar image"):
        read_nifti(tmp_path / "rgb.nii.gz")


# --------------------------------------------------------------------------------------------------
# Atomic outputs (liaids.io.atomic)
# --------------------------------------------------------------------------------------------------


def test_staged_output_dir_success_and_failure(tmp_path: Path):
    out = tmp_path / "results"
    with staged_output_dir(out) as stage:
        assert stage.parent == tmp_path and stage.name.startswith(".results.")
        (stage / "a.txt").write_text("a")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["results"]

    with pytest.raises(LiaidsError, match="not empty"), staged_output_dir(out):
        pass
    with pytest.raises(RuntimeError, match="boom"), staged_output_dir(out, overwrite=True) as stage:
        (stage / "b.txt").write_text("b")
        raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["results"]  # staging folder removed

    with staged_output_dir(out, overwrite=True) as stage:
        (stage / "c.txt").write_text("c")
        assert (out / "a.txt").exists()  # replaced only at the end
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["results"]


def test_staged_output_dir_empty_existing_and_file(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with staged_output_dir(tmp_path / "empty") as stage:
        (stage / "x").write_text("x")
    assert (tmp_path / "empty" / "x").exists()
    (tmp_path / "file").write_text("f")
    with (
        pytest.raises(LiaidsError, match="not a folder"),
        staged_output_dir(tmp_path / "file", overwrite=True),
    ):
        pass


def test_atomic_write(tmp_path: Path):
    target = tmp_path / "deep" / "report.json"
    atomic_write_text(target, '{"a": 1}')
    assert target.read_text() == '{"a": 1}'
    assert target.stat().st_mode & 0o777 == 0o644
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]
