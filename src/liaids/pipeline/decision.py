"""Patient decision and triage from the lesion predictions of one study. Pure functions, no I/O.

Rules (the paper's, made explicit):

* **Lesion category.** ``malignant`` when the predicted type (the most probable of the seven) is HCC, ICC or
  HM; ``benign`` ("confidently benign") when the type is benign *and* the malignant probability
  ``P(HCC) + P(ICC) + P(HM)`` is below the triage threshold; ``indeterminate`` otherwise (a benign type
  whose malignant probability reaches the threshold).
* **Patient diagnosis.** The most severe lesion decides: malignant beats indeterminate beats benign; within
  a category the lesion with the highest malignant probability, then the highest detection score, then the
  lowest id.
* **Triage.** Low risk: no lesion, or every lesion confidently benign. High risk: any malignant or
  indeterminate lesion.
* **Triage findings (ours).** With its own detection point (``TriageSettings.detection_threshold``), the
  triage also reads the candidates below the report's operating point that reach it, each classified on
  its own (:func:`finding_calls`): a malignant or indeterminate finding makes the patient high risk. The
  diagnosis never reads them. Why: a patient whose malignant lesions all score below the operating point
  would otherwise be low risk at any threshold.

Equivalently, a patient's :func:`triage_score` is the highest lesion malignant probability, a lesion of a
malignant type counting as 1, and 0 without lesions; the patient is low risk when the score is below the
threshold. Choosing the threshold on a validation cohort therefore means passing these scores to
:func:`liaids.evaluate.statistics.triage_threshold` (see :func:`triage_settings_from_validation`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from liaids.classification.context import PatientContext
from liaids.codes import LESION_TYPE_NAMES, LESION_TYPES, MALIGNANT_INDICES, MALIGNANT_TYPES
from liaids.errors import LiaidsError

#: NPV the low-risk group must reach on the validation cohort (the paper's operating point).
DEFAULT_TARGET_NPV = 0.99
#: Threshold used when neither the classifier's config nor a triage.json gives one. Deliberately low:
#: a lesion is "confidently benign" only below 10 % malignant probability, so few patients are low risk
#: until a threshold has been chosen on a validation cohort.
FALLBACK_TRIAGE_THRESHOLD = 0.1

CATEGORIES: tuple[str, ...] = ("benign", "indeterminate", "malignant")
_SEVERITY = {name: rank for rank, name in enumerate(CATEGORIES)}


@dataclass(frozen=True)
class LesionCall:
    """What the decision needs to know about one lesion.

    Args:
        lesion_id: the lesion's id (report.json and the instance masks).
        lesion_type: the most probable type, one of :data:`liaids.codes.LESION_TYPES`.
        malignant_probability: ``P(HCC) + P(ICC) + P(HM)``.
        score: detection score, used only to break ties.
    """

    lesion_id: int
    lesion_type: str
    malignant_probability: float
    score: float = 1.0

    def __post_init__(self) -> None:
        if self.lesion_type not in LESION_TYPES:
            raise ValueError(f"unknown lesion type {self.lesion_type!r}; expected one of {LESION_TYPES}")
        if not 0.0 <= self.malignant_probability <= 1.0 + 1e-6:
            raise ValueError(f"malignant probability must lie in [0, 1], got {self.malignant_probability}")


@dataclass(frozen=True)
class TriageSettings:
    """The operating threshold of the triage and where it comes from.

    Args:
        threshold: a lesion is confidently benign below this malignant probability, in (0, 1].
        source: ``"user"``, ``"classifier config"``, ``"triage.json"`` or ``"fallback"``.
        target_npv: the NPV the threshold was chosen for (None when unknown, e.g. set by hand).
        details: provenance of a chosen threshold (validation cohort, NPV reached, low-risk share...).
        detection_threshold: the triage's own detection point: candidates the report leaves out (below the
            detector's operating point) but scoring at least this are read by the triage as *findings*
            (:func:`finding_calls`). None: the triage reads the reported lesions only.
    """

    threshold: float
    source: str
    target_npv: float | None = DEFAULT_TARGET_NPV
    details: dict[str, Any] = field(default_factory=dict)
    detection_threshold: float | None = None

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        d = self.detection_threshold
        if d is not None and (isinstance(d, bool) or not isinstance(d, int | float) or not 0.0 <= d <= 1.0):
            raise LiaidsError(f"triage detection threshold must be a number in [0, 1], got {d!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (the format of ``triage.json``)."""
        out: dict[str, Any] = {
            "threshold": self.threshold,
            "source": self.source,
            "target_npv": self.target_npv,
            "details": dict(self.details),
        }
        if self.detection_threshold is not None:
            out["detection_threshold"] = self.detection_threshold
        return out


