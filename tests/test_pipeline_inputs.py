"""INPUT resolution for ``liaids diagnose`` (DICOM, volumes, case folder, overrides) and clinical fields."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from liaids.codes import PHASES
from liaids.errors import ClinicalInfoError, PhaseError, StudyReadError
from liaids.io import write_nifti
from liaids.pipeline.inputs import (
    ClinicalInput,
    as_clinical_input,
    dicom_age_years,
    parse_clinical_options,
    resolve_clinical,
    resolve_input,
)
from liaids.types import Volume

WriteSeries = Callable[..., list[Path]]
TIMES = {"NC": "100000", "ART": "100035", "PV": "100110"}
DESCRIPTIONS = {"NC": "Abdomen plain", "ART": "Late arterial", "PV": "Portal venous 5mm"}
HISTORY = {
    "hepatitis_b": True,
    "hepatitis_c": False,
    "cirrhosis": False,
    "cholangiolithiasis": False,
    "extrahepatic_tumour": True,
}


def write_study(
    root: Path, volumes: dict[str, Volume], write_series: WriteSeries, specs: list[tuple[str, dict[str, Any]]]
) -> Path:
    """One series per ``(volume phase, tag overrides)``, in folders named series01, series02..."""
    for number, (phase, overrides) in enumerate(specs, start=1):
        kwargs: dict[str, Any] = {
            "phase": phase,
            "series_number": number,
            "series_description": DESCRIPTIONS[phase],
            "contrast_agent": None if phase == "NC" else "Iohexol 350",
            "acquisition_time": TIMES[phase],
            "series_uid": f"1.2.826.0.1.3680043.10.1.1.{number}",
            **overrides,
        }
        write_series(volumes[phase], root / f"series{number:02d}", **kwargs)
    return root


@pytest.fixture(scope="module")
def tagged_study(
    tmp_path_factory: pytest.TempPathFactory, phase_volumes: dict[str, Volume]
) -> tuple[Path, dict[str, Volume]]:
    """Descriptive tags; series01 = PV, series02 = NC, series03 = ART."""
    from liaids.io.dicom import write_dicom_series

    root = tmp_path_factory.mktemp("tagged")
    for number, phase in enumerate(["PV", "NC", "ART"], start=1):
        write_dicom_series(
            phase_volumes[phase],
            root / f"series{number:02d}",
            phase=phase,
            patient_id="LIAIDS-0001",
            patient_name="Phantom^One",
            patient_age_years=67,
            patient_sex="F",
            study_uid="1.2.826.0.1.3680043.10.1.1",
            series_uid=f"1.2.826.0.1.3680043.10.1.1.{number}",
            series_number=number,
            series_description=DESCRIPTIONS[phase],
            acquisition={},
            contrast_agent=None if phase == "NC" else "Iohexol",
            acquisition_time=TIMES[phase],
        )
    return root, phase_volumes


def test_dicom_study_phases_from_tags(tagged_study: tuple[Path, dict[str, Volume]]) -> None:
    root, volumes = tagged_study
    got = resolve_input(root)
    assert got.kind == "dicom" and got.source == root
    assert got.sources == {
        "PV": "1.2.826.0.1.3680043.10.1.1.1",
        "NC": "1.2.826.0.1.3680043.10.1.1.2",
        "ART": "1.2.826.0.1.3680043.10.1.1.3",
    }
    for p in PHASES:
        assert got.study[p].same_geometry(volumes[p])
    assert got.assignment["method"] == "tags+images" and got.assignment["overridden"] == []
    assert got.patient["patient_id"] == "LIAIDS-0001" and got.patient["PatientAge"] == "067Y"


def test_overrides_by_number_folder_and_uid(tagged_study: tuple[Path, dict[str, Volume]]) -> None:
    root, _ = tagged_study
    got = resolve_input(root, {"nc": "2", "ART": root / "series03", "PV": "1.2.826.0.1.3680043.10.1.1.1"})
    assert got.sources["NC"].endswith(".2") and got.sources["ART"].endswith(".3")
    assert got.sources["PV"].endswith(".1")
    assert got.assignment["method"] == "override" and got.assignment["overridden"] == ["ART", "NC", "PV"]
    assert got.assignment["warnings"] == []  # the images agree
    assert "given as the NC phase" in got.assignment["evidence"]["NC"][0]


def test_partial_override_completes_from_tags_and_elimination(
    tmp_path: Path, phase_volumes: dict[str, Volume], write_series: WriteSeries
) -> None:
    same = {"series_description": "Abdomen 5mm", "acquisition_time": "100000", "contrast_agent": "Iohexol"}
    root = write_study(tmp_path, phase_volumes, write_series, [("ART", same), ("PV", same), ("NC", same)])
    with pytest.raises(PhaseError, match=r"cannot tell which series is ART, PV.*give --art --pv"):
        resolve_input(root, {"NC": "3"})
    got = resolve_input(root, {"NC": "3", "ART": "1"})
    assert got.sources["PV"].endswith(".2")
    assert got.assignment["evidence"]["PV"][0] == "the only CT series left"
    assert got.assignment["evidence"]["PV"][1].startswith("image check: aorta 1")
    assert got.assignment["method"] == "override+tags"


def test_override_contradicting_the_images_is_a_warning(tagged_study: tuple[Path, dict[str, Volume]]) -> None:
    root, _ = tagged_study
    got = resolve_input(root, {"ART": "1", "PV": "3"})  # swapped on purpose
    assert got.sources["ART"].endswith(".1") and got.sources["PV"].endswith(".3")
    assert len(got.assignment["warnings"]) == 1
    assert "image check disagrees" in got.assignment["warnings"][0] and "ART" in got.assignment["warnings"][0]


def test_override_matching_nothing(tagged_study: tuple[Path, dict[str, Volume]]) -> None:
    root, _ = tagged_study
    with pytest.raises(PhaseError, match=r"ART override '9' matches no series; series found: #1 'Portal"):
        resolve_input(root, {"ART": "9"})
    with pytest.raises(PhaseError, match="unknown phase 'DELAYED'"):
        resolve_input(root, {"DELAYED": "1"})
    with pytest.raises(PhaseError, match="one series is given for several phases"):
        resolve_input(root, {"ART": "1", "PV": "1"})


@pytest.fixture(scope="module")
def nifti_files(
    tmp_path_factory: pytest.TempPathFactory, phase_volumes: dict[str, Volume]
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nifti")
    named = {}
    for p in PHASES:
        named[p] = root / f"patient_{p.lower()}.nii.gz"
        write_nifti(phase_volumes[p], named[p])
        write_nifti(phase_volumes[p], root / f"unnamed_{PHASES.index(p)}.nii.gz")
    return named


def test_volumes_named_by_their_files(nifti_files: dict[str, Path]) -> None:
    got = resolve_input([nifti_files["PV"], nifti_files["NC"], nifti_files["ART"]])
    assert got.kind == "nifti"
    assert got.sources == {p: str(nifti_files[p]) for p in PHASES}
    assert "file name patient_pv.nii.gz names PV" in got.assignment["evidence"]["PV"][0]
    assert (
        got.assignment["measurements"]["ART"]["aorta_hu"] > got.assignment["measurements"]["PV"]["aorta_hu"]
    )


def test_unnamed_volumes_in_order_and_checked_on_the_images(nifti_files: dict[str, Path]) -> None:
    root = nifti_files["NC"].parent
    ordered = [root / f"unnamed_{n}.nii.gz" for n in range(3)]
    got = resolve_input(ordered)
    assert got.sources["ART"] == str(ordered[1])
    assert "order given" in got.assignment["evidence"]["ART"][0]
    with pytest.raises(PhaseError, match="ART must be higher"):
        resolve_input([ordered[0], ordered[2], ordered[1]])  # PV given where ART belongs
    # The same order with the user's word for it: a warning, not an error.
    got = resolve_input([ordered[0]], {"ART": ordered[2], "PV": ordered[1]})
    assert got.assignment["warnings"] and got.sources["NC"] == str(ordered[0])


def test_one_volume_is_not_a_study(nifti_files: dict[str, Path]) -> None:
    with pytest.raises(StudyReadError, match="one volume holds one phase") as info:
        resolve_input(nifti_files["PV"])
    assert str(nifti_files["PV"]) in str(info.value)
    with pytest.raises(StudyReadError, match="no such file"):
        resolve_input([nifti_files["PV"], nifti_files["NC"], nifti_files["NC"].with_name("missing.nii.gz")])


def test_case_folder(tmp_path: Path, phase_volumes: dict[str, Volume]) -> None:
    case = tmp_path / "case_7"
    for p in PHASES:
        write_nifti(phase_volumes[p], case / f"image_{p}.nii.gz")
    (case / "case.json").write_text(json.dumps({"case_id": "case_7", "clinical": {"age": 70, "sex": "M"}}))
    got = resolve_input(case)
    assert got.kind == "case" and got.patient["case_id"] == "case_7"
    assert got.case_clinical == {"age": 70, "sex": "M"} and got.case_json == case / "case.json"
    assert "dataset file name image_NC.nii.gz names NC" in got.assignment["evidence"]["NC"][0]
    # An override replaces the case's own file for that phase.
    other = tmp_path / "other_art.nii.gz"
    write_nifti(phase_volumes["ART"], other)
    assert resolve_input(case, {"ART": other}).sources["ART"] == str(other)


def test_case_folder_images_disagreeing_with_its_labels_is_a_warning(
    tmp_path: Path, phase_volumes: dict[str, Volume]
) -> None:
    """A dataset's file names are its labels (a weak arterial phase is data, not an input error); the same
    files given loose still fail."""
    case = tmp_path / "case_8"
    swapped = {"NC": "NC", "ART": "PV", "PV": "ART"}
    for p in PHASES:
        write_nifti(phase_volumes[swapped[p]], case / f"image_{p}.nii.gz")
    (case / "case.json").write_text(json.dumps({"case_id": "case_8", "clinical": {"age": 70, "sex": "M"}}))
    got = resolve_input(case)
    assert got.sources["ART"].endswith("image_ART.nii.gz")
    (warning,) = got.assignment["warnings"]
    assert "image check disagrees" in warning and "named by the dataset" in warning
    loose = [tmp_path / "loose" / f"scan_{p}.nii.gz" for p in PHASES]
    for path, p in zip(loose, PHASES, strict=True):
        write_nifti(phase_volumes[swapped[p]], path)
    with pytest.raises(PhaseError, match="tags and images disagree"):
        resolve_input(loose)


# --------------------------------------------------------------------------------------------------
# Clinical fields
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "years"),
    [
        ("055Y", 55.0),
        ("006M", 0.5),
        ("052W", 0.996),
        ("365D", 0.9993),
        ("", None),
        ("abc", None),
        ("12", 12.0),
    ],
)
def test_dicom_age(text: str, years: float | None) -> None:
    got = dicom_age_years(text)
    assert got == (None if years is None else pytest.approx(years, abs=0.01))


def test_clinical_file_and_options(tmp_path: Path) -> None:
    path = tmp_path / "clinical.json"
    path.write_text(json.dumps({"age": 60, "sex": "f", "cirrhosis": "yes"}))
    given = parse_clinical_options(path, age=61.5, hepatitis_b=False)
    assert given.values == {"age": 61.5, "sex": "F", "cirrhosis": True, "hepatitis_b": False}
    assert given.sources["age"] == "option" and given.sources["sex"] == f"clinical file {path}"
    # A case.json works as a clinical file.
    case = tmp_path / "case.json"
    case.write_text(json.dumps({"case_id": "x", "clinical": {"age": 40, "sex": "M", **HISTORY}}))
    assert parse_clinical_options(case).values["extrahepatic_tumour"] is True


def test_absurd_and_unknown_clinical_values(tmp_path: Path) -> None:
    with pytest.raises(ClinicalInfoError, match="age 300 is outside"):
        parse_clinical_options(age=300)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"age": 50, "smoker": True}))
    with pytest.raises(ClinicalInfoError, match=r"unknown clinical field\(s\) \['smoker'\]") as info:
        parse_clinical_options(path)
    assert str(path) in str(info.value)
    with pytest.raises(ClinicalInfoError, match="sex must be"):
        as_clinical_input({"sex": "X"})
    with pytest.raises(ClinicalInfoError, match="missing_history"):
        ClinicalInput(missing_history="maybe")


def test_clinical_sources_and_precedence() -> None:
    given = parse_clinical_options(sex="F", **HISTORY)
    dicom = {"PatientAge": "067Y", "PatientSex": "M"}
    got = resolve_clinical(given, case_values={"cirrhosis": True}, dicom=dicom)
    assert got.info is not None
    assert got.values["age"] == 67.0 and got.sources["age"] == "DICOM"
    assert got.values["sex"] == "F" and got.sources["sex"] == "option"  # the user wins over DICOM
    assert got.values["cirrhosis"] is False and got.sources["cirrhosis"] == "option"
    case_only = resolve_clinical(parse_clinical_options(), case_values={"age": 30, "sex": "M", **HISTORY})
    assert set(case_only.sources.values()) == {"case.json"}


def test_missing_history_is_an_explicit_choice() -> None:
    dicom = {"PatientAge": "050Y", "PatientSex": "F"}
    with pytest.raises(
        ClinicalInfoError, match=r"missing clinical field.*hepatitis_b.*--missing-history absent"
    ):
        resolve_clinical(parse_clinical_options(cirrhosis=True), dicom=dicom)
    got = resolve_clinical(parse_clinical_options(cirrhosis=True, missing_history="absent"), dicom=dicom)
    assert got.values["hepatitis_b"] is False and got.sources["hepatitis_b"] == "assumed absent"
    assert got.values["cirrhosis"] is True and got.sources["cirrhosis"] == "option"
    with pytest.raises(ClinicalInfoError, match=r"\['age', 'sex'\].*--age/--sex"):
        resolve_clinical(parse_clinical_options(missing_history="absent"), dicom={"PatientSex": "O"})
    # An image-only classifier needs none of it: unknown fields stay unknown.
    loose = resolve_clinical(parse_clinical_options(), required=False)
    assert loose.info is None and loose.values["age"] is None and loose.sources["age"] == "unknown"
    assert loose.to_dict()["complete"] is False


def test_volumes_keep_their_values(nifti_files: dict[str, Path], phase_volumes: dict[str, Volume]) -> None:
    got = resolve_input([nifti_files[p] for p in PHASES])
    for p in PHASES:
        assert np.allclose(got.study[p].array, phase_volumes[p].array, atol=0.5)
        assert got.study[p].meta["phase"] == p
