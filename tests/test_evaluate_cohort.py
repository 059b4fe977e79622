"""Cohort tables of the evaluation: strata, report.json reading, matching (against ``match_scan``), unmatched
counting and hand-computed patient-level outcomes.

The helpers :func:`make_dataset` and :func:`make_report` build small hand-made cohorts (masks of a few
thousand voxels, no images) and are reused by ``test_evaluate_suite.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from liaids.codes import CLINICAL_FIELDS, LESION_TYPES, MALIGNANT_TYPES, PHASES
from liaids.dataset import Dataset
from liaids.evaluate.cohort import (
    NO_LESION,
    CasePrediction,
    CaseTruth,
    PredictedLesion,
    PredictionError,
    TrueLesion,
    band_label,
    build_tables,
    derived_call,
    match_case,
    parse_report,
    patient_truth,
    read_predictions,
    read_report,
    read_truth,
    stratum_of,
    stratum_order,
)
from liaids.evaluate.detection import match_scan
from liaids.io import write_nifti
from liaids.types import Volume

MASK_SHAPE_KJI = (12, 40, 40)
SPACING = (1.0, 1.0, 2.5)
CLINICAL = {"age": 60, "sex": "M", **dict.fromkeys(CLINICAL_FIELDS[2:], False)}


# --------------------------------------------------------------------------------------------------
# Builders shared with test_evaluate_suite.py
# --------------------------------------------------------------------------------------------------


def make_dataset(root: Path, cases: Sequence[Mapping[str, Any]]) -> Path:
    """A dataset of case.json files and lesion masks only (what the evaluation reads).

    Each case: ``case_id``, ``acquisition`` and ``lesions`` = list of ``(id, type, bbox_ijk, diameter_mm,
    phases)``; the lesion is painted as its box in the listed phases.
    """
    root.mkdir(parents=True, exist_ok=True)
    meta = {"name": "hand-made", "phases": list(PHASES), "cases": [c["case_id"] for c in cases]}
    (root / "dataset.json").write_text(json.dumps(meta))
    for case in cases:
        folder = root / case["case_id"]
        folder.mkdir()
        masks = {p: np.zeros(MASK_SHAPE_KJI, np.uint16) for p in PHASES}
        lesions = []
        for lid, ltype, (i0, j0, k0, i1, j1, k1), diameter, phases in case["lesions"]:
            for p in phases:
                masks[p][k0:k1, j0:j1, i0:i1] = lid
            lesions.append({"id": lid, "type": ltype, "diameter_mm": diameter})
        for p in PHASES:
            write_nifti(Volume(masks[p], SPACING), folder / f"lesions_{p}.nii.gz")
        info = {
            "case_id": case["case_id"],
            "clinical": CLINICAL,
            "lesions": lesions,
            "acquisition": case.get("acquisition", {}),
        }
        (folder / "case.json").write_text(json.dumps(info))
    return root


def probs_for(lesion_type: str, confidence: float = 0.7) -> dict[str, float]:
    """Seven probabilities with ``confidence`` on one type and the rest spread evenly."""
    rest = (1.0 - confidence) / (len(LESION_TYPES) - 1)
    return {t: round(confidence if t == lesion_type else rest, 4) for t in LESION_TYPES}


def make_report(
    case_id: str,
    lesions: Sequence[tuple[Any, Any, float]],
    threshold: float = 0.3,
) -> dict[str, Any]:
    """A report.json with the fields the evaluation reads; diagnosis and triage follow the schema's rules
    (re-implemented here: a malignant type beats an indeterminate lesion beats a benign one, then the higher
    malignant probability; low risk when every lesion is benign with malignant probability below the
    threshold).

    Args:
        case_id: the case.
        lesions: ``(bbox_ijk or phase -> bbox_ijk, type code or probabilities, detection score)`` each.
        threshold: triage threshold.
    """
    entries, ranked = [], []
    for n, (box, kind, score) in enumerate(lesions, start=1):
        probs = probs_for(kind) if isinstance(kind, str) else dict(kind)
        ltype = max(LESION_TYPES, key=lambda t: probs[t])
        malignant = round(sum(probs[t] for t in MALIGNANT_TYPES), 4)
        boxes = box if isinstance(box, Mapping) else dict.fromkeys(PHASES, box)
        entries.append(
            {
                "id": n,
                "type": ltype,
                "probabilities": probs,
                "malignant_probability": malignant,
                "detection_score": score,
                "diameter_mm": 10.0,
                "found_in": list(boxes),
                "phases": {p: {"bbox_ijk": list(b)} for p, b in boxes.items()},
            }
        )
        category = (
            "malignant"
            if ltype in MALIGNANT_TYPES
            else "benign"
            if malignant < threshold
            else "indeterminate"
        )
        severity = ("benign", "indeterminate", "malignant").index(category)
        ranked.append((severity, malignant, score, -n, ltype, category))
    worst = max(ranked, default=None)
    score = max((1.0 if r[5] == "malignant" else r[1] for r in ranked), default=0.0)
    return {
        "schema": "liaids.diagnosis",
        "study": {"case_id": case_id},
        "phases": {p: {"shape_ijk": list(reversed(MASK_SHAPE_KJI))} for p in PHASES},
        "lesions": entries,
        "diagnosis": {
            "diagnosis": worst[4] if worst else None,
            "malignancy": worst[5] if worst else "no lesion",
        },
        "triage": {"risk": "low" if score < threshold else "high", "score": score, "threshold": threshold},
    }


def write_predictions(folder: Path, reports: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``folder/CASE_ID/report.json`` for each report."""
    for case_id, report in reports.items():
        (folder / case_id).mkdir(parents=True)
        (folder / case_id / "report.json").write_text(json.dumps(report))
    return folder


