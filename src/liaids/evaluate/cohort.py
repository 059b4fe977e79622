"""Cohort layer of the evaluation: ground truth and predictions of every case, matched, as tables.

Three steps, each usable alone (:func:`liaids.evaluate.suite.evaluate` chains them):

1. **Collect.** :func:`read_truth` reads a case's lesions from its case.json and its lesion instance masks
   (boxes per phase; no image is read). Predictions are ``report.json`` files of ``liaids diagnose``
   (docs/report-schema.md): :func:`read_predictions` reads a folder ``PRED/CASE_ID/report.json`` and
   :func:`run_pipeline` produces one by running the pipeline on every case (models loaded once).
2. **Match** (:func:`match_case`). A predicted lesion *hits* a true lesion with the paper's rule (IoU > 0.3
   or IoM > 0.5, :func:`liaids.evaluate.detection.is_hit`), judged in the phases where the true lesion is
   visible in its mask: in any of them (``match_phase="any"``, the default), or in one reference phase
   (``"NC"``, ``"ART"`` or ``"PV"``; a lesion not visible there is judged in any phase where it is).
   The counting is :func:`liaids.evaluate.detection.match_scan`'s: a lesion is detected when a prediction
   with ``detection_score >= score_threshold`` hits it; a prediction hitting any lesion is a true positive.
   The prediction that *classifies* a detected lesion is its highest-scoring hitting prediction (ties: the
   lower report id); a true positive that classifies no lesion is a *duplicate*.
3. **Tabulate** (:func:`build_tables`): one row per true lesion (missed ones included), one per predicted
   lesion (false positives and duplicates included) and one per patient. Nothing is dropped: every
   unmatched lesion and detection is a row with its outcome.

Patient level: the most severe lesion decides, for the truth as for LiAIDS. The true class of a patient is
the type of their most severe true lesion (malignant before benign, then the larger diameter, then the
lower lesion id); a patient without lesions is of the class ``NONE``, an eighth patient-level class. The
predicted class is ``report.json``'s ``diagnosis.diagnosis`` (``NONE`` when null). Binary: a patient is
truly malignant when any true lesion is HCC, ICC or HM (patients without lesions are negative), and
predicted malignant when the predicted class is a malignant type.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from liaids.codes import LESION_TYPES, MALIGNANT_TYPES, PHASES, SMALL_LESION_MM
from liaids.dataset import Dataset
from liaids.errors import (
    BoxError,
    ClinicalInfoError,
    DatasetError,
    LiaidsError,
    PhaseError,
    PredictionError,
    StudyReadError,
)
from liaids.evaluate.detection import (
    DetectionRecord,
    LesionRecord,
    ScanMatch,
    box_diameter_mm,
    box_iom_3d,
    box_iou_3d,
    size_stratum,
)

BBox = tuple[int, int, int, int, int, int]
Progress = Callable[[str, float], None]
#: Called with a case id and the error when a case is left out instead of stopping the cohort.
OnRefused = Callable[[str, LiaidsError], None]
#: Errors that belong to one case's input (its images, phases, clinical fields, boxes): the case can be
#: left out of a cohort run. Anything else (a model folder, the output disk) stops the run.
CASE_REFUSALS: tuple[type[LiaidsError], ...] = (
    StudyReadError,
    PhaseError,
    ClinicalInfoError,
    DatasetError,
    BoxError,
    PredictionError,
)

#: Patient-level classes: no lesion, then the seven lesion types.
NO_LESION = "NONE"
PATIENT_CLASSES: tuple[str, ...] = (NO_LESION, *LESION_TYPES)
#: Values of ``match_phase``.
MATCH_PHASES: tuple[str, ...] = ("any", *PHASES)
#: Phase order used when a lesion is not visible in the reference phase.
_FALLBACK_ORDER: tuple[str, ...] = ("PV", "ART", "NC")

#: Strata of the paper's Table 2, half-open ``[low, high)``.
SLICE_THICKNESS_BANDS_MM: tuple[tuple[float, float], ...] = ((2.5, 5.0), (5.0, 7.0), (7.0, 10.0))
MAS_BANDS: tuple[tuple[float, float], ...] = ((0.0, 100.0), (100.0, 200.0), (200.0, 500.0))
UNKNOWN = "unknown"
#: Stratifier name -> (case.json ``acquisition`` key, bands or None for categorical values, unit).
STRATIFIERS: dict[str, tuple[str, tuple[tuple[float, float], ...] | None, str]] = {
    "slice_thickness": ("slice_thickness_mm", SLICE_THICKNESS_BANDS_MM, " mm"),
    "mas": ("mas", MAS_BANDS, " mAs"),
    "centre": ("centre", None, ""),
}


# --------------------------------------------------------------------------------------------------
# Strata
# --------------------------------------------------------------------------------------------------


def _num(x: float) -> str:
    return f"{x:g}"


def band_label(value: Any, bands: Sequence[tuple[float, float]], unit: str = "") -> str:
    """Name of the half-open band ``[low, high)`` holding ``value``.

    Args:
        value: the number (None, NaN or a non-number: ``"unknown"``).
        bands: contiguous ``(low, high)`` pairs in increasing order.
        unit: appended to the label, e.g. ``" mm"``.

    Returns:
        ``"[5-7) mm"``; ``"<2.5 mm"`` below the first band, ``">=10 mm"`` from the end of the last;
        ``"unknown"`` without a usable value.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return UNKNOWN
    if value < bands[0][0]:
        return f"<{_num(bands[0][0])}{unit}"
    for low, high in bands:
        if low <= value < high:
            return f"[{_num(low)}-{_num(high)}){unit}"
    return f">={_num(bands[-1][1])}{unit}"


