"""Reader study: CSV loading and its errors, per-reader metrics, paired and non-inferiority tests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from liaids.errors import DatasetError, EvaluationInputError
from liaids.evaluate.reader_study import (
    ReaderStudy,
    ai_non_inferiority,
    call_metrics,
    compare_sessions,
    load_reader_study,
    reader_metrics,
    write_rows,
)

TRUTH = {"p1": "malignant", "p2": "malignant", "p3": "benign", "p4": "benign", "p5": "benign"}
#: reader -> session -> calls for p1..p5 ("m" malignant, "b" benign).
CALLS = {
    "junior1": {"without_ai": "mbbmb", "with_ai": "mmbbb"},
    "senior1": {"without_ai": "mmbbm", "with_ai": "mmbbb"},
}
AI = "mmbbm"


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _call_rows(with_truth: bool = True) -> list[list[str]]:
    rows = []
    for reader, sessions in CALLS.items():
        for session, calls in sessions.items():
            for i, c in enumerate(calls):
                pid = f"p{i + 1}"
                call = "malignant" if c == "m" else "benign"
                rows.append([reader, pid, session, call] + ([TRUTH[pid]] if with_truth else []))
    return rows


@pytest.fixture
def study_files(tmp_path: Path) -> tuple[Path, Path]:
    calls = _write(
        tmp_path / "calls.csv", ["reader_id", "patient_id", "session", "call", "truth"], _call_rows()
    )
    ai = _write(
        tmp_path / "ai.csv",
        ["patient_id", "call"],
        [[f"p{i + 1}", "malignant" if c == "m" else "benign"] for i, c in enumerate(AI)],
    )
    return calls, ai


def test_load_and_metrics_hand_computed(study_files: tuple[Path, Path]) -> None:
    calls, ai = study_files
    study = load_reader_study(calls, ai_calls_csv=ai)
    assert study.readers == ("junior1", "senior1")
    rows = reader_metrics(study, n_resamples=100)
    assert [(r["reader_id"], r["session"]) for r in rows][-1] == ("LiAIDS", "ai")
    j = rows[0]  # junior1 alone: M,M,B,B,B called M,B,B,M,B
    assert (j["reader_id"], j["session"]) == ("junior1", "without_ai")
    assert j["accuracy"] == pytest.approx(3 / 5)
    assert j["malignant_sensitivity"] == pytest.approx(1 / 2)
    assert j["malignant_specificity"] == pytest.approx(2 / 3)
    assert j["benign_sensitivity"] == pytest.approx(2 / 3)
    assert j["benign_specificity"] == pytest.approx(1 / 2)
    assert j["malignant_f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert j["benign_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert j["accuracy_ci_low"] < 0.6 < j["accuracy_ci_high"]
    assert j["malignant_f1_ci_low"] <= j["malignant_f1"] <= j["malignant_f1_ci_high"]
    aided = rows[1]
    assert aided["session"] == "with_ai" and aided["accuracy"] == 1.0


def test_separate_truth_table_gives_the_same_study(tmp_path: Path, study_files: tuple[Path, Path]) -> None:
    calls_inline, _ = study_files
    calls = _write(
        tmp_path / "calls_only.csv", ["reader_id", "patient_id", "session", "call"], _call_rows(False)
    )
    truth = _write(tmp_path / "truth.csv", ["patient_id", "truth"], [[p, t] for p, t in TRUTH.items()])
    a = load_reader_study(calls, truth_csv=truth)
    b = load_reader_study(calls_inline)
    assert a.truth == b.truth and a.calls == b.calls
    # Both given and in agreement is fine.
    assert load_reader_study(calls_inline, truth_csv=truth).truth == a.truth


def test_values_are_case_and_space_insensitive(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "c.csv",
        ["Reader_ID", "patient_id", "session", "call", "truth"],
        [["r", "p1", " With_AI ", "MALIGNANT", "Benign"]],
    )
    study = load_reader_study(path)
    assert study.calls[("r", "with_ai")] == {"p1": True} and study.truth == {"p1": False}


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (
            ["reader_id", "patient_id", "call", "truth"],
            [["r", "p", "benign", "benign"]],
            "missing column(s) session",
        ),
        (
            ["reader_id", "patient_id", "session", "call", "truth"],
            [["r", "p", "before", "benign", "benign"]],
            "line 2: unknown session 'before'",
        ),
        (
            ["reader_id", "patient_id", "session", "call", "truth"],
            [["r", "p", "with_ai", "unsure", "benign"]],
            "line 2: unknown call 'unsure'",
        ),
        (
            ["reader_id", "patient_id", "session", "call", "truth"],
            [["r", "p", "with_ai", "benign", "benign"]] * 2,
            "line 3: duplicate row",
        ),
        (
            ["reader_id", "patient_id", "session", "call", "truth"],
            [["r", "p", "with_ai", "benign", "benign"], ["s", "p", "with_ai", "benign", "malignant"]],
            "truth of patient p differs",
        ),
        (
            ["reader_id", "patient_id", "session", "call", "truth"],
            [["", "p", "with_ai", "benign", "benign"]],
            "line 2: empty reader_id",
        ),
        (
            ["reader_id", "patient_id", "session", "call"],
            [["r", "p", "with_ai", "benign"]],
            "no truth column and no truth table",
        ),
        (["reader_id", "patient_id", "session", "call", "truth"], [], "no data rows"),
    ],
)
def test_loader_errors_name_file_and_problem(
    tmp_path: Path, header: list[str], rows: list[list[str]], message: str
) -> None:
    path = _write(tmp_path / "bad.csv", header, rows)
    with pytest.raises(DatasetError) as err:
        load_reader_study(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


def test_loader_errors_in_truth_and_ai_files(tmp_path: Path, study_files: tuple[Path, Path]) -> None:
    calls = _write(
        tmp_path / "calls_only.csv", ["reader_id", "patient_id", "session", "call"], _call_rows(False)
    )
    short_truth = _write(tmp_path / "truth.csv", ["patient_id", "truth"], [["p1", "malignant"]])
    with pytest.raises(DatasetError, match="patient p2 has no truth"):
        load_reader_study(calls, truth_csv=short_truth)
    dup_truth = _write(tmp_path / "dup.csv", ["patient_id", "truth"], [["p1", "benign"], ["p1", "benign"]])
    with pytest.raises(DatasetError, match="duplicate patient_id"):
        load_reader_study(calls, truth_csv=dup_truth)
    stranger = _write(tmp_path / "ai2.csv", ["patient_id", "call"], [["p99", "benign"]])
    with pytest.raises(DatasetError, match="p99 has no truth"):
        load_reader_study(study_files[0], ai_calls_csv=stranger)
    with pytest.raises(DatasetError, match="cannot read"):
        load_reader_study(tmp_path / "missing.csv")


def test_compare_sessions_mcnemar_per_reader_and_pooled(study_files: tuple[Path, Path]) -> None:
    study = load_reader_study(study_files[0])
    rows = {r["reader_id"]: r for r in compare_sessions(study)}
    # junior1: p2 and p4 right only with AI; senior1: p5 right only with AI.
    assert (rows["junior1"]["improved"], rows["junior1"]["worsened"]) == (2, 0)
    assert rows["junior1"]["p_value"] == pytest.approx(0.5)  # 2 * (1/2)^2
    assert rows["senior1"]["p_value"] == pytest.approx(1.0)
    assert (rows["pooled"]["improved"], rows["pooled"]["n"]) == (3, 10)
    assert rows["pooled"]["p_value"] == pytest.approx(0.25)  # 2 * (1/2)^3
    assert rows["pooled"]["difference"] == pytest.approx(0.3)


def test_ai_non_inferiority_against_each_reader(study_files: tuple[Path, Path], tmp_path: Path) -> None:
    study = load_reader_study(study_files[0], ai_calls_csv=study_files[1])
    rows = ai_non_inferiority(study)
    assert [r["reader_id"] for r in rows] == ["junior1", "senior1"]
    senior = rows[1]  # identical calls: difference 0, but 5 patients cannot show non-inferiority
    assert senior["difference"] == 0.0 and senior["margin"] == 0.1 and senior["alpha"] == 0.05
    assert not senior["non_inferior"]
    path = write_rows(rows, tmp_path / "out" / "ni.csv")
    with path.open() as f:
        back = list(csv.DictReader(f))
    assert len(back) == 2 and back[0]["reader_id"] == "junior1"
    with pytest.raises(EvaluationInputError):
        ai_non_inferiority(load_reader_study(study_files[0]))


def test_large_study_non_inferiority_and_table3_symmetry() -> None:
    rng = np.random.default_rng(0)
    patients = [f"p{i}" for i in range(400)]
    truth = {p: bool(rng.random() < 0.2) for p in patients}

    def flip(rate: float) -> dict[str, bool]:
        return {p: (not t) if rng.random() < rate else t for p, t in truth.items()}

    study = ReaderStudy(
        truth=truth,
        calls={("r1", "without_ai"): flip(0.06), ("r1", "with_ai"): flip(0.03)},
        ai_calls=flip(0.05),
    )
    (row,) = ai_non_inferiority(study)
    assert row["non_inferior"] and row["ci_low"] > -0.1 and row["p_value"] < 0.05
    for r in reader_metrics(study, n_resamples=0):
        # Benign as positive class is malignant as negative class (paper Table 3).
        assert r["benign_sensitivity"] == pytest.approx(r["malignant_specificity"])
        assert r["benign_specificity"] == pytest.approx(r["malignant_sensitivity"])
    m = call_metrics(np.array([True, False]), np.array([True, True]), n_resamples=0)
    assert m["benign_sensitivity"] == 0.0 and m["malignant_precision"] == 0.5
    with pytest.raises(EvaluationInputError, match="no truth"):
        ReaderStudy(truth={}, calls={("r", "with_ai"): {"p": True}})
