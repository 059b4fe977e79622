"""Patient decision and triage rules: most severe lesion decides, thresholds, validation-cohort choice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from liaids.classification.context import PatientContext
from liaids.codes import LESION_TYPES, MALIGNANT_TYPES
from liaids.errors import LiaidsError
from liaids.pipeline.decision import (
    FALLBACK_TRIAGE_THRESHOLD,
    LesionCall,
    TriageSettings,
    calls_at_operating_point,
    decide,
    finding_calls,
    lesion_category,
    triage_detection_scan,
    triage_point_from_validation,
    triage_score,
    triage_settings_from_validation,
)
from liaids.pipeline.diagnose import load_triage_settings, save_triage_settings


def test_no_lesion_is_low_risk() -> None:
    d = decide([], 0.2)
    assert (d.risk, d.malignancy, d.diagnosis, d.deciding_lesion) == ("low", "no lesion", None, None)
    assert d.diagnosis_name == "no focal liver lesion"
    assert d.triage_score == 0.0


def test_lesion_categories() -> None:
    assert lesion_category("HCC", 0.05, 0.2) == "malignant"  # a malignant type is never reassuring
    assert lesion_category("HC", 0.05, 0.2) == "benign"
    assert lesion_category("HC", 0.2, 0.2) == "indeterminate"  # not *below* the threshold
    assert lesion_category("FNH", 0.6, 0.7) == "benign"


def test_malignant_beats_benign_and_indeterminate() -> None:
    lesions = [
        LesionCall(1, "HC", 0.01, 0.99),
        LesionCall(2, "HH", 0.35, 0.9),
        LesionCall(3, "HM", 0.55, 0.4),
    ]
    d = decide(lesions, 0.1)
    assert d.deciding_lesion == 3 and d.diagnosis == "HM" and d.malignancy == "malignant"
    assert d.categories == {1: "benign", 2: "indeterminate", 3: "malignant"}
    assert d.risk == "high" and "lesion 3" in d.reason and "malignant type" in d.reason
    assert d.triage_score == 1.0


def test_indeterminate_makes_high_risk() -> None:
    d = decide([LesionCall(1, "HC", 0.02), LesionCall(2, "HH", 0.12)], 0.1)
    assert (d.risk, d.malignancy, d.deciding_lesion) == ("high", "indeterminate", 2)
    assert "0.12" in d.reason and "0.10" in d.reason


def test_reasons_show_small_probabilities_and_thresholds_readably() -> None:
    # A cautious threshold of 0.0000355 and an abscess at 0.0015 must not both read "0.00".
    d = decide([LesionCall(1, "HA", 0.0015)], 3.5456e-05)
    assert d.risk == "high" and "0.0015 is not below the threshold 3.5e-05" in d.reason
    low = decide([LesionCall(1, "HC", 1.2e-05)], 3.5456e-05)
    assert low.risk == "low" and "1.2e-05 is below the threshold 3.5e-05" in low.reason


def test_every_lesion_confidently_benign_is_low_risk() -> None:
    d = decide([LesionCall(2, "HC", 0.02, 0.5), LesionCall(1, "HH", 0.07, 0.9)], 0.1)
    assert d.risk == "low" and d.malignancy == "benign"
    # The benign lesion closest to the threshold is reported as deciding.
    assert d.deciding_lesion == 1 and d.diagnosis == "HH"
    assert "all 2 lesions" in d.reason


def test_ties_break_on_score_then_id() -> None:
    d = decide(
        [LesionCall(4, "HCC", 0.8, 0.5), LesionCall(2, "ICC", 0.8, 0.9), LesionCall(3, "ICC", 0.8, 0.9)], 0.1
    )
    assert d.deciding_lesion == 2


def test_problems_forbid_low_risk() -> None:
    d = decide([], 0.1, problems=["no liver found in the NC phase"])
    assert d.risk == "high" and "analysis incomplete" in d.reason and "NC" in d.reason
    # A decision that is high risk anyway keeps its own reason.
    d = decide([LesionCall(1, "HCC", 0.9)], 0.1, problems=["x"])
    assert d.risk == "high" and "analysis incomplete" not in d.reason


def test_triage_score_matches_the_rule() -> None:
    lesions = [LesionCall(1, "HC", 0.04), LesionCall(2, "FNH", 0.09)]
    assert triage_score(lesions) == pytest.approx(0.09)
    for threshold in (0.05, 0.09, 0.0901, 0.5):
        assert (decide(lesions, threshold).risk == "low") == (triage_score(lesions) < threshold)
    assert triage_score([LesionCall(1, "ICC", 0.2)]) == 1.0


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan"), True, "0.2"])
def test_invalid_thresholds(bad: object) -> None:
    with pytest.raises(LiaidsError, match="triage threshold"):
        decide([], bad)  # type: ignore[arg-type]


def test_duplicate_ids_and_unknown_types_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        decide([LesionCall(1, "HC", 0.1), LesionCall(1, "HH", 0.1)], 0.2)
    with pytest.raises(ValueError, match="unknown lesion type"):
        LesionCall(1, "CYST", 0.1)


def test_threshold_from_a_validation_cohort_reaches_the_target_npv() -> None:
    # 100 patients: 60 without malignancy spread over low scores, 40 malignant with high scores, one
    # malignant patient hidden at a low score.
    scores = [0.0] * 30 + [0.01 * n for n in range(1, 31)] + [0.5 + 0.01 * n for n in range(39)] + [0.15]
    truth = [False] * 60 + [True] * 40
    settings = triage_settings_from_validation(scores, truth, target_npv=0.99, cohort="toy")
    low = [s < settings.threshold for s in scores]
    n_low = sum(low)
    bad = sum(1 for is_low, t in zip(low, truth, strict=True) if is_low and t)
    assert (n_low - bad) / n_low >= 0.99
    assert settings.details["target_met"] and settings.details["cohort"] == "toy"
    assert settings.details["n_low_risk"] == n_low
    assert 0.0 < settings.threshold <= 1.0


def test_triage_settings_sources(tmp_path: Path) -> None:
    fallback = load_triage_settings(tmp_path, {})
    assert fallback.source == "fallback" and fallback.threshold == FALLBACK_TRIAGE_THRESHOLD
    user = load_triage_settings(tmp_path, {}, 0.3)
    assert (user.source, user.threshold) == ("user", 0.3)
    written = save_triage_settings(
        tmp_path, TriageSettings(0.27, "x", 0.99, {"cohort": "val"}), cases=["case_a", "case_b"]
    )
    assert json.loads(written.read_text())["threshold"] == 0.27
    assert json.loads(written.read_text())["cases"] == ["case_a", "case_b"]
    from_file = load_triage_settings(tmp_path, {})
    assert (from_file.source, from_file.threshold, from_file.details["cohort"]) == (
        "triage.json",
        0.27,
        "val",
    )
    assert "cases" not in from_file.details  # the case list stays out of every report
    from_config = load_triage_settings(tmp_path, {"triage": {"threshold": 0.4, "target_npv": 0.98}})
    assert (from_config.source, from_config.threshold, from_config.target_npv) == (
        "classifier config",
        0.4,
        0.98,
    )
    (tmp_path / "triage.json").write_text('{"threshold": 7}')
    with pytest.raises(LiaidsError, match="triage threshold") as info:
        load_triage_settings(tmp_path, {})
    assert str(tmp_path / "triage.json") in str(info.value)


def _report_lesion(lesion_id: int, own: dict[str, float], shown: np.ndarray, score: float) -> dict[str, Any]:
    full = {t: own.get(t, 0.0) for t in LESION_TYPES}
    return {
        "id": lesion_id,
        "type": LESION_TYPES[int(np.argmax(shown))],
        "probabilities": dict(zip(LESION_TYPES, shown.tolist(), strict=True)),
        "lesion_probabilities": full,
        "detection_score": score,
    }


def test_calls_at_an_operating_point_take_context_from_the_survivors_only() -> None:
    """A report of every candidate has its context over all of them; the pipeline's is over the survivors."""
    own = [{"HCC": 0.45, "HM": 0.55}, {"HCC": 0.9, "HM": 0.1}, {"HM": 1.0}]
    context = PatientContext(weight=0.5)
    own_rows = np.array([[o.get(t, 0.0) for t in LESION_TYPES] for o in own])
    shown = context.apply(own_rows)  # what the report says, with all three lesions as context
    report = [
        _report_lesion(n + 1, o, shown[n], s)
        for n, (o, s) in enumerate(zip(own, (0.95, 0.97, 0.5), strict=True))
    ]
    assert report[0]["type"] == "HM"

    calls = calls_at_operating_point(report, 0.9, context)
    survivors = context.apply(own_rows[:2])
    assert [c.lesion_id for c in calls] == [1, 2]
    assert (
        [c.lesion_type for c in calls]
        == [LESION_TYPES[int(np.argmax(p))] for p in survivors]
        == ["HCC", "HCC"]
    )
    malignant = [LESION_TYPES.index(t) for t in MALIGNANT_TYPES]
    assert calls[0].malignant_probability == pytest.approx(float(survivors[0, malignant].sum()), abs=1e-6)
    assert calls[1].score == 0.97
    # At threshold 0 the report's own context is reproduced; above every score nothing is left.
    assert [c.lesion_type for c in calls_at_operating_point(report, 0.0, context)] == [
        r["type"] for r in report
    ]
    assert calls_at_operating_point(report, 0.99, context) == []
    # A lesion alone is never reweighed; without lesion_probabilities its probabilities are its own.
    alone = {k: v for k, v in report[0].items() if k != "lesion_probabilities"}
    alone["probabilities"] = report[0]["lesion_probabilities"]
    assert calls_at_operating_point([alone], 0.9, context)[0].lesion_type == "HM"