def truth(case_id: str, lesions: Sequence[tuple[int, str, Sequence[int], float]], **acq: Any) -> CaseTruth:
    """In-memory ground truth, every lesion visible in every phase with the same box."""
    return CaseTruth(
        case_id,
        tuple(
            TrueLesion(lid, t, d, "case.json", dict.fromkeys(PHASES, tuple(b))) for lid, t, b, d in lesions
        ),
        dict(acq),
    )


# --------------------------------------------------------------------------------------------------
# Strata
# --------------------------------------------------------------------------------------------------


def test_slice_thickness_and_mas_bands_follow_table_2() -> None:
    thickness = {
        2.4: "<2.5 mm",
        2.5: "[2.5-5) mm",
        4.99: "[2.5-5) mm",
        5: "[5-7) mm",
        6.9: "[5-7) mm",
        7.0: "[7-10) mm",
        10.0: ">=10 mm",
        None: "unknown",
        "5": "unknown",
        math.nan: "unknown",
        True: "unknown",
    }
    for value, label in thickness.items():
        assert stratum_of("slice_thickness", {"slice_thickness_mm": value}) == label, value
    mas = {
        0: "[0-100) mAs",
        99.9: "[0-100) mAs",
        100: "[100-200) mAs",
        200: "[200-500) mAs",
        500: ">=500 mAs",
    }
    for value, label in mas.items():
        assert stratum_of("mas", {"mas": value}) == label, value
    assert band_label(-1.0, ((0.0, 100.0),), " mAs") == "<0 mAs"
    assert stratum_of("mas", {}) == "unknown"
    assert stratum_of("centre", {"centre": " qzh "}) == "qzh"
    assert stratum_of("centre", {"centre": ""}) == "unknown"
    order = stratum_order("slice_thickness", ["unknown", "[7-10) mm", "<2.5 mm", "[5-7) mm", "[5-7) mm"])
    assert order == ["<2.5 mm", "[5-7) mm", "[7-10) mm", "unknown"]
    assert stratum_order("centre", ["zzh", "unknown", "nbh"]) == ["nbh", "zzh", "unknown"]


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def test_read_truth_boxes_phases_and_diameter(tmp_path: Path) -> None:
    ds = Dataset(
        make_dataset(
            tmp_path / "ds",
            [
                {
                    "case_id": "c1",
                    "acquisition": {"slice_thickness_mm": 5.0},
                    "lesions": [
                        (1, "HCC", (2, 3, 1, 12, 9, 4), 14.0, ("ART", "PV")),
                        (2, "HC", (20, 20, 5, 26, 30, 7), None, PHASES),
                    ],
                }
            ],
        )
    )
    t = read_truth(ds, "c1")
    assert [g.lesion_id for g in t.lesions] == [1, 2]
    first, second = t.lesions
    assert first.boxes == {"NC": None, "ART": (2, 3, 1, 12, 9, 4), "PV": (2, 3, 1, 12, 9, 4)}
    assert first.visible_in == ("ART", "PV") and first.malignant and first.diameter_source == "case.json"
    # No diameter in case.json: the longer in-plane side of the mask box (10 voxels of 1 mm).
    assert second.diameter_mm == pytest.approx(10.0) and second.diameter_source == "mask box"
    assert t.shapes == {p: (40, 40, 12) for p in PHASES}
    assert t.acquisition == {"slice_thickness_mm": 5.0}


