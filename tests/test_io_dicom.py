"""DICOM series: round trip through write_dicom_series, folder listing, and every broken-series error."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from liaids.errors import LiaidsError, StudyReadError
from liaids.io import list_series, read_dicom_series, read_volume, scan_dicom_folder
from liaids.types import Volume

WriteSeries = Callable[..., list[Path]]


def _expected_hu(volume: Volume) -> np.ndarray:
    return np.clip(np.rint(volume.array.astype(np.float64)), -1024, 64511).astype(np.float32)


def _edit(path: Path, **tags: object) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


# --------------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------------


def test_round_trip_flipped_direction_and_origin(
    tmp_path: Path, small_volume: Volume, write_series: WriteSeries
):
    files = write_series(small_volume, tmp_path / "s")
    assert [f.name for f in files] == [f"IM{k:04d}.dcm" for k in range(1, 9)]
    back = read_dicom_series(tmp_path / "s")
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, _expected_hu(small_volume))
    assert back.same_geometry(small_volume, tol=1e-6)
    assert back.array[0, 0, :4].tolist() == [-1024.0, -1024.0, 64511.0, 12.0]  # clipped, rounded half-even


@pytest.mark.parametrize(
    "direction",
    [
        (1, 0, 0, 0, 1, 0, 0, 0, 1),
        (0, 1, 0, 1, 0, 0, 0, 0, -1),  # i along y, j along x, k towards inferior (right-handed)
        (1, 0, 0, 0, 0, 1, 0, -1, 0),  # coronal stack
        (0.8, -0.6, 0, 0.6, 0.8, 0, 0, 0, 1),  # in-plane rotation
    ],
)
def test_round_trip_right_handed_directions(
    tmp_path: Path, small_volume: Volume, write_series: WriteSeries, direction: tuple[float, ...]
):
    volume = Volume(
        small_volume.array, (0.7, 1.1, 3.0), (-17.3, 42.0, -512.125), tuple(map(float, direction))
    )
    write_series(volume, tmp_path)
    back = read_volume(tmp_path)
    np.testing.assert_array_equal(back.array, _expected_hu(volume))
    assert back.same_geometry(volume, tol=1e-6)


def test_left_handed_direction_reads_back_reversed_but_same_positions(
    tmp_path: Path, small_volume: Volume, write_series: WriteSeries
):
    volume = Volume(small_volume.array, (0.8, 0.9, 2.5), (5.0, 6.0, 7.0), (1, 0, 0, 0, 1, 0, 0, 0, -1))
    write_series(volume, tmp_path)
    back = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(back.array, _expected_hu(volume)[::-1])
    a, b = back.to_canonical(), volume.to_canonical()
    assert a.same_geometry(b, tol=1e-6)
    np.testing.assert_array_equal(a.array, np.clip(np.rint(b.array), -1024, 64511))


def test_written_tags_meta_and_determinism(tmp_path: Path, small_volume: Volume, write_series: WriteSeries):
    first = write_series(small_volume, tmp_path / "a", phase="NC", contrast_agent=None, series_number=1)
    again = write_series(small_volume, tmp_path / "b", phase="NC", contrast_agent=None, series_number=1)
    assert [f.read_bytes() for f in first] == [f.read_bytes() for f in again]
    ds = pydicom.dcmread(first[2])
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.Modality == "CT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.PatientAge == "055Y" and ds.PatientSex == "M"
    assert "ContrastBolusAgent" not in ds
    assert (ds.BitsAllocated, ds.PixelRepresentation) == (16, 0)
    assert (ds.RescaleIntercept, ds.RescaleSlope) == (-1024, 1)
    assert [float(v) for v in ds.PixelSpacing] == [0.9, 0.8]  # [row spacing (j), column spacing (i)]
    assert ds.InstanceNumber == 3
    assert len({pydicom.dcmread(f).SOPInstanceUID for f in first}) == len(first)
    art = write_series(
        small_volume,
        tmp_path / "c",
        phase="ART",
        contrast_agent="Iohexol",
        series_number=2,
        acquisition={"contrast_start_time": "101000", "slice_thickness_mm": 3.0, "mas": 100},
    )
    ds = pydicom.dcmread(art[0])
    assert ds.ContrastBolusAgent == "Iohexol" and ds.ContrastBolusStartTime == "101000"
    assert float(ds.SliceThickness) == 3.0 and int(ds.Exposure) == 100
    meta = read_dicom_series(tmp_path / "c").meta
    json.dumps(meta)  # JSON-serialisable
    assert meta["Modality"] == "CT" and meta["PatientID"] == "LIAIDS-0001" and meta["Exposure_mAs"] == 100.0
    assert meta["KVP"] == 120.0 and meta["SeriesNumber"] == 2 and meta["AcquisitionTime"] == "101500"


def test_write_rejects_bad_arguments(tmp_path: Path, small_volume: Volume, write_series: WriteSeries):
    with pytest.raises(LiaidsError, match="unknown phase"):
        write_series(small_volume, tmp_path, phase="DELAYED")
    with pytest.raises(LiaidsError, match="patient_sex"):
        write_series(small_volume, tmp_path, patient_sex="male")
    sheared = Volume(small_volume.array, (1, 1, 1), direction=(1, 0, 0.5, 0, 1, 0, 0, 0, 1))
    with pytest.raises(LiaidsError, match="not orthonormal"):
        write_series(sheared, tmp_path)


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless"])
def test_compressed_transfer_syntaxes(
    tmp_path: Path, small_volume: Volume, write_series: WriteSeries, syntax: str
):
    files = write_series(small_volume, tmp_path)
    uid = getattr(pydicom.uid, syntax)
    for f in files:
        ds = pydicom.dcmread(f)
        try:
            ds.compress(uid)
        except (RuntimeError, NotImplementedError) as exc:  # no encoder installed for this syntax
            pytest.skip(f"cannot encode {syntax}: {exc}")
        ds.save_as(f)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == uid
    np.testing.assert_array_equal(read_dicom_series(tmp_path).array, _expected_hu(small_volume))


# --------------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------------


def _rtstruct(path: Path) -> None:
    """A minimal non-image object: an RTSTRUCT without pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix=None, entropy_srcs=["rt"])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid(prefix=None, entropy_srcs=["rt-series"])
    ds.save_as(path, enforce_file_format=True)


