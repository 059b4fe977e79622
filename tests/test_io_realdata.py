"""Reading the public real CT in ../shared/data (skipped when it is not there)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from liaids.io import find_aorta, list_series, read_dicom_series, read_nifti, read_volume

pytestmark = pytest.mark.realdata


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture(scope="module")
def ircadb_ct(shared_data: Path):
    return read_volume(_need(shared_data / "ircadb-17" / "PATIENT_DICOM"))


def test_ircadb_ct(ircadb_ct):
    volume = ircadb_ct
    assert volume.shape == (119, 512, 512)
    np.testing.assert_allclose(volume.spacing, (0.743, 0.743, 1.6), atol=1e-3)
    np.testing.assert_allclose(volume.direction, np.eye(3).ravel())
    assert volume.array.min() >= -1024 and volume.array.max() <= 1023
    assert volume.meta["Modality"] == "CT" and volume.meta["n_slices"] == 119
    assert volume.meta["InstitutionName"] == "IRCAD"


def test_ircadb_liver_mask_same_geometry(shared_data: Path, ircadb_ct):
    mask = read_dicom_series(_need(shared_data / "ircadb-17" / "MASKS_DICOM" / "liver"))
    assert mask.same_geometry(ircadb_ct)
    assert set(np.unique(mask.array).tolist()) <= {0.0, 255.0}
    liver = mask.array > 0
    assert liver.sum() > 0
    # Portal-venous liver parenchyma: typically 80-160 HU.
    assert 60 < float(np.median(ircadb_ct.array[liver])) < 180


def test_ircadb_aorta_is_enhanced(ircadb_ct):
    aorta = find_aorta(ircadb_ct)
    assert aorta is not None
    assert aorta["mean_hu"] > 120  # portal venous phase: contrast in the aorta
    x, _, _ = aorta["position_mm"]
    assert 150 < x < 260  # near the midline of a 380 mm field of view starting at x = 0


def test_totalsegmentator_jpeg2000_dicom(shared_data: Path):
    folder = _need(shared_data / "totalsegmentator-examples" / "example_ct_dicom")
    series = list_series(folder)
    assert len(series) == 1 and series[0].series_uid.startswith("nouid-")  # anonymised: UIDs blanked
    assert series[0].contrast_agent == "APPLIED"
    volume = read_dicom_series(folder)
    assert volume.shape == (20, 512, 512)
    np.testing.assert_allclose(volume.spacing, (0.9765625, 0.9765625, 2.0))
    assert volume.meta["Exposure_mAs"] == 253.0 and volume.meta["KVP"] == 120.0
    hu = volume.array
    assert (hu < -950).mean() > 0.05  # air around the patient
    soft = (hu > 0) & (hu < 100)
    assert soft.mean() > 0.05  # soft tissue
    # TotalSegmentator's prediction on the same data: after reorientation the grid is the DICOM grid.
    seg = read_nifti(_need(shared_data / "totalsegmentator-examples" / "example_seg_dicom.nii.gz"))
    seg = seg.to_canonical()
    assert seg.same_geometry(volume)
    liver = seg.array == 5
    assert 40 < float(np.median(hu[liver])) < 200  # contrast-enhanced liver


@pytest.mark.parametrize("name", ["example_ct_sm.nii.gz", "example_ct.nii.gz"])
def test_totalsegmentator_nifti(shared_data: Path, name: str):
    volume = read_nifti(_need(shared_data / "totalsegmentator-examples" / name))
    assert volume.spacing == (3.0, 3.0, 3.0)
    np.testing.assert_allclose(volume.origin, (177.9563, -11.319, 94.3018), atol=1e-3)
    np.testing.assert_allclose(volume.direction, (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert volume.shape[1:] == (101, 122) and volume.shape[0] in (30, 112)
    canonical = volume.to_canonical()
    np.testing.assert_allclose(canonical.direction_matrix, np.eye(3), atol=1e-9)
    # The corner voxel that was last along i and j is now the origin.
    corner = volume.index_to_physical(np.array([volume.shape[2] - 1, volume.shape[1] - 1, 0]))
    np.testing.assert_allclose(canonical.origin, corner)
    assert canonical.array[0, 0, 0] == volume.array[0, -1, -1]


def test_totalsegmentator_non_contrast_has_no_enhanced_aorta(shared_data: Path):
    # phase_prediction.json says "native": the model-free aorta search must not find a bright aorta.
    volume = read_nifti(_need(shared_data / "totalsegmentator-examples" / "example_ct_sm.nii.gz"))
    assert find_aorta(volume) is None


def test_dcmqi_three_slices_ignore_seg(shared_data: Path):
    folder = _need(shared_data / "dcmqi-ct-3slice")
    modalities = sorted(s.modality for s in list_series(folder))
    assert modalities == ["CT", "SEG"]
    volume = read_volume(folder)
    assert volume.shape == (3, 512, 512)
    np.testing.assert_allclose(volume.spacing, (0.810547, 0.810547, 1.0), atol=1e-5)
    np.testing.assert_allclose(volume.origin, (-235.199997, -226.800003, -128.690002), atol=1e-5)
    single = read_volume(folder / "02.dcm")
    assert single.same_geometry(volume)
    np.testing.assert_array_equal(single.array, volume.array)