def test_read_report_accepts_the_schema_and_names_the_file_on_errors(tmp_path: Path) -> None:
    good = make_report("c1", [((1, 1, 1, 5, 5, 3), "HM", 0.8), ((10, 10, 2, 14, 15, 4), "HC", 0.4)])
    pred = parse_report(good, "c1")
    assert pred.case_id == "c1" and [les.lesion_id for les in pred.lesions] == [1, 2]
    assert pred.diagnosis == "HM" and pred.triage_risk == "high"
    assert pred.lesions[0].boxes["PV"] == (1, 1, 1, 5, 5, 3)
    assert derived_call(pred.lesions[0]) == ("HM", pytest.approx(0.7 + 2 * 0.05))

    def broken(mutate: Any) -> dict[str, Any]:
        data = json.loads(json.dumps(good))
        mutate(data)
        return data

    cases = {
        "not json": "{",
        "wrong case": broken(lambda d: d["study"].update(case_id="c2")),
        "no probabilities": broken(lambda d: d["lesions"][0].pop("probabilities")),
        "bad box": broken(lambda d: d["lesions"][1]["phases"]["NC"].update(bbox_ijk=[1, 2, 3])),
        "empty box": broken(lambda d: d["lesions"][1]["phases"]["NC"].update(bbox_ijk=[5, 5, 5, 5, 9, 9])),
        "nan score": broken(lambda d: d["lesions"][0].update(detection_score="high")),
        "no triage": broken(lambda d: d.pop("triage")),
        "unknown type": broken(lambda d: d["diagnosis"].update(diagnosis="XYZ")),
        "repeated ids": broken(lambda d: d["lesions"][1].update(id=1)),
    }
    for name, data in cases.items():
        path = tmp_path / name.replace(" ", "_") / "report.json"
        path.parent.mkdir()
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        with pytest.raises(PredictionError) as err:
            read_report(path, "c1")
        message = str(err.value)
        assert str(path) in message and "\n" not in message, name

    folder = write_predictions(tmp_path / "pred", {"c1": good})
    assert list(read_predictions(folder, ["c1"])) == ["c1"]
    with pytest.raises(PredictionError, match=r"pred/c9/report\.json: file not found"):
        read_predictions(folder, ["c1", "c9"])
    with pytest.raises(PredictionError, match="predictions folder not found"):
        read_predictions(tmp_path / "nowhere", ["c1"])


# --------------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------------


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    lo = rng.integers(0, 30, (n, 3))
    return np.c_[lo, lo + rng.integers(2, 12, (n, 3))]


def test_single_phase_matching_equals_match_scan() -> None:
    """Where every lesion is visible in the reference phase, match_case is match_scan on that phase."""
    rng = np.random.default_rng(3)
    for scan in range(40):
        gt = _random_boxes(rng, int(rng.integers(0, 5)))
        near = gt[: int(rng.integers(0, len(gt) + 1))]
        near = near + rng.integers(-2, 3, near.shape)  # jittered copies: most of them hits
        pred = np.r_[near, _random_boxes(rng, int(rng.integers(0, 4)))].reshape(-1, 6)
        pred = np.clip(pred, 0, None)
        pred[:, 3:] = np.maximum(pred[:, 3:], pred[:, :3] + 1)
        scores = np.round(rng.uniform(0, 1, len(pred)), 2)
        diam = rng.uniform(3, 30, len(gt))
        other = {p: (0, 0, 0, 1, 1, 1) for p in ("NC", "ART")}  # far away in the other phases
        t = CaseTruth(
            f"s{scan}",
            tuple(
                TrueLesion(j + 1, "HC", float(d), "case.json", {**other, "PV": tuple(int(v) for v in b)})
                for j, (b, d) in enumerate(zip(gt, diam, strict=True))
            ),
        )
        pr = CasePrediction(
            f"s{scan}",
            tuple(
                PredictedLesion(i + 1, float(s), {"PV": tuple(int(v) for v in b)})
                for i, (b, s) in enumerate(zip(pred, scores, strict=True))
            ),
        )
        ours = match_case(t, pr, match_phase="PV", score_threshold=0.3).scan
        ref = match_scan(f"s{scan}", pred, scores, gt, diam, score_threshold=0.3)
        assert _same(ours, ref), scan


