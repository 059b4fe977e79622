"""The evaluation suite behind ``liaids evaluate DATASET -o OUTDIR``: the paper's statistics on any cohort.

:func:`evaluate` reads the ground truth of a dataset, runs the pipeline on every case (or reads earlier
predictions), matches predictions to the truth (:mod:`liaids.evaluate.cohort`) and writes into OUTDIR:

* ``metrics.json``: every number, with the settings and, per section, the CSV rows it is computed from;
* ``lesions.csv``, ``detections.csv``, ``patients.csv``: the per-lesion, per-detection and per-patient
  tables (nothing dropped: missed lesions, false positives and duplicates are rows);
* ``strata.csv``, ``roc_points.csv``, ``froc_points.csv``, ``confusion_lesion.csv``,
  ``confusion_patient.csv`` and, when computed, ``tsne.csv``, ``ablations.csv``,
  ``ablation_classification.csv``, ``ablation_detection.csv``, ``reader_*.csv``: the data of every figure;
* ``figures/*.png`` and ``report.html`` (offline, figures embedded);
* ``predictions/CASE_ID/`` when the suite ran the pipeline (reusable with ``predictions=``).

OUTDIR appears only when everything succeeded (written in a staging folder, then renamed).
docs/evaluation.md describes every file, column and computation.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from liaids.codes import LESION_TYPES, MALIGNANT_TYPES, SMALL_LESION_MM
from liaids.dataset import Dataset
from liaids.errors import LiaidsError
from liaids.evaluate.cohort import (
    MATCH_PHASES,
    PATIENT_CLASSES,
    STRATIFIERS,
    CasePrediction,
    CohortTables,
    build_tables,
    classify_truth_boxes,
    detect_with_true_livers,
    match_case,
    read_cohort_truth,
    read_predictions,
    run_pipeline,
    stratum_order,
)
from liaids.evaluate.detection import ScanMatch, froc, lesion_recall, recall_at_fp_rate
from liaids.evaluate.statistics import (
    binary_auc,
    classification_report,
    confusion_matrix,
    mcnemar_exact,
    proportion_ci,
    roc_curve,
    triage_threshold,
)
from liaids.provenance import software

Progress = Callable[[str, float], None]
SCHEMA = "liaids.evaluation"
# 1.1: dataset.cases_evaluated and dataset.failed_cases (--skip-failed). 1.2: software names torch,
# torchvision, monai and numpy too.
SCHEMA_VERSION = "1.2"
FIGURES_DIR = "figures"


@dataclass(frozen=True)
class EvaluationSettings:
    """Every setting of an evaluation (recorded in metrics.json).

    Attributes:
        match_phase: phases in which hits are judged: ``any`` (default) or ``NC``/``ART``/``PV``.
        iou_threshold, iom_threshold: the hit rule (paper: IoU > 0.3 or IoM > 0.5).
        size_cutoff_mm: small lesions are below this diameter (paper: 10 mm).
        score_threshold: predicted lesions count when their detection score reaches it (0: all reported).
        binary_threshold: lesion-level malignant call at ``P(HCC) + P(ICC) + P(HM) >= binary_threshold``.
        n_resamples: bootstrap resamples of the CIs (0: no bootstrap CIs).
        confidence: level of every CI.
        seed: bootstrap and t-SNE seed.
        target_npv: NPV for the triage threshold search reported in ``triage.threshold_for_target_npv``.
        tsne: compute the t-SNE of image features (needs a classifier and the case images).
        reader_margin, reader_alpha: non-inferiority margin and one-sided level of the reader study.
    """

    match_phase: str = "any"
    iou_threshold: float = 0.3
    iom_threshold: float = 0.5
    size_cutoff_mm: float = SMALL_LESION_MM
    score_threshold: float = 0.0
    binary_threshold: float = 0.5
    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    target_npv: float = 0.99
    tsne: bool = True
    reader_margin: float = 0.1
    reader_alpha: float = 0.05

    def check(self) -> EvaluationSettings:
        """Raise :class:`LiaidsError` on an invalid value; return self."""
        if self.match_phase not in MATCH_PHASES:
            raise LiaidsError(
                f"match phase must be one of {', '.join(MATCH_PHASES)}, got {self.match_phase!r}"
            )
        if not 0.0 < self.confidence < 1.0 or not 0.0 < self.target_npv <= 1.0:
            raise LiaidsError("confidence and target NPV must lie in (0, 1)")
        if self.n_resamples < 0:
            raise LiaidsError(f"n_resamples must be >= 0, got {self.n_resamples}")
        if not 0.0 <= self.binary_threshold <= 1.0:
            raise LiaidsError(f"binary threshold must lie in [0, 1], got {self.binary_threshold}")
        return self


# --------------------------------------------------------------------------------------------------
# Small helpers: CSV, JSON, proportions
# --------------------------------------------------------------------------------------------------


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        return "" if not math.isfinite(float(value)) else repr(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str] | None = None) -> Path:
    """Write rows as CSV: empty cell for None/NaN, ``true``/``false`` for booleans, floats in full precision.

    Args:
        rows: the rows.
        path: destination.
        columns: header (default: keys of the first row; with no rows and no columns, an empty file).

    Returns:
        ``path``.
    """
    cols = list(columns) if columns is not None else list(rows[0]) if rows else []
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if cols:
            writer.writerow(cols)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in cols])
    return path


def _json_ready(value: Any) -> Any:
    """Strict-JSON form: NaN and infinities become null, numpy scalars and arrays Python values."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, Path):
        return str(value)
    return value


def proportion(k: int, n: int, confidence: float = 0.95) -> dict[str, Any]:
    """``{"value", "ci_low", "ci_high", "k", "n"}``: ``k / n`` with its Wilson interval (NaN when n = 0)."""
    lo, hi = proportion_ci(k, n, confidence)
    return {
        "value": k / n if n else math.nan,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "k": int(k),
        "n": int(n),
    }


def _flag(rows: Sequence[Mapping[str, Any]], column: str) -> np.ndarray:
    return np.array([bool(r[column]) for r in rows], dtype=bool)


# --------------------------------------------------------------------------------------------------
# Statistics from the tables
# --------------------------------------------------------------------------------------------------


def _classified(lesion_rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in lesion_rows if r["detected"]]