def test_findings_raise_the_triage_but_never_change_the_diagnosis() -> None:
    """The triage reads candidates below the reporting point (findings); the diagnosis does not."""
    reported = [LesionCall(1, "HC", 0.001, 0.95)]
    alone = decide(reported, 0.01)
    assert alone.risk == "low"
    benign_finding = decide(reported, 0.01, findings=[LesionCall(1, "HH", 0.002, 0.6)])
    assert benign_finding.risk == "low" and benign_finding.finding_categories == {1: "benign"}
    flagged = decide(
        reported, 0.01, findings=[LesionCall(1, "HH", 0.002, 0.6), LesionCall(2, "HM", 0.7, 0.4)]
    )
    assert (flagged.diagnosis, flagged.deciding_lesion, flagged.categories) == ("HC", 1, {1: "benign"})
    assert flagged.risk == "high" and flagged.finding_categories == {1: "benign", 2: "malignant"}
    assert "finding F2" in flagged.reason and "HM" in flagged.reason and "0.40" in flagged.reason
    assert flagged.triage_score == 1.0
    # No lesion reported: still NONE, but an indeterminate finding keeps the patient at high risk.
    nothing = decide([], 0.01, findings=[LesionCall(1, "FNH", 0.05, 0.5)])
    assert (nothing.diagnosis, nothing.malignancy, nothing.risk) == (None, "no lesion", "high")
    assert (
        nothing.reason.startswith("no lesion is reported, but finding F1")
        and "indeterminate" in nothing.reason
    )
    # Already high from a reported lesion: the reason stays the reported lesion's.
    high = decide([LesionCall(1, "ICC", 0.9)], 0.01, findings=[LesionCall(1, "HM", 0.8, 0.5)])
    assert high.reason.startswith("lesion 1") and high.finding_categories == {1: "malignant"}