@dataclass(frozen=True)
class PatientDecision:
    """The patient-level result.

    Attributes:
        diagnosis: type code of the deciding lesion, None when there is no lesion.
        malignancy: category of the deciding lesion (``malignant``, ``indeterminate``, ``benign``) or
            ``"no lesion"``.
        deciding_lesion: id of the deciding lesion, None when there is no lesion.
        categories: lesion id -> category.
        triage_score: see :func:`triage_score`.
        risk: ``"low"`` or ``"high"``.
        reason: one sentence explaining the triage.
        threshold: the threshold applied.
        finding_categories: finding id -> category, for the triage's findings (candidates below the
            reporting point that it reads, see :class:`TriageSettings`); empty without them.
    """

    diagnosis: str | None
    malignancy: str
    deciding_lesion: int | None
    categories: dict[int, str]
    triage_score: float
    risk: str
    reason: str
    threshold: float
    finding_categories: dict[int, str] = field(default_factory=dict)

    @property
    def diagnosis_name(self) -> str:
        """Readable diagnosis (``"hepatocellular carcinoma"``, or ``"no focal liver lesion"``)."""
        return LESION_TYPE_NAMES[self.diagnosis] if self.diagnosis else "no focal liver lesion"


def check_threshold(value: float, source: str | None = None) -> float:
    """Validate a triage threshold.

    Args:
        value: the threshold; must be a number in (0, 1] (0 would make nobody low risk by construction,
            and probabilities never exceed 1).
        source: file named in the error.

    Returns:
        The threshold as a float.

    Raises:
        LiaidsError: not a number, or outside (0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LiaidsError(f"triage threshold must be a number in (0, 1], got {value!r}", source)
    if not 0.0 < value <= 1.0:
        raise LiaidsError(f"triage threshold must lie in (0, 1], got {value}", source)
    return float(value)


def lesion_category(lesion_type: str, malignant_probability: float, threshold: float) -> str:
    """``malignant``, ``benign`` (confidently) or ``indeterminate``; see the module docstring.

    Args:
        lesion_type: the most probable type.
        malignant_probability: ``P(HCC) + P(ICC) + P(HM)``.
        threshold: the triage threshold.

    Returns:
        The category.
    """
    if lesion_type in MALIGNANT_TYPES:
        return "malignant"
    return "benign" if malignant_probability < threshold else "indeterminate"


def triage_score(lesions: Sequence[LesionCall]) -> float:
    """The patient's triage score: low risk exactly when it is below the threshold.

    Args:
        lesions: the patient's lesions.

    Returns:
        The highest malignant probability over the lesions, a lesion of a malignant type counting as 1;
        0 without lesions.
    """
    return max(
        (1.0 if les.lesion_type in MALIGNANT_TYPES else float(les.malignant_probability) for les in lesions),
        default=0.0,
    )


def calls_at_operating_point(
    lesions: Sequence[Mapping[str, Any]], detection_threshold: float, context: PatientContext
) -> list[LesionCall]:
    """The lesion calls a run at this detection operating point would make, from a report of every candidate.

    The pipeline drops candidates below the operating point *before* classifying, so a lesion's patient
    context is the survivors' probabilities, not those of every candidate in the report. This recomputes
    it from each surviving lesion's own probabilities (``lesion_probabilities``, present when the context
    changed them, else ``probabilities``), as :meth:`LesionClassifier.classify` does; exact up to the
    report's rounding of the probabilities.

    Args:
        lesions: ``report.json`` ``lesions`` of a run that kept every candidate.
        detection_threshold: lesions scoring below it are dropped.
        context: the classifier's patient context (``load_patient_context`` of its folder).

    Returns:
        One call per surviving lesion, in report order.
    """
    kept = [les for les in lesions if float(les["detection_score"]) >= detection_threshold]
    if not kept:
        return []
    own = np.array([[float(_own_probabilities(les)[t]) for t in LESION_TYPES] for les in kept])
    probabilities = context.apply(own / own.sum(axis=1, keepdims=True))
    malignant = probabilities[:, list(MALIGNANT_INDICES)].sum(axis=1)
    return [
        LesionCall(
            int(les["id"]),
            LESION_TYPES[int(np.argmax(probabilities[n]))],
            min(max(float(malignant[n]), 0.0), 1.0),
            float(les["detection_score"]),
        )
        for n, les in enumerate(kept)
    ]


def finding_calls(
    lesions: Sequence[Mapping[str, Any]], reporting_threshold: float, triage_detection_threshold: float
) -> list[LesionCall]:
    """The calls of the triage's findings, from a report of every candidate.

    A finding is a candidate the report leaves out (detection score below the reporting point) that the
    triage still reads (score at least its own detection point). Each is called from its own
    probabilities (``lesion_probabilities``, else ``probabilities``): no patient context, because the
    findings are mostly not lesions and would swamp the reported lesions' context.

    Args:
        lesions: ``report.json`` ``lesions`` of a run that kept every candidate.
        reporting_threshold: the detector's operating point (lesions at or above it are reported).
        triage_detection_threshold: the triage's detection point.

    Returns:
        One call per finding, in report order, ids as in the report.
    """
    return [
        call_from_own_probabilities(int(les["id"]), _own_probabilities(les), float(les["detection_score"]))
        for les in lesions
        if triage_detection_threshold <= float(les["detection_score"]) < reporting_threshold
    ]


def call_from_own_probabilities(
    lesion_id: int, probabilities: Mapping[str, float], score: float
) -> LesionCall:
    """A lesion's call from its own seven probabilities (no patient context), as the triage reads a finding.

    Args:
        lesion_id: the lesion's (or finding's) id.
        probabilities: type code -> probability (renormalised here, as reports round them).
        score: its detection score.

    Returns:
        The call: the most probable type and ``P(HCC) + P(ICC) + P(HM)``.
    """
    own = np.array([float(probabilities[t]) for t in LESION_TYPES])
    own = own / own.sum()
    malignant = float(own[list(MALIGNANT_INDICES)].sum())
    return LesionCall(lesion_id, LESION_TYPES[int(np.argmax(own))], min(max(malignant, 0.0), 1.0), score)


def triage_detection_scan(
    reports: Sequence[Sequence[Mapping[str, Any]]],
    malignant_truth: Sequence[bool],
    reporting_threshold: float,
    context: PatientContext,
    target_npv: float = DEFAULT_TARGET_NPV,
) -> list[dict[str, Any]]:
    """Every triage detection point from the reporting point down, each with its triage threshold.

    At a point ``d`` a patient's triage score is the highest of the reported lesions' (context over them,
    :func:`calls_at_operating_point`) and the findings' (:func:`finding_calls` between ``d`` and the
    reporting point); the threshold is then chosen as :func:`triage_settings_from_validation` does.

    Args:
        reports: per patient, ``report.json`` ``lesions`` of a run that kept every candidate.
        malignant_truth: per patient, True when the patient truly has a malignant lesion.
        reporting_threshold: the detector's operating point.
        context: the classifier's patient context.
        target_npv: the NPV the low-risk group must reach.

    Returns:
        One row per point (highest first): ``triage_detection_threshold``, the largest ``triage_threshold``
        whose low-risk group reaches ``target_npv`` (or the most cautious one), ``npv``, ``n_low_risk``,
        ``low_risk_share``, ``target_met``.
    """
    from liaids.evaluate.statistics import triage_threshold

    reported = [triage_score(calls_at_operating_point(r, reporting_threshold, context)) for r in reports]
    # (score, patient, the finding's own triage score), highest score first: lowering the point adds them
    findings = sorted(
        (
            (call.score, n, triage_score([call]))
            for n, r in enumerate(reports)
            for call in finding_calls(r, reporting_threshold, 0.0)
        ),
        reverse=True,
    )
    scores = list(reported)
    rows = []
    points = [reporting_threshold, *sorted({f[0] for f in findings}, reverse=True)]
    i = 0
    for point in points:
        while i < len(findings) and findings[i][0] >= point:
            _, n, value = findings[i]
            scores[n] = max(scores[n], value)
            i += 1
        chosen = triage_threshold(scores, malignant_truth, target_npv)
        rows.append(
            {
                "triage_detection_threshold": point,
                "triage_threshold": min(float(chosen.threshold), 1.0),
                "npv": None if math.isnan(chosen.npv) else float(chosen.npv),
                "n_low_risk": chosen.n_low_risk,
                "low_risk_share": float(chosen.low_risk_share),
                "target_met": bool(chosen.target_met),
            }
        )
    return rows


def triage_point_from_validation(
    scan: Sequence[Mapping[str, Any]],
    n_patients: int,
    target_npv: float = DEFAULT_TARGET_NPV,
    cohort: str = "",
) -> TriageSettings | None:
    """The triage detection point and threshold from :func:`triage_detection_scan`'s rows.

    Among the points whose low-risk group reaches the target NPV with at least one patient in it, the one
    leaving the most patients at low risk; ties go to the higher point (fewer findings to read).

    Returns:
        The settings (``source="triage.json"``), or None when no point reaches the target.
    """
    met = [row for row in scan if row["target_met"] and row["n_low_risk"] > 0]
    if not met:
        return None
    pick = max(met, key=lambda row: (row["n_low_risk"], row["triage_detection_threshold"]))
    details = {
        "cohort": cohort,
        "n_patients": n_patients,
        "n_low_risk": pick["n_low_risk"],
        "low_risk_share": round(pick["low_risk_share"], 4),
        "npv": None if pick["npv"] is None else round(pick["npv"], 4),
        "target_met": True,
    }
    return TriageSettings(
        pick["triage_threshold"], "triage.json", target_npv, details, pick["triage_detection_threshold"]
    )


def _own_probabilities(lesion: Mapping[str, Any]) -> Mapping[str, float]:
    return lesion.get("lesion_probabilities") or lesion["probabilities"]


def decide(
    lesions: Sequence[LesionCall],
    threshold: float,
    *,
    problems: Sequence[str] = (),
    findings: Sequence[LesionCall] = (),
) -> PatientDecision:
    """Patient diagnosis and triage from the lesion predictions.

    Args:
        lesions: the study's lesions (any order).
        threshold: the triage threshold (:class:`TriageSettings` ``.threshold``).
        problems: reasons the study could not be fully analysed (e.g. no liver found in a phase). A study
            with problems is never low risk: a lesion the pipeline could not see must not send a patient
            home.
        findings: the triage's findings (candidates below the reporting point scoring at least the
            triage's detection point, :func:`finding_calls`). They never change the diagnosis; a finding
            that is malignant or indeterminate makes the patient high risk.

    Returns:
        The decision.

    Raises:
        LiaidsError: an invalid threshold.
        ValueError: two lesions share an id.
    """
    threshold = check_threshold(threshold)
    ids = [les.lesion_id for les in lesions]
    if len(set(ids)) != len(ids):
        raise ValueError(f"lesion ids must be unique, got {ids}")
    decision = _with_findings(_decide(lesions, threshold), findings, threshold)
    if problems and decision.risk == "low":
        reason = f"analysis incomplete ({'; '.join(problems)}); otherwise: {decision.reason}"
        return replace(decision, risk="high", reason=reason)
    return decision


def _decide(lesions: Sequence[LesionCall], threshold: float) -> PatientDecision:
    if not lesions:
        return PatientDecision(
            None, "no lesion", None, {}, 0.0, "low", "no focal liver lesion detected", threshold
        )
    categories = {
        les.lesion_id: lesion_category(les.lesion_type, les.malignant_probability, threshold)
        for les in lesions
    }
    worst = max(
        lesions,
        key=lambda les: (
            _SEVERITY[categories[les.lesion_id]],
            les.malignant_probability,
            les.score,
            -les.lesion_id,
        ),
    )
    category = categories[worst.lesion_id]
    score = triage_score(lesions)
    p = probability_text(worst.malignant_probability)
    t = probability_text(threshold)
    if category == "malignant":
        risk = "high"
        reason = (
            f"lesion {worst.lesion_id} is classified {worst.lesion_type} "
            f"({LESION_TYPE_NAMES[worst.lesion_type]}), a malignant type; malignant probability {p}"
        )
    elif category == "indeterminate":
        risk = "high"
        reason = (
            f"lesion {worst.lesion_id} is indeterminate: classified {worst.lesion_type} "
            f"({LESION_TYPE_NAMES[worst.lesion_type]}) but its malignant probability {p} is not below "
            f"the threshold {t}"
        )
    else:
        risk = "low"
        n = len(lesions)
        every = "the lesion is" if n == 1 else f"all {n} lesions are"
        reason = f"{every} confidently benign: highest malignant probability {p} is below the threshold {t}"
    return PatientDecision(
        worst.lesion_type, category, worst.lesion_id, categories, score, risk, reason, threshold
    )


def _with_findings(
    decision: PatientDecision, findings: Sequence[LesionCall], threshold: float
) -> PatientDecision:
    if not findings:
        return decision
    categories = {
        f.lesion_id: lesion_category(f.lesion_type, f.malignant_probability, threshold) for f in findings
    }
    score = max(decision.triage_score, triage_score(findings))
    decision = replace(decision, finding_categories=categories, triage_score=score)
    worst = max(
        findings,
        key=lambda f: (_SEVERITY[categories[f.lesion_id]], f.malignant_probability, f.score, -f.lesion_id),
    )
    if decision.risk == "high" or categories[worst.lesion_id] == "benign":
        return decision
    what = "a malignant type" if categories[worst.lesion_id] == "malignant" else "indeterminate"
    reported = (
        "no lesion is reported" if not decision.categories else "every reported lesion is confidently benign"
    )
    reason = (
        f"{reported}, but finding F{worst.lesion_id}, below the reporting threshold (detection score "
        f"{worst.score:.2f}), is classified {worst.lesion_type} ({LESION_TYPE_NAMES[worst.lesion_type]}), "
        f"{what}; malignant probability {probability_text(worst.malignant_probability)}: check it"
    )
    return replace(decision, risk="high", reason=reason)


def probability_text(value: float) -> str:
    """A probability for a reader: two decimals, or two significant digits below 0.01 (triage thresholds
    can be 0.00004, and "0.00 is not below 0.00" explains nothing)."""
    return f"{value:.2f}" if value >= 0.01 or value == 0 else f"{value:.2g}"


def triage_settings_from_validation(
    scores: Sequence[float],
    malignant_truth: Sequence[bool],
    target_npv: float = DEFAULT_TARGET_NPV,
    cohort: str = "",
) -> TriageSettings:
    """Choose the threshold on a validation cohort: the largest whose low-risk group reaches ``target_npv``.

    Args:
        scores: per patient, :func:`triage_score` of the pipeline's lesions on that patient.
        malignant_truth: per patient, True when the patient truly has a malignant lesion.
        target_npv: the NPV the low-risk group must reach (paper: 0.99).
        cohort: a name for the cohort, kept in ``details``.

    Returns:
        Settings with ``source="triage.json"`` (write them with
        :func:`liaids.pipeline.diagnose.save_triage_settings`). When every candidate group reaches the
        target the threshold is capped at 1 (a malignant-type lesion still makes the patient high risk);
        when none does, it is the most cautious one (``details["target_met"]`` is False).
    """
    from liaids.evaluate.statistics import triage_threshold

    chosen = triage_threshold(scores, malignant_truth, target_npv)
    threshold = min(float(chosen.threshold), 1.0)
    if threshold <= 0.0:  # all patients at score 0 and no safe group: nobody can be low risk
        threshold = min((s for s in scores if s > 0), default=1.0)
    details = {
        "cohort": cohort,
        "n_patients": chosen.n_patients,
        "n_low_risk": chosen.n_low_risk,
        "low_risk_share": round(chosen.low_risk_share, 4),
        "npv": None if math.isnan(chosen.npv) else round(chosen.npv, 4),
        "target_met": chosen.target_met,
    }
    return TriageSettings(threshold, "triage.json", target_npv, details)