def _labels_probs(rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    y = np.array([LESION_TYPES.index(r["true_type"]) for r in rows], dtype=np.int64)
    p = np.array([[r[f"p_{t}"] for t in LESION_TYPES] for r in rows], dtype=float).reshape(
        -1, len(LESION_TYPES)
    )
    return y, p


def lesion_level_metrics(tables: CohortTables, settings: EvaluationSettings) -> dict[str, Any]:
    """Lesion-level classification on the true lesions that were detected (see docs/evaluation.md).

    Returns:
        :func:`liaids.evaluate.statistics.classification_report` of those lesions, plus ``population``
        (what was counted and what was left out) and ``source``; ``skipped`` when no lesion was detected.
    """
    rows = _classified(tables.lesions)
    population = {
        "rule": (
            f"true lesions hit by a predicted lesion (IoU > {settings.iou_threshold} or IoM > "
            f"{settings.iom_threshold}, phases: {settings.match_phase}); the highest-scoring hitting "
            "prediction classifies the lesion"
        ),
        "true_lesions": len(tables.lesions),
        "classified": len(rows),
        "missed_not_classified": len(tables.lesions) - len(rows),
        "false_positive_predictions": sum(r["role"] == "false_positive" for r in tables.detections),
        "duplicate_predictions": sum(r["role"] == "duplicate" for r in tables.detections),
        "below_threshold_predictions": sum(r["role"] == "below_threshold" for r in tables.detections),
    }
    out: dict[str, Any] = {
        "population": population,
        "source": "lesions.csv rows with detected = true; columns true_type, p_HCC ... p_HA",
    }
    if not rows:
        out["skipped"] = "no true lesion was detected" if tables.lesions else "the cohort has no true lesion"
        return out
    y, p = _labels_probs(rows)
    out.update(
        classification_report(
            y,
            p,
            binary_threshold=settings.binary_threshold,
            n_resamples=settings.n_resamples,
            confidence=settings.confidence,
            seed=settings.seed,
        )
    )
    return out


def patient_level_metrics(tables: CohortTables, settings: EvaluationSettings) -> dict[str, Any]:
    """Patient-wise accuracy: seven types plus ``NONE`` (eight classes), and binary (malignant or not).

    Returns:
        ``seven_class`` (all patients; confusion matrix over :data:`PATIENT_CLASSES`),
        ``seven_class_patients_with_lesions``, ``seven_class_any_true_type`` (the predicted class is the type
        of any of the patient's true lesions, ``NONE`` for none), and ``binary``
        (:func:`liaids.evaluate.reader_study.call_metrics`: accuracy and, for benign and malignant as the
        positive class, sensitivity, specificity, precision, F1).
    """
    from liaids.evaluate.reader_study import call_metrics

    rows = tables.patients
    c = settings.confidence
    t_idx = np.array([PATIENT_CLASSES.index(r["true_class"]) for r in rows], dtype=np.int64)
    p_idx = np.array([PATIENT_CLASSES.index(r["pred_class"]) for r in rows], dtype=np.int64)
    with_lesions = [r for r in rows if r["n_true_lesions"] > 0]
    out: dict[str, Any] = {
        "n_patients": len(rows),
        "n_patients_with_lesions": len(with_lesions),
        "classes": list(PATIENT_CLASSES),
        "rule": (
            "most severe lesion decides; truth: malignant before benign, then larger diameter, then lower "
            "id; prediction: report.json diagnosis; no lesion = class NONE; binary: malignant = any "
            "malignant lesion (truth) / a malignant predicted class"
        ),
        "source": (
            "patients.csv; columns true_class, pred_class, correct_seven, true_malignant, pred_malignant"
        ),
        "seven_class": {
            **proportion(int(sum(r["correct_seven"] for r in rows)), len(rows), c),
            "confusion_matrix": confusion_matrix(t_idx, p_idx, len(PATIENT_CLASSES)).tolist() if rows else [],
        },
        "seven_class_patients_with_lesions": proportion(
            int(sum(r["correct_seven"] for r in with_lesions)), len(with_lesions), c
        ),
        "seven_class_any_true_type": proportion(
            int(sum(r["pred_class_in_true_types"] for r in rows)), len(rows), c
        ),
    }
    if rows:
        out["binary"] = call_metrics(
            _flag(rows, "true_malignant"),
            _flag(rows, "pred_malignant"),
            c,
            settings.n_resamples,
            settings.seed,
        )
    return out


def detection_metrics(tables: CohortTables, settings: EvaluationSettings) -> dict[str, Any]:
    """Recall overall and by size, recall at 1 FP per scan, FROC, and the counts of every outcome."""
    scans = [m.scan for m in tables.matches]
    det = tables.detections
    counted = [r for r in det if r["outcome"] != "below_threshold"]
    out: dict[str, Any] = {
        "source": "lesions.csv columns detected, size_stratum; detections.csv columns outcome, role",
        "n_scans": len(scans),
        "true_lesions": len(tables.lesions),
        "detected": sum(bool(r["detected"]) for r in tables.lesions),
        "missed": sum(not r["detected"] for r in tables.lesions),
        "predicted_lesions": len(det),
        "counted_predictions": len(counted),
        "true_positive_predictions": sum(r["outcome"] == "TP" for r in det),
        "false_positive_predictions": sum(r["outcome"] == "FP" for r in det),
        "duplicate_predictions": sum(r["role"] == "duplicate" for r in det),
        "below_threshold_predictions": len(det) - len(counted),
        "false_positives_per_scan": sum(r["outcome"] == "FP" for r in det) / max(len(scans), 1),
    }
    if scans:
        out["recall"] = lesion_recall(scans, settings.confidence)
        out["recall_at_1_fp_per_scan"] = recall_at_fp_rate(scans, 1.0, settings.confidence)
        out["froc"] = {name: curve.as_dict() for name, curve in froc(scans).items()}
    return out


def stratum_rows(tables: CohortTables, settings: EvaluationSettings) -> list[dict[str, Any]]:
    """Rows of strata.csv: per stratifier (:data:`STRATIFIERS`), stratum and measure, ``k`` of ``n`` with a
    Wilson interval. Lesion accuracies count classified lesions, recall all true lesions, patient accuracies
    all patients of the stratum.
    """
    c = settings.confidence
    out = []
    for stratifier in STRATIFIERS:
        column = f"{stratifier}_stratum"
        labels = [r[column] for r in tables.patients]
        for stratum in stratum_order(stratifier, labels):
            les = [r for r in tables.lesions if r[column] == stratum]
            cls = _classified(les)
            pts = [r for r in tables.patients if r[column] == stratum]
            measures = {
                "lesion_seven_class_accuracy": (sum(bool(r["correct_seven"]) for r in cls), len(cls)),
                "lesion_binary_accuracy": (sum(bool(r["correct_binary"]) for r in cls), len(cls)),
                "detection_recall": (sum(bool(r["detected"]) for r in les), len(les)),
                "patient_seven_class_accuracy": (sum(bool(r["correct_seven"]) for r in pts), len(pts)),
                "patient_binary_accuracy": (sum(bool(r["correct_binary"]) for r in pts), len(pts)),
            }
            for measure, (k, n) in measures.items():
                stat = proportion(k, n, c)
                out.append({"stratifier": stratifier, "stratum": stratum, "measure": measure, **stat})
    return out


def strata_metrics(strata_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Nest strata.csv rows as stratifier -> stratum -> measure -> proportion."""
    out: dict[str, Any] = {"source": "strata.csv (computed from lesions.csv and patients.csv)"}
    for r in strata_rows:
        entry = {k: r[k] for k in ("value", "ci_low", "ci_high", "k", "n")}
        out.setdefault(r["stratifier"], {}).setdefault(r["stratum"], {})[r["measure"]] = entry
    return out


def triage_metrics_from_reports(tables: CohortTables, settings: EvaluationSettings) -> dict[str, Any]:
    """Triage as the reports decided it (``triage.risk``) against the truth (any malignant lesion).

    Returns:
        counts, ``low_risk_share``, ``npv``, ``ppv``, ``sensitivity``, ``specificity`` (Wilson CIs), the
        thresholds the reports used, and ``threshold_for_target_npv``: the largest threshold on the reports'
        triage scores whose low-risk group reaches ``target_npv`` on this cohort (a validation-cohort choice).
    """
    rows = [r for r in tables.patients if r["triage_risk"] in ("low", "high")]
    c = settings.confidence
    high = np.array([r["triage_risk"] == "high" for r in rows], dtype=bool)
    truth = _flag(rows, "true_malignant")
    tp, fp = int((high & truth).sum()), int((high & ~truth).sum())
    fn, tn = int((~high & truth).sum()), int((~high & ~truth).sum())
    out: dict[str, Any] = {
        "source": "patients.csv columns triage_risk, triage_score, true_malignant",
        "rule": "low risk = report.json triage.risk 'low'; truth positive = any true malignant lesion",
        "n": len(rows),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "thresholds_used": sorted({r["triage_threshold"] for r in rows}),
        "low_risk_share": proportion(tn + fn, len(rows), c),
        "npv": proportion(tn, tn + fn, c),
        "ppv": proportion(tp, tp + fp, c),
        "sensitivity": proportion(tp, tp + fn, c),
        "specificity": proportion(tn, tn + fp, c),
    }
    if rows:
        scores = np.clip([r["triage_score"] for r in rows], 0.0, 1.0)
        out["threshold_for_target_npv"] = asdict(triage_threshold(scores, truth, settings.target_npv))
    return out


# --------------------------------------------------------------------------------------------------
# Curve tables (the data of the figures)
# --------------------------------------------------------------------------------------------------

_MACRO_GRID = np.linspace(0.0, 1.0, 201)


def roc_rows(y: np.ndarray, probs: np.ndarray) -> list[dict[str, Any]]:
    """Points of every ROC curve drawn: one-vs-rest per class, their macro average, and binary.

    The macro curve is the mean TPR of the classes with both positives and negatives on a 201-point FPR
    grid (as :func:`liaids.evaluate.plots.plot_roc_curves` draws it); ``binary`` scores lesions by
    ``P(HCC) + P(ICC) + P(HM)`` against malignant truth.

    Returns:
        Rows ``curve``, ``point``, ``fpr``, ``tpr``, ``threshold`` (empty for the macro curve), ``auc``.
    """
    out: list[dict[str, Any]] = []
    tprs = []
    aucs = []
    for c, name in enumerate(LESION_TYPES):
        pos = y == c
        if not pos.any() or pos.all():
            continue
        fpr, tpr, thr = roc_curve(pos, probs[:, c])
        auc = float(binary_auc(pos, probs[:, c]))
        aucs.append(auc)
        tprs.append(np.interp(_MACRO_GRID, fpr, tpr))
        out += [
            {"curve": name, "point": i, "fpr": f, "tpr": t, "threshold": h, "auc": auc}
            for i, (f, t, h) in enumerate(zip(fpr, tpr, thr, strict=True))
        ]
    if tprs:
        mean = np.mean(tprs, axis=0)
        macro_auc = float(np.mean(aucs))
        out += [
            {"curve": "macro", "point": i, "fpr": f, "tpr": t, "threshold": None, "auc": macro_auc}
            for i, (f, t) in enumerate(zip(_MACRO_GRID, mean, strict=True))
        ]
    malignant = np.isin(np.array(LESION_TYPES)[y], list(MALIGNANT_TYPES))
    if malignant.any() and not malignant.all():
        score = probs[:, [LESION_TYPES.index(t) for t in LESION_TYPES if t in MALIGNANT_TYPES]].sum(axis=1)
        fpr, tpr, thr = roc_curve(malignant, score)
        auc = float(binary_auc(malignant, score))
        out += [
            {"curve": "binary", "point": i, "fpr": f, "tpr": t, "threshold": h, "auc": auc}
            for i, (f, t, h) in enumerate(zip(fpr, tpr, thr, strict=True))
        ]
    return out


def froc_rows(scans: Sequence[ScanMatch]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """FROC curve points per size stratum (see :func:`liaids.evaluate.detection.froc`) and the curves."""
    curves = froc(scans)
    rows = []
    for name, curve in curves.items():
        rows += [
            {"stratum": name, "point": i, "threshold": t, "fp_per_scan": f, "sensitivity": s}
            for i, (t, f, s) in enumerate(
                zip(curve.thresholds, curve.fp_per_scan, curve.sensitivity, strict=True)
            )
        ]
        rows += [
            {"stratum": name, "point": f"at {r:g}", "threshold": None, "fp_per_scan": r, "sensitivity": s}
            for r, s in zip(curve.fp_rates, curve.sensitivities, strict=True)
        ]
    return rows, curves


def confusion_rows(cm: Sequence[Sequence[int]], names: Sequence[str]) -> list[dict[str, Any]]:
    """A confusion matrix as rows: ``true`` then one column per predicted class."""
    return [
        {"true": names[i], **{n: int(v) for n, v in zip(names, row, strict=True)}} for i, row in enumerate(cm)
    ]


# --------------------------------------------------------------------------------------------------
# Figures drawn here (the others come from liaids.evaluate.plots)
# --------------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_binary_roc(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """The binary (malignant vs benign) lesion ROC curve from the ``binary`` rows of roc_points.csv."""
    pts = [r for r in rows if r["curve"] == "binary"]
    fig = _figure(5.0, 4.6)
    ax = fig.add_subplot()
    ax.plot(
        [r["fpr"] for r in pts], [r["tpr"] for r in pts], lw=1.5, label=f"malignant (AUC {pts[0]['auc']:.3f})"
    )
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="1 - specificity",
        ylabel="sensitivity",
        title="ROC, malignant vs benign",
    )
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_strata(rows: Sequence[Mapping[str, Any]], path: Path, measures: Sequence[str]) -> Path:
    """Bars with Wilson intervals per stratum, one panel per stratifier, from strata.csv rows."""
    stratifiers = list(dict.fromkeys(r["stratifier"] for r in rows))
    fig = _figure(4.2 * len(stratifiers), 4.2)
    width = 0.8 / len(measures)
    for n, stratifier in enumerate(stratifiers):
        ax = fig.add_subplot(1, len(stratifiers), n + 1)
        sub = [r for r in rows if r["stratifier"] == stratifier]
        strata = list(dict.fromkeys(r["stratum"] for r in sub))
        for m, measure in enumerate(measures):
            pts = {r["stratum"]: r for r in sub if r["measure"] == measure}
            x = np.arange(len(strata)) + (m - (len(measures) - 1) / 2) * width
            vals = np.array([pts[s]["value"] for s in strata], dtype=float)
            low = np.array([pts[s]["ci_low"] for s in strata], dtype=float)
            high = np.array([pts[s]["ci_high"] for s in strata], dtype=float)
            shown = np.nan_to_num(vals)
            err = np.nan_to_num(np.vstack([shown - low, high - shown]), nan=0.0).clip(0.0)
            ax.bar(x, shown, width, yerr=err, capsize=2, label=measure.replace("_", " "), color=f"C{m}")
            for xi, s in zip(x, strata, strict=True):
                ax.text(xi, 0.02, f"n={pts[s]['n']}", rotation=90, fontsize=6, ha="center", va="bottom")
        ax.set_xticks(np.arange(len(strata)), strata, rotation=30, ha="right", fontsize=8)
        ax.set(ylim=(0, 1.05), title=stratifier.replace("_", " "))
        if n == 0:
            ax.legend(loc="lower left", fontsize=7)
    return _save(fig, path)


def plot_tsne_points(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Scatter of tsne.csv rows coloured by true type (paper Fig. 3f)."""
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    for c, name in enumerate(LESION_TYPES):
        sel = [r for r in rows if r["true_type"] == name]
        if sel:
            ax.scatter(
                [r["x"] for r in sel],
                [r["y"] for r in sel],
                s=10,
                color=f"C{c}",
                label=f"{name} ({len(sel)})",
            )
    ax.set(xticks=[], yticks=[], title="t-SNE of the classifier's image features")
    ax.legend(loc="best", fontsize=8, markerscale=1.5)
    return _save(fig, path)


def _or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def plot_ablations(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Side-by-side bars of each model's main measures (ablations.csv rows), one panel per role."""
    roles = [r for r in ("classifier", "detector") if any(x["role"] == r for x in rows)]
    shown_measures = {
        "classifier": ("seven_class_accuracy", "binary_accuracy", "macro_auc", "binary_auc"),
        "detector": ("recall_all", "recall_<10mm", "recall_>=10mm", "cpm"),
    }
    fig = _figure(5.5 * len(roles), 4.4)
    for n, role in enumerate(roles):
        ax = fig.add_subplot(1, len(roles), n + 1)
        sub = [r for r in rows if r["role"] == role]
        models = list(dict.fromkeys(r["model"] for r in sub))
        measures = shown_measures[role]
        width = 0.8 / len(models)
        for k, model in enumerate(models):
            pts = {r["measure"]: r for r in sub if r["model"] == model}
            x = np.arange(len(measures)) + (k - (len(models) - 1) / 2) * width
            vals, low, high = (
                np.array([_or_nan(pts.get(m, {}).get(k)) for m in measures], dtype=float)
                for k in ("value", "ci_low", "ci_high")
            )
            shown = np.nan_to_num(vals)
            err = np.nan_to_num(np.vstack([shown - low, high - shown]), nan=0.0).clip(0.0)
            ax.bar(x, shown, width, yerr=err, capsize=2, label=model, color=f"C{k}")
        ax.set_xticks(
            np.arange(len(measures)), [m.replace("_", " ") for m in measures], rotation=20, fontsize=8
        )
        ax.set(ylim=(0, 1.05), title=f"{role} ablations")
        ax.legend(loc="lower left", fontsize=7)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Optional parts: t-SNE, ablations, reader study
# --------------------------------------------------------------------------------------------------


def _model_kind(folder: Path) -> str:
    config = folder / "config.json"
    if not config.is_file():
        raise LiaidsError("not a model folder (no config.json)", folder)
    try:
        kind = json.loads(config.read_text()).get("kind")
    except (OSError, ValueError, AttributeError) as exc:
        raise LiaidsError(f"unreadable model configuration ({exc})".splitlines()[0], config) from exc
    if kind not in ("lesion-classification", "lesion-detection"):
        raise LiaidsError(f"model kind {kind!r} cannot be ablated (classifier or detector expected)", config)
    return str(kind)


def _classifier_ablation_rows(
    name: str, folder: Path, variant: str, preds: Any, reference: Any, settings: EvaluationSettings
) -> list[dict[str, Any]]:
    rep = classification_report(
        preds.labels,
        preds.probabilities,
        binary_threshold=settings.binary_threshold,
        n_resamples=settings.n_resamples,
        confidence=settings.confidence,
        seed=settings.seed,
    )
    correct = preds.probabilities.argmax(axis=1) == preds.labels
    p_value = math.nan
    if reference is not None and name != "reference":
        p_value = mcnemar_exact(correct, reference.probabilities.argmax(axis=1) == reference.labels)[
            "p_value"
        ]
    base = {"model": name, "role": "classifier", "variant": variant, "folder": str(folder), "n": rep["n"]}
    stats = {
        "seven_class_accuracy": rep["multiclass"]["accuracy"],
        "macro_auc": rep["multiclass"]["macro_auc"],
        "macro_f1": rep["multiclass"]["macro_f1"],
        "binary_accuracy": rep["binary"]["accuracy"],
        "binary_auc": rep["binary"]["auc"],
    }
    return [
        {**base, "measure": m, **s, "p_value_vs_reference": p_value if m == "seven_class_accuracy" else None}
        for m, s in stats.items()
    ]


def _detector_ablation_rows(
    name: str,
    folder: Path,
    backbone: str,
    scans: Sequence[ScanMatch],
    reference: Sequence[ScanMatch] | None,
    settings: EvaluationSettings,
) -> list[dict[str, Any]]:
    recall = lesion_recall(scans, settings.confidence)
    curves = froc(scans)
    detected = np.array([r.detected for s in scans for r in s.lesions], dtype=bool)
    strata = np.array([r.size_stratum for s in scans for r in s.lesions], dtype=object)
    ref = (
        None
        if reference is None
        else np.array([r.detected for s in reference for r in s.lesions], dtype=bool)
    )
    base = {"model": name, "role": "detector", "variant": backbone, "folder": str(folder)}
    rows = []
    for stratum, entry in recall.items():
        p_value = None
        if ref is not None and name != "reference":
            mask = np.ones(len(strata), bool) if stratum == "all" else strata == stratum
            if mask.any():
                p_value = mcnemar_exact(detected[mask], ref[mask])["p_value"]
        rows.append(
            {
                **base,
                "measure": f"recall_{stratum}",
                "value": entry["recall"],
                "ci_low": entry["ci_low"],
                "ci_high": entry["ci_high"],
                "n": entry["lesions"],
                "p_value_vs_reference": p_value,
            }
        )
    n_fp = sum(d.outcome == "FP" for s in scans for d in s.detections)
    none = {"ci_low": None, "ci_high": None, "p_value_vs_reference": None}
    rows.append({**base, "measure": "cpm", "value": curves["all"].cpm, "n": curves["all"].n_lesions, **none})
    rows.append(
        {
            **base,
            "measure": "false_positives_per_scan",
            "value": n_fp / max(len(scans), 1),
            "n": len(scans),
            **none,
        }
    )
    return rows


# --------------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------------


class _Figures:
    """Collects the figures drawn and what data each comes from."""

    def __init__(self, stage: Path) -> None:
        self.stage = stage
        self.entries: list[dict[str, Any]] = []

    def path(self, name: str) -> Path:
        return self.stage / FIGURES_DIR / f"{name}.png"

    def add(self, name: str, title: str, section: str, sources: list[dict[str, Any]]) -> None:
        self.entries.append(
            {
                "id": name,
                "file": f"{FIGURES_DIR}/{name}.png",
                "title": title,
                "section": section,
                "sources": sources,
            }
        )


def _check_inputs(
    predictions: str | Path | None,
    reader_csv: str | Path | None,
    reader_truth: str | Path | None,
    ai_calls: str | Path | None,
    ablations: Mapping[str, str | Path] | None,
) -> dict[str, tuple[Path, str]]:
    """Fail before any work on a missing input; return ablation name -> (folder, kind)."""
    if predictions is not None and not Path(predictions).is_dir():
        raise LiaidsError("predictions folder not found", predictions)
    for path, what in ((reader_csv, "reader calls"), (reader_truth, "reader truth"), (ai_calls, "AI calls")):
        if path is not None and not Path(path).is_file():
            raise LiaidsError(f"{what} file not found", path)
    if reader_csv is None and (reader_truth is not None or ai_calls is not None):
        raise LiaidsError("reader truth or AI calls given without the reader calls CSV")
    out = {}
    for name, folder in (ablations or {}).items():
        if name == "reference":
            raise LiaidsError("'reference' is reserved for the evaluated models; name the ablation otherwise")
        path = Path(folder)
        if not path.is_dir():
            raise LiaidsError(f"ablation model folder {name!r} not found", path)
        out[name] = (path, _model_kind(path))
    return out


def evaluate(
    dataset: str | Path,
    out_dir: str | Path,
    *,
    weights: Any = None,
    predictions: str | Path | None = None,
    reader_csv: str | Path | None = None,
    reader_truth: str | Path | None = None,
    ai_calls: str | Path | None = None,
    ablations: Mapping[str, str | Path] | None = None,
    device: str = "cpu",
    settings: EvaluationSettings | None = None,
    overwrite: bool = False,
    skip_failed: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Evaluate LiAIDS on a dataset and write OUTDIR (``liaids evaluate DATASET -o OUTDIR``).

    Args:
        dataset: DATASET, a dataset folder (:class:`liaids.dataset.Dataset`) with lesion masks.
        out_dir: OUTDIR, created; must be absent or empty unless ``overwrite``.
        weights: ``--weights``: model folders (:func:`liaids.pipeline.diagnose.model_folders`); used to run
            the pipeline, and as the classifier of the t-SNE and the reference of the ablations.
        predictions: ``--predictions``: a folder ``PRED/CASE_ID/report.json`` of earlier diagnose runs (every
            case needed); the pipeline is then not run. Without ``weights`` the t-SNE is skipped.
        reader_csv, reader_truth, ai_calls: the reader study (formats in
            :mod:`liaids.evaluate.reader_study`); without ``ai_calls`` LiAIDS's calls are the cohort's
            patient-level predictions for the reader-study patients that are cases of the dataset.
        ablations: name -> model folder of a classifier variant (image-only, clinical-only, concatenation;
            evaluated on the true lesion boxes) or a detector (e.g. the 2D backbone; evaluated on detection
            recall with the true liver masks); compared with the ``weights`` models, evaluated alike.
        device: ``cpu`` or ``cuda``.
        settings: matching rule, thresholds, bootstrap (:class:`EvaluationSettings`).
        overwrite: replace a non-empty OUTDIR (only once the evaluation has succeeded).
        skip_failed: ``--skip-failed``: a case the pipeline refuses (its images, phases or clinical
            fields; :data:`liaids.evaluate.cohort.CASE_REFUSALS`), or whose report.json is missing or
            malformed, is left out of every statistic and listed with its one-line error in
            metrics.json ``dataset.failed_cases`` instead of stopping the evaluation. Model problems
            still stop it, and so does a cohort where every case fails.
        progress: called as ``progress(message, fraction)``.

    Returns:
        OUTDIR.

    Raises:
        LiaidsError: a one-line error naming the file (missing dataset, a case without report.json,
            malformed report.json, a case the pipeline refuses, bad reader CSV, unusable model folder);
            OUTDIR is then left untouched.
    """
    from liaids.io.atomic import staged_output_dir

    started = time.perf_counter()
    report = progress or (lambda _m, _f: None)
    cfg = (settings or EvaluationSettings()).check()
    ds = Dataset(dataset)
    ablation_kinds = _check_inputs(predictions, reader_csv, reader_truth, ai_calls, ablations)
    if device != "cpu":
        from liaids.pipeline.diagnose import check_device

        device = check_device(device)

    with staged_output_dir(out_dir, overwrite=overwrite) as stage:
        report("reading the ground truth", 0.0)
        truths = read_cohort_truth(ds)
        failed: dict[str, str] = {}

        def refused(case_id: str, error: LiaidsError) -> None:
            failed[case_id] = str(error)

        on_refused = refused if skip_failed else None
        if predictions is not None:
            preds = read_predictions(predictions, ds.case_ids, on_refused)
            pred_info: dict[str, Any] = {"kind": "folder", "folder": str(Path(predictions).absolute())}
        else:
            preds = run_pipeline(
                ds,
                stage / "predictions",
                weights=weights,
                device=device,
                progress=lambda m, f: report(m, 0.02 + 0.6 * f),
                on_refused=on_refused,
            )
            pred_info = {"kind": "diagnose", "folder": "predictions"}
        if failed and not preds:
            raise LiaidsError(f"all {len(failed)} cases failed; nothing to evaluate", ds.root)
        # A left-out case is left out of everything: truth tables, strata, t-SNE and ablations.
        truths = {c: t for c, t in truths.items() if c not in failed}
        pred_info["models"] = _report_models(preds)

        report("matching predictions to the truth", 0.65)
        tables = build_tables(
            truths,
            preds,
            match_phase=cfg.match_phase,
            iou_threshold=cfg.iou_threshold,
            iom_threshold=cfg.iom_threshold,
            size_cutoff_mm=cfg.size_cutoff_mm,
            score_threshold=cfg.score_threshold,
            binary_threshold=cfg.binary_threshold,
        )
        from liaids.evaluate.cohort import DETECTION_COLUMNS, LESION_COLUMNS, PATIENT_COLUMNS

        files: dict[str, str] = {}
        write_csv(tables.lesions, stage / "lesions.csv", LESION_COLUMNS)
        write_csv(tables.detections, stage / "detections.csv", DETECTION_COLUMNS)
        write_csv(tables.patients, stage / "patients.csv", PATIENT_COLUMNS)
        files.update(
            {
                "lesions.csv": "one row per true lesion, detected or missed",
                "detections.csv": "one row per predicted lesion: classifying, duplicate, false positive",
                "patients.csv": "one row per case",
            }
        )

        report("computing statistics", 0.68)
        metrics: dict[str, Any] = {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "notice": "Not for clinical use: a research evaluation of LiAIDS.",
            "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "software": software(device),
            "dataset": {
                "folder": str(ds.root.absolute()),
                "name": ds.meta.get("name"),
                "cases": len(ds),
                "cases_evaluated": len(truths),
                "failed_cases": [{"case_id": c, "error": e} for c, e in failed.items()],
            },
            "predictions": pred_info,
            "settings": asdict(cfg),
        }
        metrics["lesion_level"] = lesion_level_metrics(tables, cfg)
        metrics["patient_level"] = patient_level_metrics(tables, cfg)
        metrics["detection"] = detection_metrics(tables, cfg)
        strata = stratum_rows(tables, cfg)
        write_csv(
            strata,
            stage / "strata.csv",
            ("stratifier", "stratum", "measure", "k", "n", "value", "ci_low", "ci_high"),
        )
        files["strata.csv"] = "per stratum (slice thickness, mAs, centre) and measure: k of n with Wilson CI"
        metrics["strata"] = strata_metrics(strata)
        metrics["triage"] = triage_metrics_from_reports(tables, cfg)

        report("drawing figures", 0.72)
        figs = _Figures(stage)
        _core_figures(tables, metrics, strata, figs, files, stage)

        classifiers: dict[str, Any] = {}
        detectors: dict[str, Any] = {}
        # The reference classifier serves the t-SNE (when its weights are known) and classifier ablations.
        clf_ablation = any(k == "lesion-classification" for _, k in ablation_kinds.values())
        needs_reference = ((predictions is None or weights is not None) and cfg.tsne) or clf_ablation
        if needs_reference or ablation_kinds:
            from liaids.classification.predictor import LesionClassifier
            from liaids.detection.predictor import LesionDetector
            from liaids.pipeline.diagnose import model_folders

            folders = model_folders(weights)
            if needs_reference:
                classifiers["reference"] = LesionClassifier.from_weights(folders["classifier"], device)
            for name, (folder, kind) in ablation_kinds.items():
                if kind == "lesion-classification":
                    classifiers[name] = LesionClassifier.from_weights(folder, device)
            if any(k == "lesion-detection" for _, k in ablation_kinds.values()):
                detectors["reference"] = LesionDetector.load(folders["detector"], device)
                for name, (folder, kind) in ablation_kinds.items():
                    if kind == "lesion-detection":
                        detectors[name] = LesionDetector.load(folder, device)
            model_dirs = {"reference": folders["classifier"]} | {n: f for n, (f, _) in ablation_kinds.items()}
        else:
            model_dirs = {}

        truth_preds = {}
        if classifiers and any(t.lesions for t in truths.values()):
            report("classifying the true lesion boxes", 0.76)
            truth_preds = classify_truth_boxes(
                ds,
                truths,
                classifiers,
                size_cutoff_mm=cfg.size_cutoff_mm,
                progress=lambda m, f: report(m, 0.76 + 0.08 * f),
            )
        metrics["tsne"] = _tsne(truth_preds.get("reference"), cfg, figs, files, stage, predictions, weights)

        ablation_rows: list[dict[str, Any]] = []
        if ablation_kinds:
            ablation_rows = _ablations(
                ds, truths, truth_preds, classifiers, detectors, model_dirs, cfg, stage, files, report
            )
            metrics["ablations"] = _ablation_summary(ablation_rows)
            if ablation_rows:
                plot_ablations(ablation_rows, figs.path("ablations"))
                figs.add(
                    "ablations",
                    "Ablations side by side",
                    "ablations",
                    [
                        {
                            "csv": "ablations.csv",
                            "rows": "all",
                            "columns": ["model", "role", "measure", "value", "ci_low", "ci_high"],
                        }
                    ],
                )
        else:
            metrics["ablations"] = {"skipped": "no ablation models given"}

        if reader_csv is not None:
            report("reader study", 0.92)
            metrics["reader_study"] = _reader_study(
                reader_csv, reader_truth, ai_calls, tables, cfg, figs, files, stage
            )
        else:
            metrics["reader_study"] = {"skipped": "no reader calls CSV given"}

        metrics["figures"] = figs.entries
        files.update({"metrics.json": "every number of this evaluation", "report.html": "the report page"})
        metrics["files"] = files
        metrics["runtime_s"] = round(time.perf_counter() - started, 2)
        clean = _json_ready(metrics)
        (stage / "metrics.json").write_text(
            json.dumps(clean, indent=1, allow_nan=False) + "\n", encoding="utf-8"
        )
        from liaids.evaluate.html import render_evaluation_html

        report("writing report.html", 0.97)
        (stage / "report.html").write_text(render_evaluation_html(clean, stage), encoding="utf-8")
    report("done", 1.0)
    return Path(out_dir)


def _report_models(preds: Mapping[str, CasePrediction]) -> dict[str, Any] | None:
    """The ``models`` object of the first report (which models made the predictions), when readable."""
    for pred in preds.values():
        if pred.source is None:
            continue
        try:
            models = json.loads(Path(pred.source).read_text(encoding="utf-8")).get("models")
        except (OSError, ValueError):
            return None
        return models if isinstance(models, dict) else None
    return None


def _core_figures(
    tables: CohortTables,
    metrics: dict[str, Any],
    strata: list[dict[str, Any]],
    figs: _Figures,
    files: dict[str, str],
    stage: Path,
) -> None:
    """ROC, confusion matrices, FROC and strata figures with their CSV tables."""
    from liaids.evaluate.plots import plot_confusion_matrix, plot_froc, plot_roc_curves

    classified = _classified(tables.lesions)
    prob_cols = [f"p_{t}" for t in LESION_TYPES]
    rows_note = "rows with detected = true"
    if classified:
        y, p = _labels_probs(classified)
        roc = roc_rows(y, p)
        write_csv(roc, stage / "roc_points.csv", ("curve", "point", "fpr", "tpr", "threshold", "auc"))
        files["roc_points.csv"] = "points of every ROC curve drawn (per class, macro, binary)"
        if any(r["curve"] in LESION_TYPES for r in roc):
            plot_roc_curves(y, p, figs.path("roc_seven_class"), title="ROC, one lesion type vs rest")
            figs.add(
                "roc_seven_class",
                "Lesion-level ROC curves, one type vs rest",
                "lesion_level",
                [
                    {"csv": "lesions.csv", "rows": rows_note, "columns": ["true_type", *prob_cols]},
                    {
                        "csv": "roc_points.csv",
                        "rows": "curve = a type code or macro",
                        "columns": ["fpr", "tpr", "auc"],
                    },
                ],
            )
        if any(r["curve"] == "binary" for r in roc):
            plot_binary_roc(roc, figs.path("roc_binary"))
            figs.add(
                "roc_binary",
                "Lesion-level ROC, malignant vs benign",
                "lesion_level",
                [
                    {
                        "csv": "lesions.csv",
                        "rows": rows_note,
                        "columns": ["true_malignant", "malignant_probability"],
                    },
                    {"csv": "roc_points.csv", "rows": "curve = binary", "columns": ["fpr", "tpr", "auc"]},
                ],
            )
        cm = metrics["lesion_level"]["confusion_matrix"]
        write_csv(confusion_rows(cm, LESION_TYPES), stage / "confusion_lesion.csv", ("true", *LESION_TYPES))
        files["confusion_lesion.csv"] = "lesion-level confusion matrix (rows true, columns predicted)"
        plot_confusion_matrix(cm, figs.path("confusion_lesion"), title="Lesions: true vs predicted type")
        figs.add(
            "confusion_lesion",
            "Lesion-level confusion matrix",
            "lesion_level",
            [
                {"csv": "lesions.csv", "rows": rows_note, "columns": ["true_type", "pred_type"]},
                {"csv": "confusion_lesion.csv", "rows": "all", "columns": ["true", *LESION_TYPES]},
            ],
        )
    if tables.patients:
        cm = metrics["patient_level"]["seven_class"]["confusion_matrix"]
        write_csv(
            confusion_rows(cm, PATIENT_CLASSES), stage / "confusion_patient.csv", ("true", *PATIENT_CLASSES)
        )
        files["confusion_patient.csv"] = "patient-level confusion matrix over NONE and the seven types"
        plot_confusion_matrix(
            cm,
            figs.path("confusion_patient"),
            class_names=PATIENT_CLASSES,
            title="Patients: true vs predicted class",
        )
        figs.add(
            "confusion_patient",
            "Patient-level confusion matrix (NONE = no lesion)",
            "patient_level",
            [
                {"csv": "patients.csv", "rows": "all", "columns": ["true_class", "pred_class"]},
                {"csv": "confusion_patient.csv", "rows": "all", "columns": ["true", *PATIENT_CLASSES]},
            ],
        )
    scans = [m.scan for m in tables.matches]
    if scans and tables.lesions:
        rows, curves = froc_rows(scans)
        write_csv(
            rows, stage / "froc_points.csv", ("stratum", "point", "threshold", "fp_per_scan", "sensitivity")
        )
        files["froc_points.csv"] = "FROC curve points per size stratum, and the sensitivities at the FP rates"
        plot_froc(curves, figs.path("froc"), title="FROC (IoU > 0.3 or IoM > 0.5)")
        figs.add(
            "froc",
            "Detection FROC, all lesions and by size",
            "detection",
            [
                {
                    "csv": "lesions.csv",
                    "rows": "all",
                    "columns": ["size_stratum", "detected", "detection_score"],
                },
                {"csv": "detections.csv", "rows": "outcome = FP", "columns": ["detection_score"]},
                {
                    "csv": "froc_points.csv",
                    "rows": "all",
                    "columns": ["stratum", "fp_per_scan", "sensitivity"],
                },
            ],
        )
    if strata:
        measures = ("lesion_seven_class_accuracy", "detection_recall", "patient_seven_class_accuracy")
        plot_strata(strata, figs.path("strata"), measures)
        figs.add(
            "strata",
            "Accuracy and recall by slice thickness, mAs and centre (Wilson 95 % CI)",
            "strata",
            [
                {
                    "csv": "strata.csv",
                    "rows": "measure in " + ", ".join(measures),
                    "columns": ["stratum", "value", "ci_low", "ci_high", "n"],
                }
            ],
        )


def _tsne(
    preds: Any,
    cfg: EvaluationSettings,
    figs: _Figures,
    files: dict[str, str],
    stage: Path,
    predictions: Any,
    weights: Any,
) -> dict[str, Any]:
    """t-SNE of the reference classifier's image features on the true lesion boxes."""
    if not cfg.tsne:
        return {"skipped": "t-SNE switched off"}
    if preds is None:
        if predictions is not None and weights is None:
            return {"skipped": "predictions were read from a folder and no classifier weights were given"}
        return {"skipped": "no true lesion in the cohort"}
    if preds.features is None:
        return {"skipped": "the classifier has no image features (clinical-only variant)"}
    if len(preds.labels) < 3:
        return {"skipped": f"only {len(preds.labels)} true lesion(s); t-SNE needs at least 3"}
    from liaids.evaluate.plots import tsne_embedding

    emb = tsne_embedding(preds.features, random_state=cfg.seed)
    rows = [
        {
            "case_id": c,
            "lesion_id": int(lid),
            "true_type": LESION_TYPES[int(y)],
            "x": float(x),
            "y": float(yy),
        }
        for c, lid, y, (x, yy) in zip(preds.case_ids, preds.lesion_ids, preds.labels, emb, strict=True)
    ]
    write_csv(rows, stage / "tsne.csv", ("case_id", "lesion_id", "true_type", "x", "y"))
    files["tsne.csv"] = "2D t-SNE coordinates of each true lesion's image features"
    plot_tsne_points(rows, figs.path("tsne"))
    figs.add(
        "tsne",
        "t-SNE of the classifier's image features, coloured by true type",
        "tsne",
        [{"csv": "tsne.csv", "rows": "all", "columns": ["true_type", "x", "y"]}],
    )
    return {
        "source": "tsne.csv",
        "n_lesions": len(rows),
        "feature_dim": int(preds.features.shape[1]),
        "features_from": "the reference classifier run on the true lesion boxes (all true lesions)",
        "perplexity": min(30.0, (len(rows) - 1) / 3.0),
        "random_state": cfg.seed,
    }


def _ablations(
    ds: Dataset,
    truths: Mapping[str, Any],
    truth_preds: Mapping[str, Any],
    classifiers: Mapping[str, Any],
    detectors: Mapping[str, Any],
    model_dirs: Mapping[str, Path],
    cfg: EvaluationSettings,
    stage: Path,
    files: dict[str, str],
    report: Progress,
) -> list[dict[str, Any]]:
    """Evaluate the ablation models and the reference alike; write the ablation CSVs."""
    rows: list[dict[str, Any]] = []
    if classifiers and truth_preds:
        ref = truth_preds.get("reference")
        per_lesion = []
        for name, clf in classifiers.items():
            preds = truth_preds[name]
            folder = model_dirs.get(name, Path(""))
            rows += _classifier_ablation_rows(name, folder, clf.variant, preds, ref, cfg)
            for c, lid, y, p in zip(
                preds.case_ids, preds.lesion_ids, preds.labels, preds.probabilities, strict=True
            ):
                per_lesion.append(
                    {
                        "model": name,
                        "case_id": c,
                        "lesion_id": int(lid),
                        "true_type": LESION_TYPES[int(y)],
                        "pred_type": LESION_TYPES[int(np.argmax(p))],
                        **{f"p_{t}": float(v) for t, v in zip(LESION_TYPES, p, strict=True)},
                        "correct_seven": int(np.argmax(p)) == int(y),
                    }
                )
        write_csv(
            per_lesion,
            stage / "ablation_classification.csv",
            (
                "model",
                "case_id",
                "lesion_id",
                "true_type",
                "pred_type",
                *(f"p_{t}" for t in LESION_TYPES),
                "correct_seven",
            ),
        )
        files["ablation_classification.csv"] = "each classifier's answer on each true lesion box"
    if detectors:
        report("running the detectors with the true livers", 0.85)
        found = detect_with_true_livers(
            ds, list(truths), detectors, progress=lambda m, f: report(m, 0.85 + 0.06 * f)
        )
        scans: dict[str, list[ScanMatch]] = {}
        per_lesion = []
        for name, by_case in found.items():
            scans[name] = []
            for case_id, truth in truths.items():
                match = match_case(
                    truth,
                    by_case[case_id],
                    match_phase=cfg.match_phase,
                    iou_threshold=cfg.iou_threshold,
                    iom_threshold=cfg.iom_threshold,
                    size_cutoff_mm=cfg.size_cutoff_mm,
                    score_threshold=cfg.score_threshold,
                )
                scans[name].append(match.scan)
                for g, rec in zip(truth.lesions, match.scan.lesions, strict=True):
                    per_lesion.append(
                        {
                            "model": name,
                            "case_id": case_id,
                            "lesion_id": g.lesion_id,
                            "true_type": g.lesion_type,
                            "diameter_mm": g.diameter_mm,
                            "size_stratum": rec.size_stratum,
                            "detected": rec.detected,
                            "best_score": rec.best_score,
                        }
                    )
        for name, detector in detectors.items():
            folder = Path(detector.source.get("folder", ""))
            rows += _detector_ablation_rows(
                name, folder, str(detector.source.get("backbone")), scans[name], scans.get("reference"), cfg
            )
        write_csv(
            per_lesion,
            stage / "ablation_detection.csv",
            (
                "model",
                "case_id",
                "lesion_id",
                "true_type",
                "diameter_mm",
                "size_stratum",
                "detected",
                "best_score",
            ),
        )
        files["ablation_detection.csv"] = "each detector's outcome on each true lesion (true liver masks)"
    columns = (
        "model",
        "role",
        "variant",
        "folder",
        "measure",
        "value",
        "ci_low",
        "ci_high",
        "n",
        "p_value_vs_reference",
    )
    write_csv(rows, stage / "ablations.csv", columns)
    files["ablations.csv"] = "summary of every ablation model and the reference, side by side"
    return rows


def _ablation_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "source": "ablations.csv",
        "classifiers_on": "true lesion boxes of every true lesion",
        "detectors_on": "the dataset's liver masks; hits judged as in the main detection evaluation",
        "p_value": "exact McNemar test against the reference on the same lesions",
    }
    for r in rows:
        entry = out.setdefault(r["role"], {}).setdefault(
            r["model"], {"variant": r["variant"], "folder": r["folder"], "measures": {}}
        )
        entry["measures"][r["measure"]] = {
            k: r.get(k) for k in ("value", "ci_low", "ci_high", "n", "p_value_vs_reference")
        }
    return out


def _reader_study(
    reader_csv: str | Path,
    reader_truth: str | Path | None,
    ai_calls: str | Path | None,
    tables: CohortTables,
    cfg: EvaluationSettings,
    figs: _Figures,
    files: dict[str, str],
    stage: Path,
) -> dict[str, Any]:
    """Reader metrics per reader and session, session comparison, LiAIDS non-inferiority, Fig. 4 plot."""
    from liaids.evaluate.plots import plot_reader_study
    from liaids.evaluate.reader_study import (
        ReaderStudy,
        ai_non_inferiority,
        compare_sessions,
        load_reader_study,
        reader_metrics,
    )

    study = load_reader_study(reader_csv, reader_truth, ai_calls)
    source = "file" if ai_calls is not None else None
    if ai_calls is None:
        cohort_calls = {r["case_id"]: bool(r["pred_malignant"]) for r in tables.patients}
        derived = {p: cohort_calls[p] for p in study.truth if p in cohort_calls}
        if derived:
            study = ReaderStudy(truth=study.truth, calls=study.calls, ai_calls=derived, ai_name=study.ai_name)
            source = f"cohort predictions ({len(derived)} of {len(study.truth)} reader-study patients)"
            write_csv(
                [{"patient_id": p, "call": "malignant" if c else "benign"} for p, c in derived.items()],
                stage / "reader_ai_calls.csv",
                ("patient_id", "call"),
            )
            files["reader_ai_calls.csv"] = "LiAIDS's patient-level calls used in the reader study"
    rows = reader_metrics(study, cfg.confidence, cfg.n_resamples, cfg.seed)
    write_csv(rows, stage / "reader_metrics.csv")
    files["reader_metrics.csv"] = (
        "per reader and session: accuracy, benign and malignant sensitivity, specificity, F1"
    )
    comparison = compare_sessions(study)
    if comparison:
        write_csv(comparison, stage / "reader_comparison.csv")
        files["reader_comparison.csv"] = "with-AI vs without-AI accuracy per reader (exact McNemar)"
    non_inferiority = []
    if study.ai_calls:
        non_inferiority = ai_non_inferiority(study, margin=cfg.reader_margin, alpha=cfg.reader_alpha)
        if non_inferiority:
            write_csv(non_inferiority, stage / "reader_non_inferiority.csv")
            files["reader_non_inferiority.csv"] = "LiAIDS vs each reader alone: Tango non-inferiority test"
    plot_reader_study(rows, figs.path("reader_study"))
    figs.add(
        "reader_study",
        "Readers without and with LiAIDS, and LiAIDS alone (paper Fig. 4a-b)",
        "reader_study",
        [
            {
                "csv": "reader_metrics.csv",
                "rows": "one per reader and session",
                "columns": [
                    "benign_sensitivity",
                    "benign_specificity",
                    "malignant_sensitivity",
                    "malignant_specificity",
                ],
            }
        ],
    )
    return {
        "source": "reader_metrics.csv, reader_comparison.csv, reader_non_inferiority.csv",
        "calls": str(Path(reader_csv).absolute()),
        "ai_calls_source": source,
        "readers": list(study.readers),
        "metrics": rows,
        "comparison": comparison,
        "non_inferiority": non_inferiority,
    }


__all__ = [
    "EvaluationSettings",
    "detection_metrics",
    "evaluate",
    "lesion_level_metrics",
    "patient_level_metrics",
    "proportion",
    "roc_rows",
    "strata_metrics",
    "stratum_rows",
    "triage_metrics_from_reports",
    "write_csv",
]