def test_finding_calls_read_own_probabilities_between_the_two_points() -> None:
    own = [{"HCC": 0.45, "HM": 0.55}, {"HC": 0.99, "HH": 0.01}, {"HM": 1.0}, {"FNH": 1.0}]
    context = PatientContext(weight=0.5)
    shown = context.apply(np.array([[o.get(t, 0.0) for t in LESION_TYPES] for o in own]))
    report = [
        _report_lesion(n + 1, o, shown[n], s)
        for n, (o, s) in enumerate(zip(own, (0.95, 0.7, 0.5, 0.2), strict=True))
    ]
    calls = finding_calls(report, 0.9, 0.4)
    assert [c.lesion_id for c in calls] == [2, 3]  # reported (0.95) and below the point (0.2) left out
    assert [c.lesion_type for c in calls] == ["HC", "HM"]  # own probabilities, no context
    assert calls[0].malignant_probability == pytest.approx(0.0) and calls[1].malignant_probability == 1.0
    assert [c.score for c in calls] == [0.7, 0.5]
    assert finding_calls(report, 0.9, 0.9) == []


def test_triage_detection_point_round_trips_and_is_checked(tmp_path: Path) -> None:
    save_triage_settings(tmp_path, TriageSettings(0.05, "x", 0.99, {}, detection_threshold=0.42))
    loaded = load_triage_settings(tmp_path, {})
    assert (loaded.threshold, loaded.detection_threshold) == (0.05, 0.42)
    assert "detection_threshold" not in TriageSettings(0.05, "x").to_dict()
    assert load_triage_settings(tmp_path, {}, 0.3).detection_threshold is None  # a user threshold alone
    (tmp_path / "triage.json").write_text('{"threshold": 0.05, "detection_threshold": 1.5}')
    with pytest.raises(LiaidsError, match="triage detection threshold") as info:
        load_triage_settings(tmp_path, {})
    assert str(tmp_path / "triage.json") in str(info.value)


