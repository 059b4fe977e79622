"""Choose the pipeline's two operating points on validation cases (never on the test cohort).

1. Detection: the lowest detection score a matched lesion needs to be reported, chosen to maximise the
   patient-wise seven-class accuracy (a patient without lesions is class NONE; the most severe lesion
   decides, malignant before benign).
2. Triage: with that detection threshold, the largest malignant-probability threshold whose low-risk
   group reaches NPV >= 0.99 (``liaids.pipeline.decision.triage_settings_from_validation``).
3. With ``--triage-detection``: the triage's own detection point as well. The triage then also reads the
   candidates the report leaves out whose score reaches that point (its *findings*, each called from its
   own probabilities, ``liaids.pipeline.decision.finding_calls``): a patient is low risk only when neither
   a reported lesion nor a finding is malignant or indeterminate. Every point from the reporting point down
   is tried, each with its largest triage threshold reaching NPV >= 0.99; the pair leaving the most
   patients at low risk is kept (ties: the higher point). When no pair reaches the NPV, none is kept.

Input: a dataset of validation cases and the diagnose reports of those cases with *every* candidate kept
(``liaids evaluate VAL -o OUT`` with a detector whose config has no ``operating_point`` writes them to
``OUT/predictions/CASE/report.json``). At each threshold the lesions' types are recomputed with the patient
context over the lesions above it, as the pipeline classifies only those
(``liaids.pipeline.decision.calls_at_operating_point``); the context weight is read from the classifier
folder the reports name (``--classifier`` overrides it).

``--verifier DIR`` re-scores the reports' lesions with the lesion verifier in DIR (``verifier.json``,
``liaids train verifier``) as the pipeline would with it in the detector's folder: from the cases' images,
the runs' liver masks (``PRED/CASE/liver_{phase}.nii.gz``) and each lesion's boxes; the scan then runs on
the verified scores. The verifier must have been fitted on other cases than the ones scanned, or on a
subset whose overlap the result then records.

``--reclassify`` (with ``--classifier DIR``) classifies the reports' lesions again with that classifier,
from the cases' images, the cases' clinical fields and each lesion's three boxes, as the pipeline would
with it: a new classifier's operating points without running the detector again. Each lesion's own
probabilities (``lesion_probabilities``) are replaced; the context is applied at each threshold as above.

Run:
  .venv/bin/python benchmarks/operating_points.py --data VAL --predictions OUT/predictions \
      [--classifier DIR [--reclassify]] [--verifier DIR] [--write-detector DIR] [--write-classifier DIR] \
      [--out benchmarks/results/operating_points.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _report import emit

from liaids.classification.context import PatientContext, load_patient_context
from liaids.classification.verification import VERIFIED_SCORE
from liaids.codes import LESION_TYPES, MALIGNANT_TYPES
from liaids.dataset import Dataset
from liaids.pipeline.decision import (
    calls_at_operating_point,
    decide,
    triage_detection_scan,
    triage_point_from_validation,
    triage_score,
    triage_settings_from_validation,
)


def true_patient_type(lesions: list) -> str:
    """Most severe true lesion: malignant before benign, then the larger one; NONE without lesions."""
    if not lesions:
        return "NONE"
    worst = max(lesions, key=lambda les: (les.lesion_type in MALIGNANT_TYPES, les.diameter_mm))
    return worst.lesion_type


def predicted(
    report: dict, detection_threshold: float, triage_threshold: float, context: PatientContext
) -> tuple[str, float]:
    calls = calls_at_operating_point(report["lesions"], detection_threshold, context)
    decision = decide(calls, triage_threshold)
    return (decision.diagnosis or "NONE"), triage_score(calls)


def rerun_stages(
    ds: Dataset,
    predictions: Path,
    reports: list[dict],
    classifier_folder: Path | None,
    verifier_folder: Path | None,
) -> tuple[dict | None, dict | None]:
    """Classify the reports' lesions again and/or re-score them with a verifier, reading each case once.

    With a classifier, each lesion's own type probabilities (``lesion_probabilities``) are replaced by
    that classifier's; with a verifier, each lesion's ``detection_score`` by the verified score.

    Returns:
        The classifier's and the verifier's records (None for a stage not re-run).
    """
    from liaids.classification.matching import MatchedLesion
    from liaids.classification.predictor import LesionClassifier
    from liaids.classification.verification import VERIFIER_FILE, LesionVerifier
    from liaids.model_store import sha256
    from liaids.train.verifier import run_lesion_features

    classifier = LesionClassifier.from_weights(classifier_folder) if classifier_folder else None
    verifier = LesionVerifier.load(verifier_folder) if verifier_folder else None
    for case_id, report in zip(ds.case_ids, reports, strict=True):
        lesions = report["lesions"]
        if not lesions or (classifier is None and verifier is None):
            continue
        case = ds.load_case(case_id)
        if classifier is not None:
            matched = [MatchedLesion.from_report_lesion(les) for les in lesions]
            answers = classifier.classify(case.study, matched, case.info.clinical)
            for les, answer in zip(lesions, answers, strict=True):
                les["lesion_probabilities"] = answer.lesion_probabilities or answer.probabilities
        if verifier is not None:
            features = run_lesion_features(case.study.phases, predictions / case_id, lesions)
            for les, row in zip(lesions, features, strict=True):
                les["detection_score"] = verifier.rescore(float(les["detection_score"]), row)
    reclassified = verification = None
    if classifier_folder is not None:
        reclassified = {"folder": str(classifier_folder), "sha256": sha256(classifier_folder / "model.pt")}
    if verifier is not None and verifier_folder is not None:
        fitted_on = set((verifier.source or {}).get("cases", []))
        verification = {
            "file": str(verifier_folder / VERIFIER_FILE),
            "fitted_on_scanned_cases": sorted(fitted_on & set(ds.case_ids)),
        }
    return reclassified, verification


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--predictions", type=Path, required=True)
    ap.add_argument("--classifier", type=Path, default=None, help="default: the one the reports name")
    ap.add_argument("--reclassify", action="store_true", help="classify the lesions again with --classifier")
    ap.add_argument("--verifier", type=Path, default=None, help="folder with verifier.json to re-score with")
    ap.add_argument(
        "--triage-detection", action="store_true", help="choose the triage's own detection point too"
    )
    ap.add_argument("--write-detector", type=Path, default=None)
    ap.add_argument("--write-classifier", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    ds = Dataset(a.data)
    truths, reports = [], []
    for case_id in ds.case_ids:
        truths.append(true_patient_type(ds.read_info(case_id).lesions))
        reports.append(json.loads((a.predictions / case_id / "report.json").read_text()))
    classifier = a.classifier
    if classifier is None:
        named = {r["models"]["classifier"]["folder"] for r in reports}
        if len(named) != 1:
            raise SystemExit(f"the reports name {len(named)} classifier folders; pass --classifier")
        classifier = Path(named.pop())
    context = load_patient_context(classifier)
    if a.reclassify and a.classifier is None:
        raise SystemExit("--reclassify needs --classifier")
    reclassified, verification = rerun_stages(
        ds, a.predictions, reports, classifier if a.reclassify else None, a.verifier
    )
    scores = sorted({les["detection_score"] for r in reports for les in r["lesions"]})
    candidates = [0.0, *scores]
    table = []
    for t in candidates:
        calls = [predicted(r, t, 1.0, context)[0] for r in reports]
        accuracy = float(np.mean([c == y for c, y in zip(calls, truths, strict=True)]))
        binary = float(
            np.mean(
                [(c in MALIGNANT_TYPES) == (y in MALIGNANT_TYPES) for c, y in zip(calls, truths, strict=True)]
            )
        )
        table.append(
            {"detection_threshold": t, "patient_accuracy": accuracy, "patient_binary_accuracy": binary}
        )
    best = max(
        table,
        key=lambda row: (
            row["patient_accuracy"],
            row["patient_binary_accuracy"],
            -row["detection_threshold"],
        ),
    )
    t_det = best["detection_threshold"]
    triage_scores = [predicted(r, t_det, 1.0, context)[1] for r in reports]
    truth_malignant = [y in MALIGNANT_TYPES for y in truths]
    triage = triage_settings_from_validation(triage_scores, truth_malignant, cohort=str(a.data))
    triage_scan = None
    if a.triage_detection:
        triage_scan = triage_detection_scan([r["lesions"] for r in reports], truth_malignant, t_det, context)
        chosen = triage_point_from_validation(triage_scan, len(truths), cohort=str(a.data))
        if chosen is not None:
            triage = chosen
    result = {
        "data": str(a.data),
        "patients": len(truths),
        "true_types": {t: truths.count(t) for t in (*LESION_TYPES, "NONE")},
        "classifier": str(classifier),
        "patient_context": context.to_dict(),
        "reclassified_with": reclassified,
        "verifier": verification,
        "detection_operating_point": best,
        "triage": triage.to_dict(),
        "scan": table,
        "triage_detection_scan": triage_scan,
    }
    if a.write_detector:
        path = a.write_detector / "config.json"
        config = json.loads(path.read_text())
        config["operating_point"] = {
            "score": t_det,
            "rule": "maximise patient-wise seven-class accuracy on validation cases",
            "chosen_on": str(a.data),
            "cases": list(ds.case_ids),
            "patient_accuracy": best["patient_accuracy"],
            "applies_to": VERIFIED_SCORE if verification else "detector score",
        }
        path.write_text(json.dumps(config, indent=1) + "\n")
        if verification:  # the operating point holds for verified scores only: ship the verifier with it
            import shutil

            shutil.copyfile(verification["file"], a.write_detector / Path(verification["file"]).name)
    if a.write_classifier:
        from liaids.pipeline.diagnose import save_triage_settings

        save_triage_settings(a.write_classifier, triage, cases=ds.case_ids)
    emit(result, a.out, {k: v for k, v in result.items() if k not in ("scan", "triage_detection_scan")})


if __name__ == "__main__":
    main()