def stratum_of(stratifier: str, acquisition: Mapping[str, Any]) -> str:
    """The stratum of a case for one stratifier of :data:`STRATIFIERS`.

    Args:
        stratifier: ``slice_thickness``, ``mas`` or ``centre``.
        acquisition: the ``acquisition`` object of case.json.

    Returns:
        The band label (see :func:`band_label`) or, for ``centre``, the centre's name (``"unknown"``).
    """
    key, bands, unit = STRATIFIERS[stratifier]
    value = acquisition.get(key)
    if bands is not None:
        return band_label(value, bands, unit)
    return str(value).strip() if value is not None and str(value).strip() else UNKNOWN


def stratum_order(stratifier: str, labels: Sequence[str]) -> list[str]:
    """Strata in display order: bands from low to high, then ``unknown``; centres alphabetically."""
    _, bands, unit = STRATIFIERS[stratifier]
    if bands is None:
        return sorted(set(labels), key=lambda s: (s == UNKNOWN, s))
    order = [f"<{_num(bands[0][0])}{unit}"]
    order += [f"[{_num(lo)}-{_num(hi)}){unit}" for lo, hi in bands]
    order += [f">={_num(bands[-1][1])}{unit}", UNKNOWN]
    present = set(labels)
    return [s for s in order if s in present]


# --------------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrueLesion:
    """One ground-truth lesion.

    Attributes:
        lesion_id: its instance id in the lesion masks (case.json ``id``).
        lesion_type: one of :data:`liaids.codes.LESION_TYPES`.
        diameter_mm: case.json's ``diameter_mm``, else the longer in-plane side of its largest mask box.
        diameter_source: ``"case.json"`` or ``"mask box"``.
        boxes: phase -> ``bbox_ijk`` of its mask in that phase (half-open voxels), None where not visible.
    """

    lesion_id: int
    lesion_type: str
    diameter_mm: float
    diameter_source: str
    boxes: dict[str, BBox | None]

    @property
    def malignant(self) -> bool:
        return self.lesion_type in MALIGNANT_TYPES

    @property
    def visible_in(self) -> tuple[str, ...]:
        return tuple(p for p in PHASES if self.boxes.get(p) is not None)


@dataclass(frozen=True)
class CaseTruth:
    """Ground truth of one case.

    Attributes:
        case_id: the case.
        lesions: its lesions in case.json order.
        acquisition: case.json ``acquisition`` (slice thickness, mAs, centre, ...).
        shapes: phase -> lesion mask shape ``(i, j, k)``; None when unknown (hand-built truth).
    """

    case_id: str
    lesions: tuple[TrueLesion, ...]
    acquisition: dict[str, Any] = field(default_factory=dict)
    shapes: dict[str, tuple[int, int, int]] | None = None


def read_truth(dataset: Dataset, case_id: str) -> CaseTruth:
    """Read one case's lesions: case.json and the three lesion instance masks (no image is read).

    Args:
        dataset: the dataset.
        case_id: one of ``dataset.case_ids``.

    Returns:
        The case's ground truth.

    Raises:
        DatasetError: an unreadable case.json or mask, a mask id missing from case.json, or a lesion of
            case.json that appears in no mask.
    """
    from scipy import ndimage

    from liaids.io import read_nifti

    info = dataset.read_info(case_id)
    folder = dataset.root / case_id
    boxes: dict[str, dict[int, BBox]] = {}
    spacing: dict[str, tuple[float, float, float]] = {}
    shapes: dict[str, tuple[int, int, int]] = {}
    known = {r.lesion_id for r in info.lesions}
    for p in PHASES:
        path = folder / f"lesions_{p}.nii.gz"
        if not path.is_file():
            raise DatasetError("lesion mask not found", path)
        volume = read_nifti(path)
        # Boxes of every instance id (scipy directly: the classification package would import torch).
        found = ndimage.find_objects(volume.array.astype(np.int64, copy=False))
        boxes[p] = {
            lid: (si.start, sj.start, sk.start, si.stop, sj.stop, sk.stop)
            for lid, f in enumerate(found, start=1)
            if f is not None
            for sk, sj, si in [f]
        }
        spacing[p] = volume.spacing
        shapes[p] = tuple(int(v) for v in reversed(volume.shape))  # type: ignore[assignment]
        unknown = sorted(set(boxes[p]) - known)
        if unknown:
            raise DatasetError(f"lesion ids {unknown} are not listed in case.json", path)
    lesions = []
    for record in info.lesions:
        per_phase = {p: boxes[p].get(record.lesion_id) for p in PHASES}
        visible = [p for p in PHASES if per_phase[p] is not None]
        if not visible:
            raise DatasetError(f"lesion {record.lesion_id} of case.json appears in no lesion mask", folder)
        if record.diameter_mm is not None:
            diameter, source = float(record.diameter_mm), "case.json"
        else:
            diameter = max(float(box_diameter_mm([per_phase[p]], spacing[p])[0]) for p in visible)
            source = "mask box"
        lesions.append(TrueLesion(record.lesion_id, record.lesion_type, diameter, source, per_phase))
    return CaseTruth(case_id, tuple(lesions), dict(info.acquisition), shapes)


def read_cohort_truth(dataset: Dataset, progress: Progress | None = None) -> dict[str, CaseTruth]:
    """:func:`read_truth` of every case, in ``dataset.case_ids`` order."""
    out = {}
    for n, case_id in enumerate(dataset.case_ids):
        if progress:
            progress(f"reading ground truth {case_id}", n / max(len(dataset.case_ids), 1))
        out[case_id] = read_truth(dataset, case_id)
    return out


# --------------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictedLesion:
    """One lesion of a report.json.

    Attributes:
        lesion_id: report id.
        detection_score: the detector's score.
        boxes: phase -> ``bbox_ijk`` (phases the report gives).
        probabilities: the seven probabilities in :data:`LESION_TYPES` order, None for detection-only
            predictions (ablations of the detector).
        lesion_type: most probable type (None without probabilities).
        malignant_probability: ``P(HCC) + P(ICC) + P(HM)`` (None without probabilities).
        category: ``malignant``, ``indeterminate`` or ``benign`` (None when not given).
        diameter_mm: reported diameter (None when not given).
        found_in: phases where the detector found it.
    """

    lesion_id: int
    detection_score: float
    boxes: dict[str, BBox]
    probabilities: tuple[float, ...] | None = None
    lesion_type: str | None = None
    malignant_probability: float | None = None
    category: str | None = None
    diameter_mm: float | None = None
    found_in: tuple[str, ...] = ()