def test_listing_skips_non_dicom_and_ignores_non_image(
    tmp_path: Path, small_volume: Volume, write_series: WriteSeries
):
    files = write_series(small_volume, tmp_path / "study" / "deep" / "ct")
    for f in files:  # files without extension, as many PACS exports write them
        f.rename(f.with_suffix(""))
    (tmp_path / "study" / "LICENSE.txt").write_text("not dicom")
    (tmp_path / "study" / "notes").write_bytes(b"\x00" * 300)
    _rtstruct(tmp_path / "study" / "rt.dcm")
    scan = scan_dicom_folder(tmp_path / "study")
    assert len(scan.skipped) == 2
    series = list_series(tmp_path / "study")
    assert sorted(s.modality for s in series) == ["CT", "RTSTRUCT"]
    ct = next(s for s in series if s.modality == "CT")
    assert ct.is_ct_image and len(ct.files) == 8 and ct.files == tuple(sorted(ct.files))
    assert ct.contrast_agent == "Iohexol 350" and ct.patient_id == "LIAIDS-0001" and ct.patient_age == "055Y"
    assert ct.acquisition_time == "101500" and ct.series_number == 3 and ct.study_uid
    rt = next(s for s in series if s.modality == "RTSTRUCT")
    assert not rt.is_image
    volume = read_dicom_series(tmp_path / "study")
    assert volume.shape == (8, 32, 32)


def test_read_from_file_list_and_single_file(tmp_path: Path, small_volume: Volume, write_series: WriteSeries):
    files = write_series(small_volume, tmp_path)
    from_list = read_dicom_series([str(f) for f in reversed(files)])
    np.testing.assert_array_equal(from_list.array, _expected_hu(small_volume))
    from_one = read_volume(files[3])
    assert from_one.same_geometry(small_volume, tol=1e-6)