def test_triage_detection_point_is_chosen_for_the_npv_with_most_patients_at_low_risk() -> None:
    """Hand-built cohort: one malignant patient is seen only through a finding at 0.5."""

    def lesion(lesion_id: int, winner: str, p: float, score: float) -> dict[str, Any]:
        probabilities = {t: (p if t == winner else (1.0 - p) / 6) for t in LESION_TYPES}
        return {"id": lesion_id, "probabilities": probabilities, "detection_score": score}

    reports = [
        [lesion(1, "HCC", 0.9, 0.95)],  # malignant, reported
        [lesion(1, "HM", 0.9, 0.5)],  # malignant, below the reporting point
        [lesion(1, "HH", 0.99, 0.6)],  # no malignant lesion; a benign-looking finding
        [lesion(1, "HC", 0.99, 0.3)],
    ]
    truth = [True, True, False, False]
    scan = triage_detection_scan(reports, truth, 0.9, PatientContext(weight=0.0))
    rows = {row["triage_detection_threshold"]: row for row in scan}
    assert list(rows) == [0.9, 0.6, 0.5, 0.3]
    assert not rows[0.9]["target_met"] and not rows[0.6]["target_met"]  # patient 2 would be low risk
    assert rows[0.5]["target_met"] and rows[0.5]["n_low_risk"] == 2 and rows[0.5]["npv"] == 1.0
    assert rows[0.3]["n_low_risk"] == 2
    chosen = triage_point_from_validation(scan, 4, cohort="hand")
    assert chosen is not None and chosen.detection_threshold == 0.5  # tie: the higher point
    # The chosen pair, applied as the pipeline does, sends exactly patients 3 and 4 home.
    context = PatientContext(weight=0.0)
    risks = [
        decide(
            calls_at_operating_point(r, 0.9, context),
            chosen.threshold,
            findings=finding_calls(r, 0.9, chosen.detection_threshold),
        ).risk
        for r in reports
    ]
    assert risks == ["high", "high", "low", "low"]
    assert triage_point_from_validation(scan[:2], 4) is None