@dataclass(frozen=True)
class CasePrediction:
    """The patient-level and lesion-level answer of one report.json.

    Attributes:
        case_id: the case.
        lesions: predicted lesions in report order.
        diagnosis: type code of the deciding lesion, None without lesions.
        malignancy: ``malignant``, ``indeterminate``, ``benign`` or ``no lesion``.
        triage_risk: ``low`` or ``high`` (None for detection-only predictions).
        triage_score: the patient's triage score.
        triage_threshold: the threshold the report applied.
        shapes: phase -> ``shape_ijk`` of the study the report was made on, None when not given.
        source: the report.json path (None when built in memory).
    """

    case_id: str
    lesions: tuple[PredictedLesion, ...]
    diagnosis: str | None = None
    malignancy: str = ""
    triage_risk: str | None = None
    triage_score: float = math.nan
    triage_threshold: float = math.nan
    shapes: dict[str, tuple[int, int, int]] | None = None
    source: Path | None = None


def _fail(path: Path | None, problem: str) -> PredictionError:
    return PredictionError(problem, path)


def _number(value: Any, what: str, path: Path | None, *, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(path, f"{what} must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise _fail(path, f"{what} must be at least {low}, got {value!r}")
    return float(value)


def _bbox(value: Any, what: str, path: Path | None) -> BBox:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 6
        or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in value)
    ):
        raise _fail(path, f"{what} must be six integers [i0, j0, k0, i1, j1, k1], got {value!r}")
    box = tuple(int(v) for v in value)
    if any(box[d + 3] <= box[d] for d in range(3)) or min(box) < 0:
        raise _fail(path, f"{what} is empty or negative: {list(box)}")
    return box  # type: ignore[return-value]


def _parse_lesion(item: Any, n: int, path: Path | None) -> PredictedLesion:
    where = f"lesions[{n}]"
    if not isinstance(item, Mapping):
        raise _fail(path, f"{where} must be an object")
    lid = item.get("id")
    if isinstance(lid, bool) or not isinstance(lid, int):
        raise _fail(path, f"{where}.id must be an integer, got {lid!r}")
    score = _number(item.get("detection_score"), f"{where}.detection_score", path)
    phases = item.get("phases")
    if not isinstance(phases, Mapping) or not phases:
        raise _fail(path, f"{where}.phases must be an object with at least one phase")
    boxes: dict[str, BBox] = {}
    for p, entry in phases.items():
        if p not in PHASES:
            raise _fail(path, f"{where}.phases has an unknown phase {p!r}")
        if not isinstance(entry, Mapping):
            raise _fail(path, f"{where}.phases.{p} must be an object")
        boxes[p] = _bbox(entry.get("bbox_ijk"), f"{where}.phases.{p}.bbox_ijk", path)
    probs_in = item.get("probabilities")
    if not isinstance(probs_in, Mapping) or set(probs_in) != set(LESION_TYPES):
        raise _fail(path, f"{where}.probabilities must give exactly the codes {', '.join(LESION_TYPES)}")
    probs = tuple(_number(probs_in[t], f"{where}.probabilities.{t}", path, low=0.0) for t in LESION_TYPES)
    lesion_type = item.get("type", LESION_TYPES[int(np.argmax(probs))])
    if lesion_type not in LESION_TYPES:
        raise _fail(path, f"{where}.type {lesion_type!r} is not one of {', '.join(LESION_TYPES)}")
    malignant = item.get("malignant_probability")
    if malignant is None:
        malignant = sum(p for t, p in zip(LESION_TYPES, probs, strict=True) if t in MALIGNANT_TYPES)
    malignant = _number(malignant, f"{where}.malignant_probability", path, low=0.0)
    diameter = item.get("diameter_mm")
    found_in = item.get("found_in") or []
    if not isinstance(found_in, list) or any(p not in PHASES for p in found_in):
        raise _fail(path, f"{where}.found_in must list phases, got {found_in!r}")
    return PredictedLesion(
        lesion_id=lid,
        detection_score=score,
        boxes=boxes,
        probabilities=probs,
        lesion_type=lesion_type,
        malignant_probability=malignant,
        category=item.get("category"),
        diameter_mm=None if diameter is None else _number(diameter, f"{where}.diameter_mm", path),
        found_in=tuple(found_in),
    )


