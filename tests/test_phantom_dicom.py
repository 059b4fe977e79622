"""Acceptance: a phantom case written as DICOM reads back as the NIfTI version, phases found from tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from liaids.codes import PHASES
from liaids.dataset import Dataset
from liaids.io import list_series, read_study
from liaids.phantom.cohort import synthesize_dataset


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Dataset]:
    root = tmp_path_factory.mktemp("pair")
    # Profile qzh, seed 5: 5 mm slices; the same seed gives the same patient in both formats.
    nifti = synthesize_dataset(root / "nifti", cases=1, seed=5, profile="qzh", fmt="nifti")
    dicom = synthesize_dataset(root / "dicom", cases=1, seed=5, profile="qzh", fmt="dicom")
    return Dataset(nifti), Dataset(dicom)


def test_dicom_and_nifti_versions_agree(pair: tuple[Dataset, Dataset]) -> None:
    nifti, dicom = pair
    case_id = nifti.case_ids[0]
    a, b = nifti.load_case(case_id), dicom.load_case(case_id)
    assert set(b.study.phases) == set(PHASES)
    for p in PHASES:
        va, vb = a.study[p], b.study[p]
        assert np.array_equal(va.array, vb.array.astype(va.array.dtype)), p
        assert va.same_geometry(vb, tol=1e-3), p
        assert np.array_equal(a.lesions[p].array, b.lesions[p].array)
    assert a.info == b.info


def test_dicom_series_carry_patient_and_contrast_tags(pair: tuple[Dataset, Dataset]) -> None:
    _, dicom = pair
    case_id = dicom.case_ids[0]
    info = dicom.read_info(case_id)
    series = list_series(dicom.root / case_id / "dicom")
    assert len(series) == 3
    assert {s.patient_id for s in series} == {case_id}
    assert {s.patient_sex for s in series} == {info.clinical.sex}
    assert {s.patient_age for s in series} == {f"{int(info.clinical.age):03d}Y"}
    assert sum(1 for s in series if s.contrast_agent) == 2
    study = read_study(dicom.root / case_id / "dicom")
    assert study.meta["phase_assignment"]["method"] == "tags+images"


def test_uninformative_descriptions_fall_back_to_timing_and_images(tmp_path: Path) -> None:
    """Toshiba-like protocol names every series 'Abdomen 5.0': timing, contrast and the aorta decide."""
    from liaids.phantom import cohort

    original = cohort._DESCRIPTIONS
    cohort._DESCRIPTIONS = {k: {p: "Abdomen 5.0" for p in PHASES} for k in original}
    try:
        ds = Dataset(synthesize_dataset(tmp_path / "d", cases=1, seed=5, profile="qzh", fmt="dicom"))
    finally:
        cohort._DESCRIPTIONS = original
    ref = synthesize_dataset(tmp_path / "n", cases=1, seed=5, profile="qzh", fmt="nifti")
    case_id = ds.case_ids[0]
    got, want = ds.load_case(case_id), Dataset(ref).load_case(case_id)
    for p in PHASES:
        assert np.array_equal(got.study[p].array, want.study[p].array.astype(got.study[p].array.dtype)), p
