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
    """

    threshold: float
    source: str
    target_npv: float | None = DEFAULT_TARGET_NPV
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_threshold(self.threshold)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (the format of ``triage.json``)."""
        return {
            "threshold": self.threshold,
            "source": self.source,
            "target_npv": self.target_npv,
            "details": dict(self.details),
        }


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
    """

    diagnosis: str | None
    malignancy: str
    deciding_lesion: int | None
    categories: dict[int, str]
    triage_score: float
    risk: str
    reason: str
    threshold: float

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


def _own_probabilities(lesion: Mapping[str, Any]) -> Mapping[str, float]:
    return lesion.get("lesion_probabilities") or lesion["probabilities"]


def decide(
    lesions: Sequence[LesionCall], threshold: float, *, problems: Sequence[str] = ()
) -> PatientDecision:
    """Patient diagnosis and triage from the lesion predictions.

    Args:
        lesions: the study's lesions (any order).
        threshold: the triage threshold (:class:`TriageSettings` ``.threshold``).
        problems: reasons the study could not be fully analysed (e.g. no liver found in a phase). A study
            with problems is never low risk: a lesion the pipeline could not see must not send a patient
            home.

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
    decision = _decide(lesions, threshold)
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