def parse_report(data: Any, case_id: str | None = None, path: Path | None = None) -> CasePrediction:
    """Validate the parts of a report.json the evaluation uses (docs/report-schema.md).

    Used: ``lesions[]`` (``id``, ``detection_score``, ``phases.P.bbox_ijk``, ``probabilities``; optional
    ``type``, ``malignant_probability``, ``category``, ``diameter_mm``, ``found_in``), ``diagnosis``
    (``diagnosis``, ``malignancy``), ``triage`` (``risk``, ``score``, ``threshold``), and, when present,
    ``study.case_id`` (must equal ``case_id``) and ``phases.P.shape_ijk``.

    Args:
        data: the parsed JSON.
        case_id: the case it must belong to (default: ``study.case_id``).
        path: the file, named in errors.

    Returns:
        The prediction.

    Raises:
        PredictionError: the first problem found, naming the file.
    """
    if not isinstance(data, Mapping):
        raise _fail(path, "report.json must hold a JSON object")
    study = data.get("study") if isinstance(data.get("study"), Mapping) else {}
    reported_case = study.get("case_id")
    if case_id is not None and reported_case not in (None, case_id):
        raise _fail(path, f"report of case {reported_case!r}, expected case {case_id!r}")
    case = case_id if case_id is not None else reported_case
    if not case:
        raise _fail(path, "no case id: study.case_id is empty")
    lesions_in = data.get("lesions")
    if not isinstance(lesions_in, list):
        raise _fail(path, "'lesions' must be a list")
    lesions = tuple(_parse_lesion(item, n, path) for n, item in enumerate(lesions_in))
    ids = [les.lesion_id for les in lesions]
    if len(set(ids)) != len(ids):
        raise _fail(path, f"lesion ids repeat: {ids}")
    diagnosis = data.get("diagnosis")
    if not isinstance(diagnosis, Mapping) or "diagnosis" not in diagnosis:
        raise _fail(path, "'diagnosis' must be an object with a 'diagnosis' field")
    dx = diagnosis["diagnosis"]
    if dx is not None and dx not in LESION_TYPES:
        raise _fail(path, f"diagnosis.diagnosis {dx!r} is not null or one of {', '.join(LESION_TYPES)}")
    if dx is None and lesions:
        raise _fail(path, "diagnosis.diagnosis is null but the report lists lesions")
    triage = data.get("triage")
    if not isinstance(triage, Mapping) or triage.get("risk") not in ("low", "high"):
        raise _fail(path, "'triage' must be an object with 'risk' low or high")
    shapes = None
    phases = data.get("phases")
    if isinstance(phases, Mapping) and all(
        isinstance(phases.get(p), Mapping) and "shape_ijk" in phases[p] for p in PHASES
    ):
        shapes = {}
        for p in PHASES:
            shape = phases[p]["shape_ijk"]
            if not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(v, int) for v in shape):
                raise _fail(path, f"phases.{p}.shape_ijk must be three integers, got {shape!r}")
            shapes[p] = tuple(shape)
    return CasePrediction(
        case_id=str(case),
        lesions=lesions,
        diagnosis=dx,
        malignancy=str(diagnosis.get("malignancy") or ("no lesion" if dx is None else "")),
        triage_risk=triage["risk"],
        triage_score=_number(triage.get("score"), "triage.score", path, low=0.0),
        triage_threshold=_number(triage.get("threshold"), "triage.threshold", path),
        shapes=shapes,  # type: ignore[arg-type]
        source=path,
    )