def _same(a: Any, b: Any) -> bool:
    def norm(records: Any) -> list[tuple[Any, ...]]:
        return [
            tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in vars(r).values())
            for r in records
        ]

    return norm(a.lesions) == norm(b.lesions) and norm(a.detections) == norm(b.detections)


def test_hits_are_judged_in_any_phase_or_the_reference_phase() -> None:
    box = (10, 10, 2, 20, 20, 6)
    far = (30, 30, 8, 36, 36, 11)
    # Lesion 1 is visible in ART and PV; the prediction overlaps it only in ART.
    # Lesion 2 is visible only in NC; the prediction overlaps it there.
    t = CaseTruth(
        "c",
        (
            TrueLesion(1, "HCC", 12.0, "case.json", {"NC": None, "ART": box, "PV": box}),
            TrueLesion(2, "HC", 5.0, "case.json", {"NC": far, "ART": None, "PV": None}),
        ),
    )
    pr = CasePrediction(
        "c",
        (
            PredictedLesion(1, 0.9, {"NC": (0, 0, 0, 2, 2, 2), "ART": box, "PV": (0, 0, 0, 3, 3, 3)}),
            PredictedLesion(2, 0.6, {"NC": far, "ART": (0, 0, 0, 2, 2, 2), "PV": (0, 0, 0, 2, 2, 2)}),
        ),
    )
    any_phase = match_case(t, pr)
    assert [r.detected for r in any_phase.scan.lesions] == [True, True]
    assert any_phase.lesion_phase == ("ART", "NC")
    pv = match_case(t, pr, match_phase="PV")
    # Lesion 1 is judged in PV only (missed there); lesion 2, not visible in PV, in the phases showing it.
    assert [r.detected for r in pv.scan.lesions] == [False, True]
    assert [d.outcome for d in pv.scan.detections] == ["FP", "TP"]
    with pytest.raises(Exception, match="unknown match phase"):
        match_case(t, pr, match_phase="late")


def test_missed_lesions_false_positives_and_duplicates_are_counted() -> None:
    t = truth(
        "c",
        [
            (1, "HCC", (2, 2, 1, 12, 12, 5), 20.0),
            (2, "HC", (20, 20, 1, 24, 24, 3), 8.0),
            (3, "HH", (30, 2, 6, 38, 10, 10), 15.0),
        ],
    )
    pr = parse_report(
        make_report(
            "c",
            [
                ((2, 2, 1, 12, 12, 5), "HCC", 0.9),  # classifies lesion 1
                ((3, 3, 1, 12, 12, 5), "HM", 0.5),  # hits lesion 1 too: duplicate
                ((20, 30, 8, 26, 36, 11), "HH", 0.7),  # hits nothing: false positive
                ((30, 2, 6, 38, 10, 10), "HH", 0.1),  # would hit lesion 3, but is below the threshold
            ],
        ),
        "c",
    )
    tables = build_tables({"c": t}, {"c": pr}, score_threshold=0.2)
    lesions = {r["lesion_id"]: r for r in tables.lesions}
    assert [lesions[i]["detected"] for i in (1, 2, 3)] == [True, False, False]
    assert lesions[1]["pred_lesion_id"] == 1 and lesions[1]["n_hitting_predictions"] == 2
    assert lesions[1]["correct_seven"] is True and lesions[1]["size_stratum"] == ">=10mm"
    assert lesions[2]["pred_type"] is None and lesions[2]["size_stratum"] == "<10mm"
    assert lesions[3]["n_hitting_predictions"] == 0  # the hit below the threshold does not count
    assert [r["role"] for r in tables.detections] == [
        "classifies",
        "duplicate",
        "false_positive",
        "below_threshold",
    ]
    assert [r["outcome"] for r in tables.detections] == ["TP", "TP", "FP", "below_threshold"]
    assert tables.detections[0]["classifies"] == "1" and tables.detections[1]["matched_lesion_id"] == 1
    (patient,) = tables.patients
    counts = {k: patient[k] for k in ("n_detected", "n_missed", "n_false_positives", "n_duplicates")}
    assert counts == {"n_detected": 1, "n_missed": 2, "n_false_positives": 1, "n_duplicates": 1}
    assert patient["n_below_threshold"] == 1 and patient["n_pred_lesions"] == 4


