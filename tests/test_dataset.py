"""Dataset format: a phantom cohort round-trips through the loader; malformed cases fail clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from liaids.codes import PHASES
from liaids.dataset import Dataset
from liaids.errors import ClinicalInfoError, DatasetError, LiaidsError
from liaids.io import read_nifti, write_nifti
from liaids.phantom.cohort import synthesize_dataset
from liaids.phantom.synthesize import PHANTOM_VERSION


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize_dataset(tmp_path_factory.mktemp("ds") / "phantom", cases=1, seed=11, profile="internal")


@pytest.fixture
def copy(cohort: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(cohort, dst)
    return dst


def test_cohort_loads_and_matches_case_json(cohort: Path) -> None:
    ds = Dataset(cohort)
    assert ds.meta["phases"] == list(PHASES) and len(ds) == 1
    assert "anatomy" in ds.meta["labels"] and ds.meta["labels"]["anatomy"]["9"] == "liver"
    # Which generator wrote it: the same profile and seed give the same images only within a version.
    assert ds.meta["phantom"]["version"] == PHANTOM_VERSION and ds.meta["phantom"]["profile"]["name"]
    case = ds.load_case(ds.case_ids[0], with_anatomy=True)
    assert set(case.study.phases) == set(PHASES)
    for p in PHASES:
        assert case.liver[p].same_geometry(case.study[p])
    listed = {lr.lesion_id: lr for lr in case.info.lesions}
    for lr in listed.values():
        present = [p for p in PHASES if (case.lesions[p].array == lr.lesion_id).any()]
        assert present == lr.extra["phases"]
        for p in present:
            vol_ml = (case.lesions[p].array == lr.lesion_id).sum() * np.prod(case.lesions[p].spacing) / 1000
            assert vol_ml == pytest.approx(lr.volume_ml[p], rel=1e-3)
    assert case.info.acquisition["slice_thickness_mm"] == case.study["PV"].spacing[2]
    assert ds.validate() == []


def _case_dir(root: Path) -> Path:
    return next(p for p in root.iterdir() if p.is_dir())


def test_missing_mask_is_named(copy: Path) -> None:
    (_case_dir(copy) / "liver_ART.nii.gz").unlink()
    with pytest.raises(DatasetError, match="mask file not found") as err:
        Dataset(copy).load_case(_case_dir(copy).name)
    assert "liver_ART.nii.gz" in str(err.value)


def test_mask_with_other_geometry_is_refused(copy: Path) -> None:
    path = _case_dir(copy) / "lesions_PV.nii.gz"
    vol = read_nifti(path)
    write_nifti(
        vol.with_array(vol.array).__class__(vol.array[:-1], vol.spacing, vol.origin, vol.direction), path
    )
    with pytest.raises(DatasetError, match="geometry differs from the PV image"):
        Dataset(copy).load_case(_case_dir(copy).name)


def test_lesion_id_not_in_case_json(copy: Path) -> None:
    path = _case_dir(copy) / "lesions_NC.nii.gz"
    vol = read_nifti(path)
    arr = vol.array.copy()
    arr[0, 0, 0] = 99
    write_nifti(vol.with_array(arr), path)
    with pytest.raises(DatasetError, match=r"lesion ids \[99\] are not listed in case.json"):
        Dataset(copy).load_case(_case_dir(copy).name)


def test_liver_mask_must_be_binary(copy: Path) -> None:
    path = _case_dir(copy) / "liver_NC.nii.gz"
    vol = read_nifti(path)
    arr = vol.array.copy()
    arr[0, 0, 0] = 3
    write_nifti(vol.with_array(arr), path)
    with pytest.raises(DatasetError, match="liver mask must hold 0/1 only"):
        Dataset(copy).load_case(_case_dir(copy).name)


@pytest.mark.parametrize(
    ("edit", "error", "words"),
    [
        (lambda d: d["lesions"].append({"id": 40, "type": "GIST"}), DatasetError, "unknown type 'GIST'"),
        (lambda d: d.pop("clinical"), DatasetError, "lacks the key 'clinical'"),
        (lambda d: d["clinical"].update(age=300), ClinicalInfoError, "outside the plausible range"),
        (
            lambda d: (
                d["lesions"].append(dict(d["lesions"][0]))
                if d["lesions"]
                else d["lesions"].extend([{"id": 1, "type": "HC"}, {"id": 1, "type": "HC"}])
            ),
            DatasetError,
            "appears twice",
        ),
    ],
)
def test_bad_case_json(copy: Path, edit, error: type[LiaidsError], words: str) -> None:
    path = _case_dir(copy) / "case.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(error, match=words) as err:
        Dataset(copy).load_case(_case_dir(copy).name)
    assert "case.json" in str(err.value)


def test_bad_dataset_json(copy: Path) -> None:
    (copy / "dataset.json").write_text("{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        Dataset(copy)
    (copy / "dataset.json").write_text(json.dumps({"name": "x", "phases": ["PV"], "cases": []}))
    with pytest.raises(DatasetError, match="phases must be"):
        Dataset(copy)


def test_synth_refuses_to_overwrite_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(LiaidsError, match="not empty"):
        synthesize_dataset(out, cases=1)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(LiaidsError):
        synthesize_dataset(tmp_path / "new", cases=1, profile=tmp_path / "missing.json")
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d.update(cases=[5]), "'cases' must be a list of case ids"),
        (lambda d: d.update(cases="internal_0000"), "'cases' must be a list of case ids"),
        (lambda d: d.update(cases=["../elsewhere"]), "'cases' must be a list of case ids"),
        (lambda d: d.update(cases=d["cases"] * 2), "case ids listed twice"),
        (lambda d: d.update(phases=3), "phases must be"),
    ],
)
def test_dataset_json_types(copy: Path, edit, words: str) -> None:
    path = copy / "dataset.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=words):
        Dataset(copy)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d.update(acquisition=["CT"]), "'acquisition' must be a JSON object"),
        (
            lambda d: d["lesions"].append({"id": 50, "type": "HC", "diameter_mm": "big"}),
            "diameter_mm must be",
        ),
        (lambda d: d["lesions"].append({"id": 51, "type": "HC", "volume_ml": [1]}), "volume_ml must map"),
    ],
)
def test_case_json_types(copy: Path, edit, words: str) -> None:
    path = _case_dir(copy) / "case.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=words):
        Dataset(copy).load_case(_case_dir(copy).name)