def read_report(path: str | Path, case_id: str | None = None) -> CasePrediction:
    """Read and validate one report.json (see :func:`parse_report`).

    Raises:
        PredictionError: missing file, invalid JSON or content; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"not valid JSON ({exc})".splitlines()[0]) from exc
    return parse_report(data, case_id, path)


def read_predictions(
    folder: str | Path, case_ids: Sequence[str], on_refused: OnRefused | None = None
) -> dict[str, CasePrediction]:
    """Read ``folder/CASE_ID/report.json`` of every case.

    Args:
        folder: the predictions folder (e.g. an earlier evaluation's ``predictions/``).
        case_ids: the dataset's cases; each needs a report (extra folders are ignored).
        on_refused: None: a missing or malformed report stops the reading. Otherwise it is called with
            the case id and the error, and the case is left out of the result.

    Returns:
        Case id -> prediction, in ``case_ids`` order.

    Raises:
        PredictionError: the folder, or (without ``on_refused``) a case's report.json, is missing or
            malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise _fail(folder, "predictions folder not found")
    predictions = {}
    for case_id in case_ids:
        try:
            predictions[case_id] = read_report(folder / case_id / "report.json", case_id)
        except PredictionError as exc:
            if on_refused is None:
                raise
            on_refused(case_id, exc)
    return predictions


def run_pipeline(
    dataset: Dataset,
    out: str | Path,
    *,
    weights: Any = None,
    device: str = "cpu",
    progress: Progress | None = None,
    on_refused: OnRefused | None = None,
) -> dict[str, CasePrediction]:
    """Run ``liaids diagnose`` on every case, writing ``out/CASE_ID/`` (report.json, report.html, masks).

    The models are loaded once for the cohort (what :func:`liaids.pipeline.diagnose` does per study);
    clinical fields come from each case.json, as ``diagnose`` does for a case folder.

    Args:
        dataset: the dataset.
        out: folder to fill (created); normally inside the evaluation's staging folder.
        weights: model folders (see :func:`liaids.pipeline.diagnose.model_folders`).
        device: ``cpu`` or ``cuda``.
        progress: called with a message and the fraction done.
        on_refused: None: the first case the pipeline refuses (:data:`CASE_REFUSALS`: unreadable or
            ambiguous images, phases, clinical fields) stops the run. Otherwise it is called with the case
            id and the error, the case gets no folder, and the run goes on.

    Returns:
        Case id -> prediction, read back from the written report.json files (refused cases left out).
    """
    import shutil
    from dataclasses import replace

    from liaids.pipeline.diagnose import DiagnosisModels, check_device, run_diagnosis
    from liaids.pipeline.inputs import as_clinical_input, resolve_clinical, resolve_input
    from liaids.report import write_report_folder

    report = progress or (lambda _m, _f: None)
    out = Path(out)
    t0 = time.perf_counter()
    models = DiagnosisModels.load(weights, check_device(device))
    load_s = time.perf_counter() - t0
    predictions = {}
    n_cases = max(len(dataset.case_ids), 1)
    for n, case_id in enumerate(dataset.case_ids):
        report(f"diagnosing {case_id} ({n + 1}/{n_cases})", n / n_cases)
        started = time.perf_counter()
        folder = out / case_id
        try:
            study_input = resolve_input(dataset.root / case_id)
            clinical = resolve_clinical(
                as_clinical_input(None),
                case_values=study_input.case_clinical,
                case_source=study_input.case_json,
                dicom=study_input.patient,
                required=models.classifier.network.config.uses_clinical,
            )
            read_s = time.perf_counter() - started
            diagnosis = run_diagnosis(study_input, clinical, models)
            # Model loading is shared by the cohort: its time is reported once, in the first case run.
            timings = {"load_models": 0.0 if predictions else load_s, "read": read_s, **diagnosis.timings}
            folder.mkdir(parents=True, exist_ok=False)
            path = write_report_folder(replace(diagnosis, timings=timings), folder, started=started)
            predictions[case_id] = read_report(path, case_id)
        except CASE_REFUSALS as exc:
            if on_refused is None:
                raise
            shutil.rmtree(folder, ignore_errors=True)  # nothing half-written stays behind
            on_refused(case_id, exc)
    return predictions


# --------------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------------


def judged_phases(lesion: TrueLesion, match_phase: str = "any") -> tuple[str, ...]:
    """Phases in which hits on a true lesion are judged (see the module docstring)."""
    if match_phase not in MATCH_PHASES:
        raise LiaidsError(f"unknown match phase {match_phase!r}; expected one of {', '.join(MATCH_PHASES)}")
    visible = lesion.visible_in
    if match_phase == "any" or match_phase not in visible:
        return visible
    return (match_phase,)


@dataclass(frozen=True)
class CaseMatch:
    """Matching of one case.

    Attributes:
        scan: lesion and detection records (indices = positions in the truth's and the prediction's
            lesion lists), as :func:`liaids.evaluate.detection.match_scan` makes them.
        lesion_phase: per true lesion, the phase of its hit with the classifying prediction ("" if none).
        detection_phase: per prediction, the phase of its hit with ``matched_lesion`` ("" if none).
        n_hitting: per true lesion, the number of counted predictions hitting it.
        classifies: per prediction, indices of the true lesions it classifies.
    """

    scan: ScanMatch
    lesion_phase: tuple[str, ...]
    detection_phase: tuple[str, ...]
    n_hitting: tuple[int, ...]
    classifies: tuple[tuple[int, ...], ...]


def match_case(
    truth: CaseTruth,
    prediction: CasePrediction,
    *,
    match_phase: str = "any",
    iou_threshold: float = 0.3,
    iom_threshold: float = 0.5,
    size_cutoff_mm: float = SMALL_LESION_MM,
    score_threshold: float = 0.0,
) -> CaseMatch:
    """Match one case's predicted lesions to its true lesions (rules in the module docstring).

    Args:
        truth: the ground truth.
        prediction: the prediction of the same case.
        match_phase: ``any`` or a reference phase.
        iou_threshold, iom_threshold: the hit rule (paper: 0.3, 0.5; both strict).
        size_cutoff_mm: boundary of the size strata (paper: 1 cm).
        score_threshold: a prediction counts when ``detection_score >= score_threshold``.

    Returns:
        The match.

    Raises:
        PredictionError: the prediction was made on voxel grids other than the masks'.
    """
    if truth.shapes and prediction.shapes:
        for p in PHASES:
            if tuple(truth.shapes[p]) != tuple(prediction.shapes[p]):
                raise _fail(
                    prediction.source,
                    f"the {p} phase is {list(prediction.shapes[p])} voxels, the case's lesion mask "
                    f"{list(truth.shapes[p])}: boxes are not comparable",
                )
    gts, preds = truth.lesions, prediction.lesions
    n, m = len(preds), len(gts)
    judged = [judged_phases(g, match_phase) for g in gts]
    hit = np.zeros((n, m), bool)
    best_key = np.full((n, m), -1.0)  # IoU of the best hitting phase so far
    iou = np.full((n, m), np.nan)
    iom = np.full((n, m), np.nan)
    phase_of = np.full((n, m), "", dtype=object)
    for p in PHASES:
        cols = [j for j in range(m) if p in judged[j]]
        rows = [i for i in range(n) if p in preds[i].boxes]
        if not cols or not rows:
            continue
        a = box_iou_3d([preds[i].boxes[p] for i in rows], [gts[j].boxes[p] for j in cols])
        b = box_iom_3d([preds[i].boxes[p] for i in rows], [gts[j].boxes[p] for j in cols])
        h = (a > iou_threshold) | (b > iom_threshold)
        for r, i in enumerate(rows):
            for c, j in enumerate(cols):
                if h[r, c] and a[r, c] > best_key[i, j]:
                    hit[i, j] = True
                    best_key[i, j], iou[i, j], iom[i, j], phase_of[i, j] = a[r, c], a[r, c], b[r, c], p
    scores = np.array([d.detection_score for d in preds], dtype=float)
    counted = scores >= score_threshold

    lesion_records, lesion_phase, n_hitting = [], [], []
    classifies: list[list[int]] = [[] for _ in range(n)]
    for j, g in enumerate(gts):
        hitters = np.flatnonzero(hit[:, j])
        if hitters.size:
            d = int(hitters[np.argmax(scores[hitters])])  # argmax keeps the lowest index on ties
            best, ov_iou, ov_iom, ph = float(scores[d]), float(iou[d, j]), float(iom[d, j]), phase_of[d, j]
        else:
            d, best, ov_iou, ov_iom, ph = -1, math.nan, math.nan, math.nan, ""
        detected = bool(hitters.size) and best >= score_threshold
        if detected:
            classifies[d].append(j)
        lesion_records.append(
            LesionRecord(
                scan_id=truth.case_id,
                lesion_index=j,
                diameter_mm=float(g.diameter_mm),
                size_stratum=size_stratum(float(g.diameter_mm), size_cutoff_mm),
                detected=detected,
                best_score=best,
                matched_detection=d,
                iou=ov_iou,
                iom=ov_iom,
            )
        )
        lesion_phase.append(ph if detected else "")
        n_hitting.append(int((hit[:, j] & counted).sum()))
    detection_records, detection_phase = [], []
    for i in range(n):
        is_tp = bool(hit[i].any())
        if is_tp:
            j = int(np.argmax(np.where(hit[i], iou[i], -1.0)))
            ov_iou, ov_iom, ph = float(iou[i, j]), float(iom[i, j]), phase_of[i, j]
        else:
            j, ov_iou, ov_iom, ph = -1, math.nan, math.nan, ""
        detection_records.append(
            DetectionRecord(
                scan_id=truth.case_id,
                detection_index=i,
                score=float(scores[i]),
                counted=bool(counted[i]),
                hit=is_tp,
                outcome=("TP" if is_tp else "FP") if counted[i] else "below_threshold",
                matched_lesion=j,
                iou=ov_iou,
                iom=ov_iom,
            )
        )
        detection_phase.append(ph)
    return CaseMatch(
        scan=ScanMatch(truth.case_id, tuple(lesion_records), tuple(detection_records)),
        lesion_phase=tuple(lesion_phase),
        detection_phase=tuple(detection_phase),
        n_hitting=tuple(n_hitting),
        classifies=tuple(tuple(c) for c in classifies),
    )


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def patient_truth(lesions: Sequence[TrueLesion]) -> tuple[str, int | None]:
    """The true patient-level class and the lesion deciding it.

    Args:
        lesions: the patient's true lesions.

    Returns:
        ``(class, lesion_id)``: the type of the most severe lesion (malignant before benign, then the
        larger diameter, then the lower id), or ``("NONE", None)`` without lesions.
    """
    if not lesions:
        return NO_LESION, None
    worst = max(lesions, key=lambda g: (g.malignant, g.diameter_mm, -g.lesion_id))
    return worst.lesion_type, worst.lesion_id


def _strata_columns(acquisition: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (key, _bands, _unit) in STRATIFIERS.items():
        if name != "centre":
            value = acquisition.get(key)
            out[key] = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        out[f"{name}_stratum"] = stratum_of(name, acquisition)
    return out


def _prob_columns(probabilities: Sequence[float] | None) -> dict[str, float | None]:
    if probabilities is None:
        return {f"p_{t}": None for t in LESION_TYPES}
    return {f"p_{t}": float(p) for t, p in zip(LESION_TYPES, probabilities, strict=True)}


def derived_call(lesion: PredictedLesion) -> tuple[str | None, float | None]:
    """The lesion's type and malignant probability as the statistics see them.

    Computed from the seven probabilities as given (report.json rounds them to 4 decimals): the type is the
    arg-max (ties: the first in :data:`LESION_TYPES` order) and the malignant probability the sum of the
    HCC, ICC and HM probabilities, exactly what :func:`liaids.evaluate.statistics.classification_report`
    uses, so that every table cell agrees with metrics.json. Both agree with the report's own fields up to
    that rounding.

    Returns:
        ``(type, malignant probability)``, ``(None, None)`` for a detection-only prediction.
    """
    if lesion.probabilities is None:
        return None, None
    probs = np.asarray(lesion.probabilities, dtype=float)
    malignant = float(sum(probs[LESION_TYPES.index(t)] for t in LESION_TYPES if t in MALIGNANT_TYPES))
    return LESION_TYPES[int(np.argmax(probs))], malignant


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass(frozen=True)
class CohortTables:
    """Rows of the three per-cohort tables (CSV-ready dicts; None = empty cell).

    Attributes:
        lesions: one row per true lesion (:data:`LESION_COLUMNS`).
        detections: one row per predicted lesion (:data:`DETECTION_COLUMNS`).
        patients: one row per case (:data:`PATIENT_COLUMNS`).
        matches: the case matches behind them, in case order.
    """

    lesions: list[dict[str, Any]]
    detections: list[dict[str, Any]]
    patients: list[dict[str, Any]]
    matches: list[CaseMatch]


_STRATA_COLUMNS = ("slice_thickness_mm", "slice_thickness_stratum", "mas", "mas_stratum", "centre_stratum")
#: Columns of lesions.csv.
LESION_COLUMNS: tuple[str, ...] = (
    "case_id",
    "lesion_id",
    "true_type",
    "true_malignant",
    "diameter_mm",
    "diameter_source",
    "size_stratum",
    "visible_in",
    "detected",
    "n_hitting_predictions",
    "pred_lesion_id",
    "match_phase",
    "iou",
    "iom",
    "detection_score",
    "pred_type",
    *(f"p_{t}" for t in LESION_TYPES),
    "malignant_probability",
    "pred_malignant",
    "correct_seven",
    "correct_binary",
    *_STRATA_COLUMNS,
)
#: Columns of detections.csv.
DETECTION_COLUMNS: tuple[str, ...] = (
    "case_id",
    "pred_lesion_id",
    "detection_score",
    "outcome",
    "role",
    "matched_lesion_id",
    "classifies",
    "match_phase",
    "iou",
    "iom",
    "pred_type",
    "malignant_probability",
    "category",
    "diameter_mm",
    "found_in",
)
#: Columns of patients.csv.
PATIENT_COLUMNS: tuple[str, ...] = (
    "case_id",
    "n_true_lesions",
    "true_types",
    "true_class",
    "true_deciding_lesion",
    "true_malignant",
    "n_pred_lesions",
    "pred_class",
    "pred_malignancy",
    "pred_malignant",
    "correct_seven",
    "correct_binary",
    "pred_class_in_true_types",
    "triage_risk",
    "triage_score",
    "triage_threshold",
    "n_detected",
    "n_missed",
    "n_false_positives",
    "n_duplicates",
    "n_below_threshold",
    *_STRATA_COLUMNS,
)


def build_tables(
    truths: Mapping[str, CaseTruth],
    predictions: Mapping[str, CasePrediction],
    *,
    match_phase: str = "any",
    iou_threshold: float = 0.3,
    iom_threshold: float = 0.5,
    size_cutoff_mm: float = SMALL_LESION_MM,
    score_threshold: float = 0.0,
    binary_threshold: float = 0.5,
) -> CohortTables:
    """Match every case and build the lesion, detection and patient tables.

    Lesion rows: classification columns (``pred_*``, ``p_*``, ``correct_*``) are filled only for detected
    lesions (empty for missed ones). ``pred_malignant`` is ``malignant_probability >= binary_threshold``
    (the lesion-level binary call of :func:`liaids.evaluate.statistics.classification_report`).

    Detection rows: ``role`` is ``classifies`` (the prediction classifying one or more true lesions, listed
    in ``classifies``), ``duplicate`` (hits a lesion classified by another prediction), ``false_positive``
    (hits nothing) or ``below_threshold`` (score below ``score_threshold``).

    Args:
        truths: case id -> ground truth (its order is the table order).
        predictions: case id -> prediction; every case of ``truths`` needs one.
        match_phase, iou_threshold, iom_threshold, size_cutoff_mm, score_threshold: see :func:`match_case`.
        binary_threshold: malignant probability of a malignant lesion-level call.

    Returns:
        The tables.

    Raises:
        PredictionError: a case without prediction, or one made on other voxel grids.
    """
    lesion_rows: list[dict[str, Any]] = []
    detection_rows: list[dict[str, Any]] = []
    patient_rows: list[dict[str, Any]] = []
    matches = []
    for case_id, truth in truths.items():
        if case_id not in predictions:
            raise PredictionError(f"no prediction for case {case_id}")
        pred = predictions[case_id]
        match = match_case(
            truth,
            pred,
            match_phase=match_phase,
            iou_threshold=iou_threshold,
            iom_threshold=iom_threshold,
            size_cutoff_mm=size_cutoff_mm,
            score_threshold=score_threshold,
        )
        matches.append(match)
        strata = _strata_columns(truth.acquisition)
        for j, (g, rec) in enumerate(zip(truth.lesions, match.scan.lesions, strict=True)):
            d = pred.lesions[rec.matched_detection] if rec.detected else None
            d_type, d_mal = (None, None) if d is None else derived_call(d)
            pred_mal = None if d_mal is None else bool(d_mal >= binary_threshold)
            lesion_rows.append(
                {
                    "case_id": case_id,
                    "lesion_id": g.lesion_id,
                    "true_type": g.lesion_type,
                    "true_malignant": g.malignant,
                    "diameter_mm": g.diameter_mm,
                    "diameter_source": g.diameter_source,
                    "size_stratum": rec.size_stratum,
                    "visible_in": "|".join(g.visible_in),
                    "detected": rec.detected,
                    "n_hitting_predictions": match.n_hitting[j],
                    "pred_lesion_id": None if d is None else d.lesion_id,
                    "match_phase": match.lesion_phase[j] or None,
                    "iou": None if d is None else _finite(rec.iou),
                    "iom": None if d is None else _finite(rec.iom),
                    "detection_score": None if d is None else d.detection_score,
                    "pred_type": d_type,
                    **_prob_columns(None if d is None else d.probabilities),
                    "malignant_probability": d_mal,
                    "pred_malignant": pred_mal,
                    "correct_seven": None if d_type is None else d_type == g.lesion_type,
                    "correct_binary": None if pred_mal is None else pred_mal == g.malignant,
                    **strata,
                }
            )
        roles = []
        for i, (d, rec) in enumerate(zip(pred.lesions, match.scan.detections, strict=True)):
            if not rec.counted:
                role = "below_threshold"
            elif match.classifies[i]:
                role = "classifies"
            else:
                role = "duplicate" if rec.hit else "false_positive"
            roles.append(role)
            detection_rows.append(
                {
                    "case_id": case_id,
                    "pred_lesion_id": d.lesion_id,
                    "detection_score": d.detection_score,
                    "outcome": rec.outcome,
                    "role": role,
                    "matched_lesion_id": truth.lesions[rec.matched_lesion].lesion_id if rec.hit else None,
                    "classifies": "|".join(str(truth.lesions[j].lesion_id) for j in match.classifies[i])
                    or None,
                    "match_phase": match.detection_phase[i] or None,
                    "iou": _finite(rec.iou),
                    "iom": _finite(rec.iom),
                    "pred_type": derived_call(d)[0],
                    "malignant_probability": derived_call(d)[1],
                    "category": d.category,
                    "diameter_mm": d.diameter_mm,
                    "found_in": "|".join(d.found_in) or None,
                }
            )
        true_class, deciding = patient_truth(truth.lesions)
        true_malignant = any(g.malignant for g in truth.lesions)
        pred_class = pred.diagnosis or NO_LESION
        pred_malignant = pred_class in MALIGNANT_TYPES
        true_types = sorted({g.lesion_type for g in truth.lesions}, key=LESION_TYPES.index)
        patient_rows.append(
            {
                "case_id": case_id,
                "n_true_lesions": len(truth.lesions),
                "true_types": "|".join(true_types) or None,
                "true_class": true_class,
                "true_deciding_lesion": deciding,
                "true_malignant": true_malignant,
                "n_pred_lesions": len(pred.lesions),
                "pred_class": pred_class,
                "pred_malignancy": pred.malignancy,
                "pred_malignant": pred_malignant,
                "correct_seven": pred_class == true_class,
                "correct_binary": pred_malignant == true_malignant,
                "pred_class_in_true_types": pred_class in (true_types or [NO_LESION]),
                "triage_risk": pred.triage_risk,
                "triage_score": pred.triage_score,
                "triage_threshold": pred.triage_threshold,
                "n_detected": sum(r.detected for r in match.scan.lesions),
                "n_missed": sum(not r.detected for r in match.scan.lesions),
                "n_false_positives": roles.count("false_positive"),
                "n_duplicates": roles.count("duplicate"),
                "n_below_threshold": roles.count("below_threshold"),
                **strata,
            }
        )
    return CohortTables(lesion_rows, detection_rows, patient_rows, matches)


# --------------------------------------------------------------------------------------------------
# Model passes on the ground truth (t-SNE features, ablations)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TruthBoxPredictions:
    """One classifier's answers on the true lesion boxes of a cohort.

    Attributes:
        case_ids, lesion_ids: the lesion of each row ``[n]``.
        labels: true class index in :data:`LESION_TYPES` ``[n]``.
        probabilities: ``[n, 7]``.
        features: image features ``[n, D]``; None for a clinical-only classifier.
        size_strata: ``"<10mm"`` / ``">=10mm"`` of each lesion ``[n]``.
    """

    case_ids: np.ndarray
    lesion_ids: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    features: np.ndarray | None
    size_strata: np.ndarray


def truth_boxes_all_phases(case: Any, truth: CaseTruth) -> list[dict[str, BBox]]:
    """Per true lesion, a box in every phase: its mask box, or, where its mask is empty, the box moved there
    from the first phase of PV, ART, NC that shows it, through the liver alignment of the true liver masks
    (as the classifier's training does).

    Args:
        case: the loaded :class:`liaids.dataset.Case`.
        truth: its ground truth.

    Returns:
        One ``phase -> bbox_ijk`` mapping per lesion of ``truth``.
    """
    from liaids.classification.matching import align_livers

    volumes = case.study.phases
    alignment = None
    out = []
    for g in truth.lesions:
        boxes: dict[str, BBox] = {}
        source = next(p for p in _FALLBACK_ORDER if g.boxes.get(p) is not None)
        for p in PHASES:
            box = g.boxes.get(p)
            if box is None:
                alignment = alignment or align_livers(volumes, case.liver)
                box = tuple(int(v) for v in alignment.transfer(g.boxes[source], source, p, volumes))
            boxes[p] = box  # type: ignore[assignment]
        out.append(boxes)
    return out


def classify_truth_boxes(
    dataset: Dataset,
    truths: Mapping[str, CaseTruth],
    classifiers: Mapping[str, Any],
    *,
    size_cutoff_mm: float = SMALL_LESION_MM,
    progress: Progress | None = None,
) -> dict[str, TruthBoxPredictions]:
    """Run classifiers on the true lesion boxes (each case's images are read once for all classifiers).

    Isolates the classifier from detection: used for the t-SNE of image features and for the classifier
    ablations (image-only, clinical-only, concatenation), all on the same lesions.

    Args:
        dataset: the dataset.
        truths: case id -> ground truth (cases without lesions are skipped).
        classifiers: name -> :class:`liaids.classification.predictor.LesionClassifier`.
        size_cutoff_mm: boundary of the size strata.
        progress: called with a message and the fraction done.

    Returns:
        Name -> predictions, lesions in case and case.json order.
    """
    rows: dict[str, list[tuple[Any, ...]]] = {name: [] for name in classifiers}
    cases = [c for c, t in truths.items() if t.lesions]
    for n, case_id in enumerate(cases):
        if progress:
            progress(f"classifying the true lesions of {case_id}", n / max(len(cases), 1))
        truth = truths[case_id]
        case = dataset.load_case(case_id)
        boxes = truth_boxes_all_phases(case, truth)
        for name, clf in classifiers.items():
            preds = clf.classify(case.study, boxes, case.info.clinical)
            for g, pred in zip(truth.lesions, preds, strict=True):
                probs = [pred.probabilities[t] for t in LESION_TYPES]
                rows[name].append((case_id, g, probs, pred.image_features))
    out = {}
    for name, items in rows.items():
        feats = [f for *_, f in items]
        out[name] = TruthBoxPredictions(
            case_ids=np.array([c for c, *_ in items], dtype=object),
            lesion_ids=np.array([g.lesion_id for _, g, *_ in items], dtype=np.int64),
            labels=np.array([LESION_TYPES.index(g.lesion_type) for _, g, *_ in items], dtype=np.int64),
            probabilities=np.array([p for _, _, p, _ in items], dtype=float).reshape(-1, len(LESION_TYPES)),
            features=np.stack(feats).astype(float) if feats and all(f is not None for f in feats) else None,
            size_strata=np.array(
                [size_stratum(g.diameter_mm, size_cutoff_mm) for _, g, *_ in items], dtype=object
            ),
        )
    return out


def detect_with_true_livers(
    dataset: Dataset,
    case_ids: Sequence[str],
    detectors: Mapping[str, Any],
    progress: Progress | None = None,
) -> dict[str, dict[str, CasePrediction]]:
    """Run detectors on every case with the dataset's liver masks, then match the phases as diagnose does.

    Isolates the detector from the liver segmentation, so that detectors (e.g. the 3D CSWin and the 2D
    backbone) are compared on the same livers. The predictions carry boxes and scores only.

    Args:
        dataset: the dataset.
        case_ids: cases to run.
        detectors: name -> :class:`liaids.detection.predictor.LesionDetector`.
        progress: called with a message and the fraction done.

    Returns:
        Name -> case id -> detection-only prediction.
    """
    from liaids.classification.matching import PhaseBox, match_lesions

    out: dict[str, dict[str, CasePrediction]] = {name: {} for name in detectors}
    for n, case_id in enumerate(case_ids):
        if progress:
            progress(f"detecting lesions of {case_id} with true livers", n / max(len(case_ids), 1))
        case = dataset.load_case(case_id)
        volumes = case.study.phases
        shapes = {p: tuple(int(v) for v in reversed(volumes[p].shape)) for p in PHASES}
        for name, detector in detectors.items():
            per_phase = {
                p: [
                    PhaseBox(tuple(d.bbox_ijk), float(d.score))
                    for d in detector.detect(volumes[p], case.liver[p])
                ]
                for p in PHASES
            }
            matched = match_lesions(per_phase, volumes, case.liver)
            lesions = tuple(
                PredictedLesion(
                    lesion_id=k + 1,
                    detection_score=float(les.score),
                    boxes={p: tuple(int(v) for v in les.boxes[p]) for p in PHASES},  # type: ignore[misc]
                    found_in=tuple(p for p in PHASES if les.found[p]),
                )
                for k, les in enumerate(matched)
            )
            out[name][case_id] = CasePrediction(case_id, lesions, shapes=shapes)  # type: ignore[arg-type]
    return out
