"""The evaluation suite: a hand-made cohort with known answers, metrics.json <-> CSV traceability,
report.html, bad inputs (one-line errors, OUTDIR untouched), and one end-to-end run on phantom cases."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from liaids.codes import LESION_TYPES
from liaids.errors import DatasetError, LiaidsError, PredictionError
from liaids.evaluate.cohort import PATIENT_CLASSES
from liaids.evaluate.statistics import binary_auc, proportion_ci
from liaids.evaluate.suite import EvaluationSettings, evaluate
from test_evaluate_cohort import make_dataset, make_report, write_predictions

B1 = (2, 2, 1, 12, 12, 5)
B2 = (20, 20, 2, 30, 30, 6)
B3 = (30, 2, 6, 38, 10, 10)
SMALL = (2, 25, 7, 6, 29, 9)
ALL = ("NC", "ART", "PV")

#: Six patients (see each comment); the expected numbers are worked out by hand in the tests below.
CASES = [
    {  # HCC found and right
        "case_id": "p1",
        "acquisition": {"slice_thickness_mm": 5.0, "mas": 150, "centre": "A"},
        "lesions": [(1, "HCC", B1, 20.0, ALL)],
    },
    {  # two benign lesions found and right; the small one seen only in ART and PV
        "case_id": "p2",
        "acquisition": {"slice_thickness_mm": 5.0, "mas": 150, "centre": "A"},
        "lesions": [(1, "HC", B1, 25.0, ALL), (2, "HH", SMALL, 6.0, ("ART", "PV"))],
    },
    {  # HM found but called HC
        "case_id": "p3",
        "acquisition": {"slice_thickness_mm": 3.0, "mas": 80, "centre": "B"},
        "lesions": [(1, "HM", B2, 15.0, ALL)],
    },
    {  # no lesion, one false positive (HH)
        "case_id": "p4",
        "acquisition": {"slice_thickness_mm": 3.0, "mas": 80, "centre": "B"},
        "lesions": [],
    },
    {  # ICC found (plus a duplicate); small HC missed
        "case_id": "p5",
        "acquisition": {"slice_thickness_mm": 8.0, "mas": 300, "centre": "B"},
        "lesions": [(1, "ICC", B1, 30.0, ALL), (2, "HC", SMALL, 5.0, ALL)],
    },
    {"case_id": "p6", "acquisition": {}, "lesions": []},  # nothing, nothing found
]
REPORTS = {
    "p1": make_report("p1", [(B1, "HCC", 0.9)]),
    "p2": make_report("p2", [(B1, "HC", 0.8), (SMALL, "HH", 0.6)]),
    "p3": make_report("p3", [(B2, "HC", 0.9)]),
    "p4": make_report("p4", [(B3, "HH", 0.4)]),
    "p5": make_report("p5", [(B1, "ICC", 0.9), ((3, 3, 1, 12, 12, 5), "HCC", 0.5)]),
    "p6": make_report("p6", []),
}
SETTINGS = EvaluationSettings(n_resamples=200)


def _reader_csv(path: Path) -> Path:
    truth = {
        "p1": "malignant",
        "p2": "benign",
        "p3": "malignant",
        "p4": "benign",
        "p5": "malignant",
        "p6": "benign",
    }
    calls = {
        ("r1", "without_ai"): ["benign", "benign", "benign", "benign", "malignant", "malignant"],
        ("r1", "with_ai"): ["malignant", "benign", "benign", "benign", "malignant", "benign"],
        ("r2", "without_ai"): ["malignant", "malignant", "malignant", "benign", "benign", "benign"],
        ("r2", "with_ai"): ["malignant", "benign", "malignant", "benign", "malignant", "benign"],
    }
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reader_id", "patient_id", "session", "call", "truth"])
        for (reader, session), values in calls.items():
            for pid, call in zip(truth, values, strict=True):
                w.writerow([reader, pid, session, call, truth[pid]])
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("suite")
    dataset = make_dataset(root / "dataset", CASES)
    predictions = write_predictions(root / "pred", REPORTS)
    reader = _reader_csv(root / "reader.csv")
    out = evaluate(dataset, root / "out", predictions=predictions, reader_csv=reader, settings=SETTINGS)
    return {"root": root, "dataset": dataset, "pred": predictions, "out": out}


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _metrics(out: Path) -> dict[str, Any]:
    return json.loads((out / "metrics.json").read_text())


def _true(value: str) -> bool:
    assert value in ("true", "false"), value
    return value == "true"


# --------------------------------------------------------------------------------------------------
# Known answers
# --------------------------------------------------------------------------------------------------


def test_hand_computed_numbers(run: dict[str, Path]) -> None:
    m = _metrics(run["out"])
    pop = m["lesion_level"]["population"]
    assert (pop["true_lesions"], pop["classified"], pop["missed_not_classified"]) == (6, 5, 1)
    assert (pop["false_positive_predictions"], pop["duplicate_predictions"]) == (1, 1)
    # Lesions: p1 HCC right, p2 HC and HH right, p3 HM called HC, p5 ICC right.
    assert m["lesion_level"]["multiclass"]["accuracy"]["value"] == pytest.approx(4 / 5)
    assert m["lesion_level"]["binary"]["accuracy"]["value"] == pytest.approx(4 / 5)
    assert m["lesion_level"]["binary"]["sensitivity"]["value"] == pytest.approx(2 / 3)
    # Patients: p3 (HM called HC) and p4 (no lesion called HH) wrong.
    pl = m["patient_level"]
    assert (pl["seven_class"]["k"], pl["seven_class"]["n"]) == (4, 6)
    assert (pl["seven_class_patients_with_lesions"]["k"], pl["seven_class_patients_with_lesions"]["n"]) == (
        3,
        4,
    )
    assert pl["binary"]["accuracy"] == pytest.approx(5 / 6)
    # Detection: only p5's 5 mm cyst is missed.
    rec = m["detection"]["recall"]
    assert (rec["all"]["detected"], rec["all"]["lesions"]) == (5, 6)
    assert (rec["<10mm"]["detected"], rec["<10mm"]["lesions"]) == (1, 2)
    assert rec[">=10mm"]["recall"] == 1.0
    assert m["detection"]["false_positive_predictions"] == 1 and m["detection"]["duplicate_predictions"] == 1
    # Triage (threshold 0.3): p3's HM was called a confident HC, the one false negative.
    tr = m["triage"]
    assert (tr["tp"], tr["fp"], tr["fn"], tr["tn"]) == (2, 0, 1, 3)
    assert tr["low_risk_share"]["value"] == pytest.approx(4 / 6) and tr["npv"]["value"] == pytest.approx(
        3 / 4
    )
    lo, hi = proportion_ci(3, 4)
    assert (tr["npv"]["ci_low"], tr["npv"]["ci_high"]) == pytest.approx((lo, hi))
    # Strata: slice thickness bands of Table 2; p6 has no acquisition data.
    st = m["strata"]["slice_thickness"]
    assert list(st) == ["[2.5-5) mm", "[5-7) mm", "[7-10) mm", "unknown"]
    assert st["[5-7) mm"]["lesion_seven_class_accuracy"]["k"] == 3
    assert st["[2.5-5) mm"]["lesion_seven_class_accuracy"]["value"] == 0.0
    assert st["[7-10) mm"]["detection_recall"]["value"] == 0.5
    assert st["unknown"]["lesion_seven_class_accuracy"]["value"] is None  # no lesion: undefined, not 0
    assert list(m["strata"]["centre"]) == ["A", "B", "unknown"]
    assert list(m["strata"]["mas"]) == ["[0-100) mAs", "[100-200) mAs", "[200-500) mAs", "unknown"]
    assert m["tsne"]["skipped"] and m["ablations"]["skipped"]


# --------------------------------------------------------------------------------------------------
# Traceability: every number and figure comes from CSV rows
# --------------------------------------------------------------------------------------------------


def test_metrics_are_recomputed_from_the_csv_files(run: dict[str, Path]) -> None:
    out = run["out"]
    m = _metrics(out)
    lesions = _csv(out / "lesions.csv")
    patients = _csv(out / "patients.csv")
    detections = _csv(out / "detections.csv")
    assert len(lesions) == 6 and len(patients) == 6 and len(detections) == 7

    classified = [r for r in lesions if _true(r["detected"])]
    acc = np.mean([_true(r["correct_seven"]) for r in classified])
    assert m["lesion_level"]["multiclass"]["accuracy"]["value"] == pytest.approx(acc)
    y = np.array([LESION_TYPES.index(r["true_type"]) for r in classified])
    p = np.array([[float(r[f"p_{t}"]) for t in LESION_TYPES] for r in classified])
    cm = np.zeros((7, 7), int)
    np.add.at(cm, (y, p.argmax(axis=1)), 1)
    assert m["lesion_level"]["confusion_matrix"] == cm.tolist()
    assert [r["pred_type"] for r in classified] == [LESION_TYPES[i] for i in p.argmax(axis=1)]
    conf = _csv(out / "confusion_lesion.csv")
    assert [[int(r[t]) for t in LESION_TYPES] for r in conf] == cm.tolist()
    truth_mal = np.array([_true(r["true_malignant"]) for r in classified])
    score = np.array([float(r["malignant_probability"]) for r in classified])
    assert m["lesion_level"]["binary"]["auc"]["value"] == pytest.approx(binary_auc(truth_mal, score))
    roc = [r for r in _csv(out / "roc_points.csv") if r["curve"] == "binary"]
    assert float(roc[0]["auc"]) == pytest.approx(m["lesion_level"]["binary"]["auc"]["value"])
    assert (float(roc[-1]["fpr"]), float(roc[-1]["tpr"])) == (1.0, 1.0)

    assert m["patient_level"]["seven_class"]["k"] == sum(_true(r["correct_seven"]) for r in patients)
    pcm = np.zeros((8, 8), int)
    for r in patients:
        pcm[PATIENT_CLASSES.index(r["true_class"]), PATIENT_CLASSES.index(r["pred_class"])] += 1
    assert m["patient_level"]["seven_class"]["confusion_matrix"] == pcm.tolist()
    pconf = _csv(out / "confusion_patient.csv")
    assert [[int(r[c]) for c in PATIENT_CLASSES] for r in pconf] == pcm.tolist()

    for stratum, sel in (("all", lesions), ("<10mm", [r for r in lesions if r["size_stratum"] == "<10mm"])):
        entry = m["detection"]["recall"][stratum]
        assert entry["detected"] == sum(_true(r["detected"]) for r in sel) and entry["lesions"] == len(sel)
    assert m["detection"]["false_positive_predictions"] == sum(
        r["role"] == "false_positive" for r in detections
    )
    assert m["detection"]["missed"] == sum(r["pred_lesion_id"] == "" for r in lesions)

    # strata.csv rows = groupings of lesions.csv and patients.csv; metrics.json nests the same rows.
    for row in _csv(out / "strata.csv"):
        col = f"{row['stratifier']}_stratum"
        if row["measure"] == "detection_recall":
            sel = [r for r in lesions if r[col] == row["stratum"]]
            k = sum(_true(r["detected"]) for r in sel)
        elif row["measure"] == "lesion_seven_class_accuracy":
            sel = [r for r in lesions if r[col] == row["stratum"] and _true(r["detected"])]
            k = sum(_true(r["correct_seven"]) for r in sel)
        elif row["measure"] == "patient_seven_class_accuracy":
            sel = [r for r in patients if r[col] == row["stratum"]]
            k = sum(_true(r["correct_seven"]) for r in sel)
        else:
            continue
        assert (int(row["k"]), int(row["n"])) == (k, len(sel)), row
        nested = m["strata"][row["stratifier"]][row["stratum"]][row["measure"]]
        assert (nested["k"], nested["n"]) == (k, len(sel))

    high = np.array([r["triage_risk"] == "high" for r in patients])
    truth = np.array([_true(r["true_malignant"]) for r in patients])
    assert m["triage"]["npv"]["k"] == int((~high & ~truth).sum())


def test_every_figure_names_existing_csv_columns_and_is_in_the_page(run: dict[str, Path]) -> None:
    out = run["out"]
    m = _metrics(out)
    ids = {f["id"] for f in m["figures"]}
    assert {"roc_seven_class", "roc_binary", "confusion_lesion", "confusion_patient", "froc", "strata"} <= ids
    assert "reader_study" in ids
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(m["figures"])
    assert "<script" not in html and "http://" not in html and "https://" not in html
    for fig in m["figures"]:
        assert (out / fig["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'id="fig-{fig["id"]}"' in html
        for source in fig["sources"]:
            assert source["csv"] in m["files"] and source["csv"] in html
            header = _csv(out / source["csv"])[0].keys()
            assert set(source["columns"]) <= set(header), (fig["id"], source)
    for name in m["files"]:
        assert (out / name).is_file(), name
    # The page shows metrics.json's numbers.
    assert f"{m['lesion_level']['multiclass']['accuracy']['value']:.3f}" in html
    assert "Not for clinical use" in html or "not for clinical use" in html


def test_reader_study_uses_the_cohort_calls(run: dict[str, Path]) -> None:
    out = run["out"]
    rs = _metrics(out)["reader_study"]
    assert rs["readers"] == ["r1", "r2"] and rs["ai_calls_source"].startswith("cohort predictions (6 of 6")
    ai = {r["patient_id"]: r["call"] for r in _csv(out / "reader_ai_calls.csv")}
    patients = {r["case_id"]: r for r in _csv(out / "patients.csv")}
    assert ai == {c: ("malignant" if _true(r["pred_malignant"]) else "benign") for c, r in patients.items()}
    rows = {(r["reader_id"], r["session"]): r for r in _csv(out / "reader_metrics.csv")}
    assert set(rows) == {
        ("r1", "without_ai"),
        ("r1", "with_ai"),
        ("r2", "without_ai"),
        ("r2", "with_ai"),
        ("LiAIDS", "ai"),
    }
    # LiAIDS's accuracy in the reader study is the patient-level binary accuracy (p3 wrong).
    assert float(rows[("LiAIDS", "ai")]["accuracy"]) == pytest.approx(5 / 6)
    assert float(rows[("r1", "without_ai")]["accuracy"]) == pytest.approx(3 / 6)
    assert len(_csv(out / "reader_non_inferiority.csv")) == 2
    assert [r["reader_id"] for r in _csv(out / "reader_comparison.csv")] == ["r1", "r2", "pooled"]


def test_json_is_strict_and_records_the_settings(run: dict[str, Path]) -> None:
    text = (run["out"] / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    m = json.loads(text)
    assert m["schema"] == "liaids.evaluation" and m["settings"]["n_resamples"] == 200
    assert m["settings"]["match_phase"] == "any" and m["predictions"]["kind"] == "folder"


# --------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------


def test_bad_inputs_fail_with_one_line_and_leave_no_outdir(run: dict[str, Path], tmp_path: Path) -> None:
    fast = EvaluationSettings(n_resamples=0)

    def fails(exc: type[Exception], match: str, **kwargs: Any) -> None:
        out = tmp_path / "out"
        args = {"dataset": run["dataset"], "out_dir": out, "predictions": run["pred"], "settings": fast}
        with pytest.raises(exc, match=match) as err:
            evaluate(**{**args, **kwargs})
        assert "\n" not in str(err.value)
        assert not out.exists() and not list(tmp_path.glob(".out.staging-*"))

    fails(DatasetError, "dataset folder not found", dataset=tmp_path / "nowhere")
    partial = tmp_path / "partial"
    shutil.copytree(run["pred"], partial)
    shutil.rmtree(partial / "p3")
    fails(PredictionError, r"partial/p3/report\.json: file not found", predictions=partial)
    broken = tmp_path / "broken"
    shutil.copytree(run["pred"], broken)
    (broken / "p2" / "report.json").write_text('{"lesions": [')
    fails(PredictionError, r"broken/p2/report\.json: not valid JSON", predictions=broken)
    fails(LiaidsError, "predictions folder not found", predictions=tmp_path / "nope")
    fails(LiaidsError, "reader calls file not found", reader_csv=tmp_path / "nope.csv")
    fails(LiaidsError, "match phase", settings=EvaluationSettings(match_phase="late"))
    fails(LiaidsError, "ablation model folder 'x' not found", ablations={"x": tmp_path / "nope"})


def test_skip_failed_leaves_out_cases_without_a_usable_report(run: dict[str, Path], tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    shutil.copytree(run["pred"], pred)
    shutil.rmtree(pred / "p3")
    (pred / "p2" / "report.json").write_text('{"lesions": [')
    fast = EvaluationSettings(n_resamples=0, tsne=False)
    with pytest.raises(PredictionError, match=r"p2/report\.json: not valid JSON"):
        evaluate(run["dataset"], tmp_path / "strict", predictions=pred, settings=fast)
    assert not (tmp_path / "strict").exists()
    out = evaluate(run["dataset"], tmp_path / "out", predictions=pred, settings=fast, skip_failed=True)
    m = _metrics(out)
    failed = {c["case_id"]: c["error"] for c in m["dataset"]["failed_cases"]}
    assert set(failed) == {"p2", "p3"} and "not valid JSON" in failed["p2"] and "not found" in failed["p3"]
    assert m["dataset"]["cases"] == 6 and m["dataset"]["cases_evaluated"] == 4
    # Left out of every table: the patients, and the lesions of p2 (2) and p3 (1) of the 6 true lesions.
    assert [r["case_id"] for r in _csv(out / "patients.csv")] == ["p1", "p4", "p5", "p6"]
    assert m["detection"]["true_lesions"] == 3 and {r["case_id"] for r in _csv(out / "lesions.csv")} == {
        "p1",
        "p5",
    }
    html = (out / "report.html").read_text()
    assert "2 of 6 cases left out" in html and "not valid JSON" in html
    # Every case failing is an error, not an empty evaluation.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LiaidsError, match="all 6 cases failed"):
        evaluate(run["dataset"], tmp_path / "none", predictions=empty, settings=fast, skip_failed=True)
    assert not (tmp_path / "none").exists()


def test_cli_skip_failed_names_each_left_out_case(run: dict[str, Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    pred = tmp_path / "pred"
    shutil.copytree(run["pred"], pred)
    shutil.rmtree(pred / "p3")
    args = [sys.executable, "-m", "liaids.cli", "evaluate", str(run["dataset"]), "--predictions", str(pred)]
    args += ["--bootstrap", "0", "--no-tsne"]
    strict = subprocess.run([*args, "-o", str(tmp_path / "a")], capture_output=True, text=True, timeout=300)
    assert strict.returncode == 1 and "p3/report.json: file not found" in strict.stderr
    assert not (tmp_path / "a").exists()
    proc = subprocess.run(
        [*args, "-o", str(tmp_path / "b"), "--skip-failed"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "left out p3: " in proc.stderr and "p3/report.json: file not found" in proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "b" / "report.html")


def test_existing_outdir_needs_overwrite(run: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    fast = EvaluationSettings(n_resamples=0, tsne=False)
    with pytest.raises(LiaidsError, match="not empty"):
        evaluate(run["dataset"], out, predictions=run["pred"], settings=fast)
    assert (out / "keep.txt").read_text() == "old"
    evaluate(run["dataset"], out, predictions=run["pred"], settings=fast, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "metrics.json").is_file()
    m = _metrics(out)
    assert m["lesion_level"]["multiclass"]["accuracy"]["ci_low"] is None  # no bootstrap: no interval


# --------------------------------------------------------------------------------------------------
# End to end on phantom cases with stand-in models
# --------------------------------------------------------------------------------------------------


def _stand_in_models(root: Path) -> dict[str, Path]:
    """Untrained detector and classifiers as in tests/test_pipeline_diagnose.py (shipped liver model)."""
    from dataclasses import asdict, replace

    import torch

    from liaids.classification.patches import PATCH_PLANS
    from liaids.codes import CLINICAL_FIELDS
    from liaids.detection.merge import MergeSettings
    from liaids.detection.preprocessing import DetectionPlan
    from liaids.model_store import save_model
    from liaids.networks.lesion_classifier import PROFILES, LesionClassifierNet
    from liaids.networks.lesion_detector import build_detector, profile

    det_cfg = replace(profile("cnn2d", "small"), box_score_threshold=0.0, box_detections=2)
    for name, seed in (("bundle/detector", 0), ("detector_b", 3)):
        torch.manual_seed(seed)
        save_model(
            root / name,
            build_detector(det_cfg).state_dict(),
            {
                "kind": "lesion-detection",
                "profile": "small",
                "network": det_cfg.to_dict(),
                # A coarse grid keeps the test fast; real models use their training plan.
                "plan": DetectionPlan(pixel_mm=4.0, slice_mm=5.0).to_dict(),
                "merge": asdict(MergeSettings(min_score_2d=0.0, min_score_3d=0.0)),
            },
        )
    for name, variant, seed in (("bundle/classifier", "full", 1), ("image_only", "image", 2)):
        torch.manual_seed(seed)
        cfg = PROFILES["small"].with_variant(variant)
        save_model(
            root / name,
            LesionClassifierNet(cfg).state_dict(),
            {
                "kind": "lesion-classification",
                "profile": "small",
                "variant": variant,
                "network": cfg.to_dict(),
                "plan": PATCH_PLANS["small"].to_dict(),
                "labels": list(LESION_TYPES),
                "clinical_fields": list(CLINICAL_FIELDS),
                "triage": {"threshold": 0.3, "target_npv": 0.99},
            },
        )
    return {"bundle": root / "bundle", "image_only": root / "image_only", "detector_b": root / "detector_b"}


@pytest.mark.slow
def test_end_to_end_on_phantom_cases(tmp_path: Path) -> None:
    """diagnose on 2 phantom cases (6 lesions drawn: HC, HH, HCC, small and large), then every section, with
    a classifier and a detector ablation and the t-SNE."""
    from liaids.phantom.cohort import synthesize_dataset

    dataset = synthesize_dataset(tmp_path / "phantom", cases=2, seed=2, profile="qzh")
    # A third case whose PV image is cut short: the pipeline refuses it, --skip-failed leaves it out.
    shutil.copytree(dataset / "qzh_0000", dataset / "qzh_cut")
    image = dataset / "qzh_cut" / "image_PV.nii.gz"
    image.write_bytes(image.read_bytes()[:5000])
    (dataset / "qzh_cut" / "case.json").write_text(
        (dataset / "qzh_cut" / "case.json").read_text().replace('"qzh_0000"', '"qzh_cut"')
    )
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["cases"].append("qzh_cut")
    meta["numCases"] = 3
    (dataset / "dataset.json").write_text(json.dumps(meta))
    models = _stand_in_models(tmp_path / "models")
    out = evaluate(
        dataset,
        tmp_path / "eval",
        weights=models["bundle"],
        ablations={"image_only": models["image_only"], "detector_b": models["detector_b"]},
        settings=EvaluationSettings(n_resamples=50),
        skip_failed=True,
    )
    m = _metrics(out)
    (failed,) = m["dataset"]["failed_cases"]
    assert failed["case_id"] == "qzh_cut" and "image_PV.nii.gz" in failed["error"]
    assert m["dataset"]["cases_evaluated"] == 2 and not (out / "predictions" / "qzh_cut").exists()
    assert (
        m["predictions"]["kind"] == "diagnose"
        and m["predictions"]["models"]["classifier"]["variant"] == "full"
    )
    for case_id in ("qzh_0000", "qzh_0001"):
        assert (out / "predictions" / case_id / "report.json").is_file()
    lesions = _csv(out / "lesions.csv")
    n_true = sum(
        len(json.loads((dataset / c / "case.json").read_text())["lesions"]) for c in ("qzh_0000", "qzh_0001")
    )
    assert len(lesions) == n_true == m["detection"]["true_lesions"]
    assert len(_csv(out / "detections.csv")) == m["detection"]["predicted_lesions"]
    assert m["detection"]["detected"] + m["detection"]["missed"] == n_true
    # Classifier ablation on the true boxes: the reference and the image-only variant, same lesions.
    ab = _csv(out / "ablation_classification.csv")
    assert {r["model"] for r in ab} == {"reference", "image_only"} and len(ab) == 2 * n_true
    assert m["ablations"]["classifier"]["image_only"]["variant"] == "image"
    det = _csv(out / "ablation_detection.csv")
    assert {r["model"] for r in det} == {"reference", "detector_b"} and len(det) == 2 * n_true
    assert set(m["ablations"]["detector"]) == {"reference", "detector_b"}
    assert n_true >= 3
    tsne = _csv(out / "tsne.csv")
    assert len(tsne) == n_true and {r["true_type"] for r in tsne} <= set(LESION_TYPES)
    assert m["tsne"]["feature_dim"] > 0
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(m["figures"])