# --------------------------------------------------------------------------------------------------
# Patient level
# --------------------------------------------------------------------------------------------------


def test_patient_truth_most_severe_lesion() -> None:
    def les(lid: int, t: str, d: float) -> TrueLesion:
        return TrueLesion(lid, t, d, "case.json", dict.fromkeys(PHASES, (0, 0, 0, 2, 2, 2)))

    assert patient_truth([]) == (NO_LESION, None)
    assert patient_truth([les(1, "HC", 40.0), les(2, "HM", 6.0)]) == ("HM", 2)  # malignant first
    assert patient_truth([les(1, "HH", 12.0), les(2, "HC", 25.0)]) == ("HC", 2)  # then the larger
    assert patient_truth([les(3, "ICC", 20.0), les(2, "HCC", 20.0)]) == ("HCC", 2)  # then the lower id


def test_patient_level_rows_hand_computed() -> None:
    """Four patients: no lesion (right), HM+HC (right), HH+HC called HH (wrong type, right binary),
    HCC missed entirely (wrong). Seven-class 2/4, binary 3/4, with lesions 1/3, any true type 3/4."""
    b1, b2 = (2, 2, 1, 12, 12, 5), (20, 20, 2, 30, 30, 6)
    truths = {
        "a": truth("a", [], slice_thickness_mm=5.0, mas=150, centre="x"),
        "b": truth(
            "b", [(1, "HC", b1, 30.0), (2, "HM", b2, 10.0)], slice_thickness_mm=5.0, mas=150, centre="x"
        ),
        "c": truth(
            "c", [(1, "HH", b1, 12.0), (2, "HC", b2, 25.0)], slice_thickness_mm=3.0, mas=80, centre="y"
        ),
        "d": truth("d", [(1, "HCC", b1, 15.0)], slice_thickness_mm=8.0, mas=300, centre="y"),
    }
    preds = {
        "a": parse_report(make_report("a", []), "a"),
        "b": parse_report(make_report("b", [(b1, "HC", 0.9), (b2, "HM", 0.8)]), "b"),
        "c": parse_report(make_report("c", [(b1, "HH", 0.9), (b2, "HC", 0.8)]), "c"),
        "d": parse_report(make_report("d", []), "d"),
    }
    tables = build_tables(truths, preds)
    rows = {r["case_id"]: r for r in tables.patients}
    assert [rows[c]["true_class"] for c in "abcd"] == ["NONE", "HM", "HC", "HCC"]
    assert [rows[c]["pred_class"] for c in "abcd"] == ["NONE", "HM", "HH", "NONE"]
    assert [rows[c]["correct_seven"] for c in "abcd"] == [True, True, False, False]
    assert [rows[c]["correct_binary"] for c in "abcd"] == [True, True, True, False]
    assert [rows[c]["pred_class_in_true_types"] for c in "abcd"] == [True, True, True, False]
    assert rows["b"]["true_types"] == "HM|HC" and rows["a"]["true_types"] is None
    assert [rows[c]["slice_thickness_stratum"] for c in "abcd"] == [
        "[5-7) mm",
        "[5-7) mm",
        "[2.5-5) mm",
        "[7-10) mm",
    ]
    assert [rows[c]["mas_stratum"] for c in "abcd"] == [
        "[100-200) mAs",
        "[100-200) mAs",
        "[0-100) mAs",
        "[200-500) mAs",
    ]

    from liaids.evaluate.suite import EvaluationSettings, patient_level_metrics

    m = patient_level_metrics(tables, EvaluationSettings(n_resamples=0))
    assert (m["seven_class"]["k"], m["seven_class"]["n"]) == (2, 4)
    assert m["seven_class_patients_with_lesions"]["value"] == pytest.approx(1 / 3)
    assert m["seven_class_any_true_type"]["value"] == pytest.approx(3 / 4)
    assert m["binary"]["accuracy"] == pytest.approx(3 / 4)
    assert m["binary"]["malignant_sensitivity"] == pytest.approx(1 / 2)  # b found, d missed
    cm = np.array(m["seven_class"]["confusion_matrix"])
    assert cm.sum() == 4 and cm[0, 0] == 1 and cm[1 + LESION_TYPES.index("HCC"), 0] == 1