def test_several_ct_series(tmp_path: Path, small_volume: Volume, write_series: WriteSeries):
    write_series(small_volume, tmp_path / "a", series_number=2, series_description="Arterial")
    write_series(small_volume, tmp_path / "b", series_number=3, series_description="Portal venous")
    series = list_series(tmp_path)
    with pytest.raises(StudyReadError, match="2 CT series found") as info:
        read_dicom_series(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "Arterial" in message and "Portal venous" in message
    assert all(s.series_uid in message for s in series)
    with pytest.raises(StudyReadError, match="read_study"):
        read_volume(tmp_path)
    chosen = read_dicom_series(tmp_path, series_uid=series[1].series_uid)
    assert chosen.meta["SeriesDescription"] == "Portal venous"
    with pytest.raises(StudyReadError, match=r"no series with SeriesInstanceUID 1\.2\.3"):
        read_dicom_series(tmp_path, series_uid="1.2.3")


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def series_dir(tmp_path: Path, small_volume: Volume, write_series: WriteSeries) -> Path:
    folder = tmp_path / "series"
    write_series(small_volume, folder)
    return folder


def test_missing_folder_and_empty_folders(tmp_path: Path):
    with pytest.raises(StudyReadError, match="no such folder"):
        read_dicom_series(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyReadError, match="no DICOM files found") as info:
        read_dicom_series(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "LICENSE.txt").write_text("MIT")
    with pytest.raises(StudyReadError, match=r"no DICOM files found \(1 other files skipped\)"):
        read_dicom_series(tmp_path / "text")


def test_only_non_image_objects(tmp_path: Path):
    _rtstruct(tmp_path / "rt.dcm")
    with pytest.raises(StudyReadError, match=r"no CT image series.*RTSTRUCT"):
        read_dicom_series(tmp_path)


def test_non_ct_modality(series_dir: Path):
    for f in series_dir.iterdir():
        _edit(f, Modality="MR")
    with pytest.raises(StudyReadError, match="modality MR, expected CT") as info:
        read_dicom_series(series_dir)
    assert str(series_dir) in str(info.value)


def test_missing_middle_slice(series_dir: Path):
    (series_dir / "IM0004.dcm").unlink()
    with pytest.raises(StudyReadError, match="missing slice") as info:
        read_dicom_series(series_dir)
    message = str(info.value)
    assert message.startswith(f"{series_dir}: ")
    assert "105.75 mm (IM0003.dcm) and 110.75 mm (IM0005.dcm)" in message and "2.50 mm" in message


def test_duplicated_slice(series_dir: Path):
    shutil.copy(series_dir / "IM0003.dcm", series_dir / "IM0003 copy.dcm")
    with pytest.raises(StudyReadError, match="duplicated slices") as info:
        read_dicom_series(series_dir)
    assert "IM0003.dcm" in str(info.value) and "IM0003 copy.dcm" in str(info.value)


def test_mixed_orientation(series_dir: Path):
    _edit(series_dir / "IM0005.dcm", ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    with pytest.raises(StudyReadError, match="mixed ImageOrientationPatient") as info:
        read_dicom_series(series_dir)
    assert "IM0005.dcm" in str(info.value) and str(series_dir) in str(info.value)


def test_mixed_pixel_spacing_and_size(series_dir: Path):
    _edit(series_dir / "IM0002.dcm", PixelSpacing=[0.5, 0.5])
    with pytest.raises(StudyReadError, match=r"mixed PixelSpacing.*IM0002\.dcm"):
        read_dicom_series(series_dir)
    _edit(series_dir / "IM0002.dcm", PixelSpacing=[0.9, 0.8], Columns=16)
    with pytest.raises(StudyReadError, match=r"mixed image sizes.*IM0002\.dcm"):
        read_dicom_series(series_dir)


def test_uneven_spacing(series_dir: Path):
    ds = pydicom.dcmread(series_dir / "IM0004.dcm")
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    _edit(series_dir / "IM0004.dcm", ImagePositionPatient=[x, y, z + 1.0])
    with pytest.raises(StudyReadError, match="uneven slice spacing") as info:
        read_dicom_series(series_dir)
    assert "IM0004.dcm" in str(info.value)


def test_sheared_stack(series_dir: Path):
    for k, f in enumerate(sorted(series_dir.iterdir())):
        ds = pydicom.dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        _edit(f, ImagePositionPatient=[x, y + 0.9 * k, z])  # a tilted gantry shifts each slice in y
    with pytest.raises(StudyReadError, match="gantry-tilted"):
        read_dicom_series(series_dir)


def test_missing_required_tag(series_dir: Path):
    _edit(series_dir / "IM0006.dcm", ImagePositionPatient=None)
    with pytest.raises(StudyReadError, match="missing required tag ImagePositionPatient") as info:
        read_dicom_series(series_dir)
    assert str(info.value).startswith(str(series_dir / "IM0006.dcm"))


def test_truncated_pixel_data(series_dir: Path):
    path = series_dir / "IM0004.dcm"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 500])
    with pytest.raises(StudyReadError, match="truncated") as info:
        read_dicom_series(series_dir)
    assert str(info.value).startswith(str(path))


def test_truncated_header(series_dir: Path):
    path = series_dir / "IM0002.dcm"
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(StudyReadError, match="truncated or corrupt") as info:
        list_series(series_dir)
    assert str(info.value).startswith(str(path))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("damage", ["garbage_element", "zeroed_body"])
def test_corrupt_file(series_dir: Path, damage: str):
    path = series_dir / "IM0007.dcm"
    data = bytearray(path.read_bytes())
    if damage == "garbage_element":
        data[132:140] = b"\xff" * 8  # garbage where the first data element starts
    else:
        data[132:] = b"\x00" * (len(data) - 132)  # preamble and DICM kept, the rest wiped
    path.write_bytes(bytes(data))
    with pytest.raises(StudyReadError, match="corrupt DICOM file") as info:
        read_dicom_series(series_dir)
    assert str(info.value).startswith(str(path))


def test_read_volume_rejects_other_files(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(StudyReadError, match="not a NIfTI file or DICOM folder"):
        read_volume(tmp_path / "notes.txt")
    with pytest.raises(StudyReadError, match="no such file or folder"):
        read_volume(tmp_path / "missing.nii.gz")


def test_broken_link_in_a_series_folder_is_named(tmp_path: Path, small_volume, write_series) -> None:
    folder = tmp_path / "series"
    write_series(small_volume, folder)
    (folder / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(StudyReadError, match="broken link") as err:
        read_dicom_series(folder)
    assert "dangling" in str(err.value)
