"""The command line: one obvious command per job, one-line errors, non-zero exit, nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _liaids(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "liaids.cli", *args], capture_output=True, text=True, timeout=300
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("liaids: error: ")
    for w in words:
        assert w in lines[0]


def test_synth_writes_a_valid_dataset_with_previews(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    proc = _liaids("synth", "--out", str(out), "--cases", "1", "--seed", "2", "--profile", "nbh", "--preview")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    case_dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(case_dirs) == 1 and (case_dirs[0] / "preview.png").stat().st_size > 10_000
    check = _liaids("dataset", "validate", str(out))
    assert check.returncode == 0 and "1 case(s) valid" in check.stdout
    info = _liaids("inspect", str(case_dirs[0] / "image_PV.nii.gz"))
    assert info.returncode == 0
    assert json.loads(info.stdout)["shape_kji"][1:] == [512, 512]


def test_synth_first_case_extends_a_cohort(tmp_path: Path) -> None:
    out = tmp_path / "more"
    proc = _liaids(
        "synth", "--out", str(out), "--cases", "1", "--seed", "2", "--profile", "nbh", "--first-case", "3"
    )
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["cases"] == ["nbh_0003"] and meta["phantom"]["first_case"] == 3
    case = json.loads((out / "nbh_0003" / "case.json").read_text())
    assert case["phantom"]["index"] == 3 and case["phantom"]["seed"] == 2


def test_unknown_profile_is_one_line_and_leaves_no_folder(tmp_path: Path) -> None:
    proc = _liaids("synth", "--out", str(tmp_path / "x"), "--profile", str(tmp_path / "nope.yaml"))
    _one_line_error(proc, "nope.yaml", "no such profile file")
    assert not (tmp_path / "x").exists()


def test_bad_format_is_refused(tmp_path: Path) -> None:
    proc = _liaids("synth", "--out", str(tmp_path / "x"), "--format", "png")
    _one_line_error(proc, "--format must be nifti or dicom")
    assert not (tmp_path / "x").exists()


def test_inspect_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    _one_line_error(_liaids("inspect", str(bad)), "broken.nii.gz")


def test_inspect_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    _one_line_error(_liaids("inspect", str(tmp_path)), str(tmp_path))


@pytest.mark.parametrize("args", [["dataset", "validate", "/nonexistent/liaids-dataset"]])
def test_missing_dataset(args: list[str]) -> None:
    _one_line_error(_liaids(*args), "dataset folder not found")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], "Usage"),
        (["synth"], "Missing option"),
        (["bogus"], "No such command"),
        (["synth", "--out", "x", "--cases", "0"], "--cases"),
        (["synth", "--out", "x", "--seed", "-1"], "--seed"),
    ],
)
def test_usage_errors_are_explained_without_traceback(args: list[str], words: str) -> None:
    proc = _liaids(*args)
    assert proc.returncode == 2
    assert words in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_validate_fails_with_exit_1_on_a_broken_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert _liaids("synth", "--out", str(out), "--cases", "1", "--seed", "4").returncode == 0
    case = next(p for p in out.iterdir() if p.is_dir())
    (case / "liver_NC.nii.gz").write_bytes(b"not a nifti")
    proc = _liaids("dataset", "validate", str(out))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "liver_NC.nii.gz" in lines[0]


def test_output_inside_a_file_or_the_current_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    _one_line_error(
        _liaids("synth", "--out", str(tmp_path / "afile" / "x")), "cannot create the output folder"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "liaids.cli", "synth", "--out", ".", "--overwrite"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    _one_line_error(proc, "must not be the current folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
