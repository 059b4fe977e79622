"""Phase identification: tag rules, the model-free aorta check, and read_study on synthetic studies."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from liaids.errors import PhaseError, StudyReadError
from liaids.io import (
    SeriesInfo,
    check_phases,
    description_phases,
    find_aorta,
    identify_phases,
    list_series,
    measure_enhancement,
    read_study,
)
from liaids.types import Volume

WriteSeries = Callable[..., list[Path]]

TIMES = {"NC": "100000", "ART": "100035", "PV": "100110"}


def _write_study(
    root: Path,
    volumes: dict[str, Volume],
    write_series: WriteSeries,
    specs: list[tuple[str, dict[str, Any]]],
) -> Path:
    """Write one series per spec ``(volume phase, tag overrides)`` in folders that give nothing away."""
    for number, (phase, overrides) in enumerate(specs, start=1):
        kwargs: dict[str, Any] = {
            "phase": phase,
            "series_number": number,
            "series_description": "Abdomen 5mm",
            "contrast_agent": None if phase == "NC" else "Iohexol 350",
            "acquisition_time": TIMES[phase],
            "series_uid": f"1.2.826.0.1.3680043.10.1.1.{number}",
        }
        kwargs.update(overrides)
        write_series(volumes[phase], root / f"series{number:02d}", **kwargs)
    return root


def _info(uid: str, description: str = "", **fields: Any) -> SeriesInfo:
    return SeriesInfo(
        series_uid=uid,
        modality=fields.pop("modality", "CT"),
        series_description=description,
        series_number=None,
        files=(Path(f"/study/{uid}/1.dcm"),),
        **fields,
    )


# --------------------------------------------------------------------------------------------------
# Tag rules
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("Abdomen NC 5mm", {"NC"}),
        ("Non-contrast abdomen", {"NC"}),
        ("NONCONTRAST", {"NC"}),
        ("Pre contrast", {"NC"}),
        ("Plain CT", {"NC"}),
        ("native 3.0 B30f", {"NC"}),
        ("Unenhanced liver", {"NC"}),
        ("ABD C-", {"NC"}),
        ("Late arterial 1.25", {"ART"}),
        ("Hepatic arterial phase", {"ART"}),
        ("Art 5mm", {"ART"}),
        ("AP liver", {"ART"}),
        ("Portal venous", {"PV"}),
        ("PVP 3mm", {"PV"}),
        ("venous phase", {"PV"}),
        ("Delayed 3 min", {"DELAYED"}),
        ("Equilibrium", {"DELAYED"}),
        # Substrings must not match: Cartilage, Apex, Precise, Spine, Inc.
        ("Cartilage apex precise spine inc", set()),
        ("Abdomen 5mm", set()),
        ("CT Body 3.0", set()),
        ("arterial and portal", {"ART", "PV"}),
    ],
)
def test_description_keywords(description: str, expected: set[str]):
    assert description_phases(description) == expected


def test_tags_from_descriptions():
    series = [_info("3", "Portal venous"), _info("1", "Non-contrast"), _info("2", "Arterial")]
    result = identify_phases(series)
    assert result.series == {"NC": "1", "ART": "2", "PV": "3"}
    assert result.method == "tags"
    assert "names ART" in result.evidence["ART"][0]


def test_tags_from_contrast_agent_and_times():
    series = [
        _info("a", contrast_agent="Iohexol", acquisition_time="101110"),
        _info("b", acquisition_time="100000"),
        _info("c", contrast_agent="Iohexol", acquisition_time="100040.5"),
    ]
    result = identify_phases(series)
    assert result.series == {"NC": "b", "ART": "c", "PV": "a"}
    assert "ContrastBolusAgent" in result.evidence["NC"][0]
    assert "acquisition time" in result.evidence["PV"][0]


def test_tags_by_elimination_and_exclusions():
    series = [
        _info("n", "NC"),
        _info("p", "PV"),
        _info("x", "Body 3.0"),
        _info("d", "Delayed 3min"),
        _info("s", "Topogram", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        _info("g", "Liver", modality="SEG"),
    ]
    result = identify_phases(series)
    assert result.series == {"NC": "n", "ART": "x", "PV": "p"}
    assert "left" in result.evidence["ART"][0]


def test_tags_not_decisive_without_images():
    series = [_info("a", "Body"), _info("b", "Body"), _info("c", "Body")]
    with pytest.raises(PhaseError, match=r"tags do not identify phase.*no images"):
        identify_phases(series)


def test_tag_errors():
    with pytest.raises(PhaseError, match=r"missing phase.*ART") as info:
        identify_phases([_info("1", "NC"), _info("3", "PV")])
    assert "'NC' (1" in str(info.value) and "'PV' (3" in str(info.value)
    with pytest.raises(PhaseError, match="2 series claim phase ART"):
        identify_phases([_info("1", "NC"), _info("2", "Arterial"), _info("3", "Late arterial")])
    with pytest.raises(PhaseError, match="mismatched PatientID") as info:
        identify_phases(
            [
                _info("1", "NC", patient_id="A"),
                _info("2", "ART", patient_id="A"),
                _info("3", "PV", patient_id="B"),
            ]
        )
    assert "'B'" in str(info.value) and "PV" in str(info.value)


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def test_aorta_found_and_measured(phase_volumes: dict[str, Volume]):
    assert find_aorta(phase_volumes["NC"]) is None  # not enhanced: no bright round blob
    art = find_aorta(phase_volumes["ART"])
    assert art is not None
    x, y, _ = art["position_mm"]
    assert x == pytest.approx(10.0, abs=2.5) and y == pytest.approx(16.5, abs=2.5)  # true centre (10, 16.5)
    assert 15.0 <= art["diameter_mm"] <= 25.0
    expected = {"NC": (40, 55), "ART": (280, 75), "PV": (160, 115)}
    for phase, (aorta_hu, soft_hu) in expected.items():
        m = measure_enhancement(phase_volumes[phase], art)
        assert m["aorta_hu"] == pytest.approx(aorta_hu, abs=8)
        assert m["soft_tissue_hu"] == pytest.approx(soft_hu, abs=8)
    alone = measure_enhancement(phase_volumes["PV"])
    assert alone["aorta_found_here"] and alone["aorta_hu"] == pytest.approx(160, abs=8)


def test_check_phases_keyed_by_phase(phase_volumes: dict[str, Volume]):
    series = [_info("1", "NC"), _info("2", "Arterial"), _info("3", "Portal venous")]
    assignment = identify_phases(series)
    measured = check_phases(assignment, phase_volumes)
    assert measured["ART"]["aorta_hu"] > measured["PV"]["aorta_hu"] > measured["NC"]["aorta_hu"]
    swapped = {"NC": phase_volumes["NC"], "ART": phase_volumes["PV"], "PV": phase_volumes["ART"]}
    with pytest.raises(PhaseError, match="ART must be higher"):
        check_phases(assignment, swapped)


# --------------------------------------------------------------------------------------------------
# Whole studies on disk
# --------------------------------------------------------------------------------------------------


def test_read_study_with_descriptive_tags(
    tmp_path: Path, phase_volumes: dict[str, Volume], write_series: WriteSeries
):
    specs = [
        ("PV", {"series_description": "Portal venous 5mm"}),
        ("NC", {"series_description": "Abdomen plain"}),
        ("ART", {"series_description": "Late arterial"}),
    ]
    root = _write_study(tmp_path, phase_volumes, write_series, specs)
    (root / "README.txt").write_text("not dicom")
    study = read_study(root)
    assert set(study.phases) == {"NC", "ART", "PV"}
    for phase in ("NC", "ART", "PV"):
        assert study[phase].meta["phase"] == phase
        assert study[phase].same_geometry(phase_volumes[phase])
    assert study["ART"].meta["SeriesDescription"] == "Late arterial"
    assignment = study.meta["phase_assignment"]
    assert assignment["method"] == "tags+images"
    assert assignment["measurements"]["ART"]["aorta_hu"] == pytest.approx(280, abs=8)
    assert any("image check" in e for e in assignment["evidence"]["NC"])
    assert study.meta["PatientID"] == "LIAIDS-0001" and study.meta["PatientAge"] == "055Y"


def test_read_study_from_images_alone(
    tmp_path: Path, phase_volumes: dict[str, Volume], write_series: WriteSeries
):
    # Same description, same time, contrast agent on all: only the images can tell.
    same = {"acquisition_time": "100000", "contrast_agent": "Iohexol 350"}
    specs = [("ART", same), ("PV", same), ("NC", same)]
    study = read_study(_write_study(tmp_path, phase_volumes, write_series, specs))
    assert study.meta["phase_assignment"]["method"] == "images"
    assert study["NC"].meta["SeriesInstanceUID"].endswith(".3")
    assert study["ART"].meta["SeriesInstanceUID"].endswith(".1")
    assert study["PV"].meta["SeriesInstanceUID"].endswith(".2")
    assert "highest" in study.meta["phase_assignment"]["evidence"]["ART"][0]


def test_read_study_from_agent_and_times(
    tmp_path: Path, phase_volumes: dict[str, Volume], write_series: WriteSeries
):
    specs = [("PV", {}), ("ART", {}), ("NC", {})]
    study = read_study(_write_study(tmp_path, phase_volumes, write_series, specs))
    assert study.meta["phase_assignment"]["method"] == "tags+images"
    assert study["ART"].meta["SeriesInstanceUID"].endswith(".2")


def test_contradictory_tags(tmp_path: Path, phase_volumes: dict[str, Volume], write_series: WriteSeries):
    specs = [
        ("NC", {"series_description": "Non-contrast"}),
        ("ART", {"series_description": "Portal venous"}),
        ("PV", {"series_description": "Arterial"}),
    ]
    root = _write_study(tmp_path, phase_volumes, write_series, specs)
    with pytest.raises(PhaseError, match="tags and images disagree") as info:
        read_study(root)
    message = str(info.value)
    assert message.startswith(f"{root}")
    assert "'Arterial' (1.2.826.0.1.3680043.10.1.1.3)" in message
    assert "'Portal venous' (1.2.826.0.1.3680043.10.1.1.2)" in message
    assert "HU" in message


def test_contradictory_nc(tmp_path: Path, phase_volumes: dict[str, Volume], write_series: WriteSeries):
    specs = [
        ("ART", {"series_description": "Non-contrast"}),
        ("NC", {"series_description": "Arterial"}),
        ("PV", {"series_description": "Portal venous"}),
    ]
    with pytest.raises(PhaseError, match=r"NC series 'Non-contrast' .* enhanced aorta \(2\d\d HU"):
        read_study(_write_study(tmp_path, phase_volumes, write_series, specs))


def test_partial_tags_contradicting_images(
    tmp_path: Path, phase_volumes: dict[str, Volume], write_series: WriteSeries
):
    same = {"acquisition_time": "100000", "contrast_agent": "Iohexol 350"}
    specs = [("PV", {**same, "series_description": "Arterial"}), ("ART", same), ("NC", same)]
    with pytest.raises(PhaseError, match="is ART by its tags but PV by the images"):
        read_study(_write_study(tmp_path, phase_volumes, write_series, specs))


def test_study_missing_phase(tmp_path: Path, phase_volumes: dict[str, Volume], write_series: WriteSeries):
    specs = [("NC", {"series_description": "NC"}), ("PV", {"series_description": "PV"})]
    root = _write_study(tmp_path, phase_volumes, write_series, specs)
    with pytest.raises(PhaseError, match=r"missing phase\(s\) ART") as info:
        read_study(root)
    assert "'NC'" in str(info.value) and "'PV'" in str(info.value)


def test_study_duplicate_phase(tmp_path: Path, phase_volumes: dict[str, Volume], write_series: WriteSeries):
    specs = [
        ("NC", {"series_description": "NC"}),
        ("ART", {"series_description": "Arterial"}),
        ("PV", {"series_description": "Arterial 2"}),
    ]
    with pytest.raises(PhaseError, match="2 series claim phase ART"):
        read_study(_write_study(tmp_path, phase_volumes, write_series, specs))


def test_study_mismatched_patient(
    tmp_path: Path, phase_volumes: dict[str, Volume], write_series: WriteSeries
):
    specs = [("NC", {}), ("ART", {}), ("PV", {"patient_id": "SOMEONE-ELSE"})]
    root = _write_study(tmp_path, phase_volumes, write_series, specs)
    assert len(list_series(root)) == 3
    with pytest.raises(PhaseError, match=r"mismatched PatientID.*SOMEONE-ELSE"):
        read_study(root)


def test_study_without_ct(tmp_path: Path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(StudyReadError, match="no DICOM files found"):
        read_study(tmp_path)
