"""Fitting the lesion verifier (``liaids train verifier``) on a pipeline's output for validation cases.

Input: a dataset of cases the detector never trained on, and the diagnose runs of those cases with every
candidate kept (``liaids evaluate DATA -o OUT --weights DETECTOR`` with a detector whose config has no
``operating_point`` writes them to ``OUT/predictions/CASE/``: ``report.json`` and ``liver_{phase}``).
Each reported lesion the detector scored at least ``min_score`` becomes one example: its features
(:func:`liaids.classification.verification.lesion_features`, read from the case's images, the run's liver
masks and the lesion's per-phase boxes) and whether it hits a true lesion by the paper's rule
(:func:`liaids.evaluate.cohort.match_case`). The fitted model goes to ``OUT/verifier.json``, with the cases
and counts it learnt from; copy it into the detector's folder to use it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from liaids.classification.matching import MatchedLesion
from liaids.classification.verification import (
    FEATURES,
    LesionVerifier,
    fit_verifier,
    lesion_features,
    study_liver_hu,
)
from liaids.codes import PHASES
from liaids.dataset import Dataset
from liaids.errors import LiaidsError
from liaids.evaluate.cohort import match_case, parse_report, read_truth
from liaids.io import read_nifti
from liaids.types import Volume

Progress = Callable[[str, float], None]


def run_lesion_features(study: Mapping[str, Volume], run_folder: Path, lesions: Sequence[dict]) -> np.ndarray:
    """Features of a run's report lesions, from the case's images and the run's liver masks.

    Args:
        study: the case's phase volumes (``Dataset.load_case(case_id).study.phases``), read by the
            caller so that a tool re-running several stages reads them once.
        run_folder: the run's folder of that case, holding ``liver_{phase}.nii.gz``.
        lesions: ``report.json`` lesions of that run.

    Returns:
        ``(len(lesions), len(FEATURES))``.
    """
    livers = {p: read_nifti(run_folder / f"liver_{p}.nii.gz").array for p in PHASES}
    liver_hu = study_liver_hu(study, livers)
    rows = [
        lesion_features(study, livers, MatchedLesion.from_report_lesion(les), liver_hu) for les in lesions
    ]
    return np.asarray(rows, float).reshape(-1, len(FEATURES))


def verifier_examples(
    dataset: Dataset,
    predictions: Path,
    case_ids: Sequence[str],
    min_score: float,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of every reported lesion scoring at least ``min_score``.

    Args:
        dataset: the cases with their lesion masks.
        predictions: folder of ``CASE/report.json`` and ``CASE/liver_{phase}.nii.gz``.
        case_ids: the cases to read.
        min_score: lesions the detector scores below this are skipped.
        progress: called with a message and the fraction done.

    Returns:
        ``(features (N, len(FEATURES)), is_lesion (N,))``.
    """
    rows, labels = [], []
    for n, case_id in enumerate(case_ids):
        if progress:
            progress(f"verifier examples: {case_id}", n / max(len(case_ids), 1))
        folder = predictions / case_id
        report = json.loads((folder / "report.json").read_text())
        detector = report.get("models", {}).get("detector", {})
        if detector.get("verifier"):
            raise LiaidsError("run made with a lesion verifier: fit on runs of the detector alone", folder)
        if float(detector.get("operating_score") or 0.0) > min_score:
            raise LiaidsError(
                f"run kept only lesions from {detector['operating_score']}, above min_score {min_score}: "
                "fit on runs that keep every candidate",
                folder,
            )
        prediction = parse_report(report, case_id, folder / "report.json")
        match = match_case(read_truth(dataset, case_id), prediction)
        hit = [rec.hit for rec in match.scan.detections]
        chosen = [i for i, les in enumerate(report["lesions"]) if les["detection_score"] >= min_score]
        if not chosen:
            continue
        kept = [report["lesions"][i] for i in chosen]
        rows.append(run_lesion_features(dataset.load_case(case_id).study.phases, folder, kept))
        labels += [hit[i] for i in chosen]
    if not rows:
        return np.zeros((0, len(FEATURES))), np.zeros(0, bool)
    return np.vstack(rows), np.asarray(labels, bool)


def train_verifier(
    data: str | Path | Sequence[str | Path],
    predictions: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    min_score: float = 0.8,
    l2: float = 1.0,
    case_ids: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> LesionVerifier:
    """Fit the verifier and write ``OUT/verifier.json``.

    Args:
        data: dataset folder, or several (cohorts), each paired with its ``predictions`` folder.
        predictions: the every-candidate diagnose runs of the cases, one folder per dataset.
        out: output folder (created).
        min_score: detector score from which candidates are verified (and fitted on).
        l2: L2 penalty of the logistic model.
        case_ids: cases to fit on, with a single dataset only (default: every case).
        progress: called with a message and the fraction done.

    Returns:
        The fitted verifier; its ``source`` lists each cohort with its cases, and ``cases`` all case
        ids together (names may repeat across cohorts).

    Raises:
        LiaidsError: a case has no prediction, the folders do not pair up, or the examples hold only
            one class.
    """
    datas = [data] if isinstance(data, str | Path) else list(data)
    preds = [predictions] if isinstance(predictions, str | Path) else list(predictions)
    if len(datas) != len(preds) or not datas:
        raise LiaidsError(f"{len(datas)} dataset(s) but {len(preds)} predictions folder(s): give one of each")
    if case_ids is not None and len(datas) > 1:
        raise LiaidsError("a case list applies to a single dataset")
    cohorts, rows, labels = [], [], []
    for folder, pred in zip(datas, preds, strict=True):
        dataset, pred = Dataset(folder), Path(pred)
        cases = list(case_ids) if case_ids is not None else list(dataset.case_ids)
        missing = [c for c in cases if not (pred / c / "report.json").is_file()]
        if missing:
            raise LiaidsError(f"no report.json for {len(missing)} case(s), e.g. {missing[0]}", pred)
        features, found = verifier_examples(dataset, pred, cases, min_score, progress)
        rows.append(features)
        labels.append(found)
        cohorts.append({"data": str(folder), "predictions": str(pred), "cases": cases})
    all_labels = np.concatenate(labels)
    source = {
        "cohorts": cohorts,
        "cases": [c for cohort in cohorts for c in cohort["cases"]],
        "examples": len(all_labels),
        "true_lesions": int(all_labels.sum()),
        "l2": l2,
    }
    verifier = fit_verifier(np.vstack(rows), all_labels, l2=l2, min_score=min_score, source=source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    verifier.save(out)
    return verifier
