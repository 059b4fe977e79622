"""The end-to-end job behind ``liaids diagnose``: one triple-phase CT study in, a report folder out.

Stages, in order::

    INPUT -> Study (NC, ART, PV) + clinical fields              pipeline/inputs.py
    liver segmentation per phase                                segmentation/predictor.py
    lesion detection per phase; candidates outside the liver dropped (inside the detector)
    cross-phase matching: one lesion = one box per phase, found or transferred   classification/matching.py
    verification on the three phases (vessels out), when the detector has one  classification/verification.py
    classification of each lesion (7 types, clinical fields fused)              classification/predictor.py
    lesion instance masks and sizes; patient decision and triage                pipeline/decision.py
    OUTDIR: report.json, report.html, liver_{P}.nii.gz, lesions_{P}.nii.gz      report/

:func:`diagnose` is the Python form of the command; its keyword arguments are the command's options.
OUTDIR appears only when everything succeeded (it is written in a hidden staging folder and renamed).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from liaids.classification.matching import MatchedLesion, PhaseBox, match_lesions
from liaids.classification.predictor import DEFAULT_MODEL as CLASSIFIER_DEFAULT
from liaids.classification.predictor import MODEL_KIND as CLASSIFIER_KIND
from liaids.classification.predictor import LesionClassifier, LesionPrediction
from liaids.classification.verification import (
    VERIFIED_SCORE,
    VERIFIER_FILE,
    LesionVerifier,
    study_liver_hu,
)
from liaids.clinical import ClinicalInfo
from liaids.codes import PHASES
from liaids.detection.predictor import DEFAULT_MODEL as DETECTOR_DEFAULT
from liaids.detection.predictor import MODEL_KIND as DETECTOR_KIND
from liaids.detection.predictor import DetectedLesion, LesionDetector
from liaids.errors import LiaidsError, ModelLoadError, StudyReadError
from liaids.model_store import builtin_model_dir, sha256
from liaids.pipeline.decision import (
    DEFAULT_TARGET_NPV,
    FALLBACK_TRIAGE_THRESHOLD,
    LesionCall,
    PatientDecision,
    TriageSettings,
    call_from_own_probabilities,
    check_threshold,
    decide,
)
from liaids.pipeline.inputs import (
    ClinicalInput,
    ResolvedClinical,
    StudyInput,
    as_clinical_input,
    resolve_clinical,
    resolve_input,
)
from liaids.segmentation.predictor import DEFAULT_MODEL as LIVER_DEFAULT
from liaids.segmentation.predictor import LESION, LiverSegmenter
from liaids.segmentation.predictor import MODEL_KIND as LIVER_KIND
from liaids.segmentation.refinement import REFINEMENT_DIR
from liaids.types import Volume

Progress = Callable[[str, float], None]
WeightsArg = str | Path | Sequence[str | Path] | Mapping[str, str | Path | None] | None

#: The three models, by role: (config kind, shipped default folder name).
MODEL_ROLES: dict[str, tuple[str, str]] = {
    "liver": (LIVER_KIND, LIVER_DEFAULT),
    "detector": (DETECTOR_KIND, DETECTOR_DEFAULT),
    "classifier": (CLASSIFIER_KIND, CLASSIFIER_DEFAULT),
}
_ROLE_OF_KIND = {kind: role for role, (kind, _) in MODEL_ROLES.items()}
TRIAGE_FILE = "triage.json"
DEVICES: tuple[str, ...] = ("cpu", "cuda")


# --------------------------------------------------------------------------------------------------
# Models and the triage threshold
# --------------------------------------------------------------------------------------------------


def model_folders(weights: WeightsArg = None) -> dict[str, Path]:
    """Which model folder each role uses.

    Args:
        weights: None (the shipped models); a model folder (its ``config.json`` kind says which role it
            fills); a bundle folder with ``liver/``, ``detector/`` and/or ``classifier/`` model folders;
            a sequence of such folders; or a mapping role -> folder. Roles left open use the shipped model.

    Returns:
        Role -> model folder, for ``liver``, ``detector`` and ``classifier``.

    Raises:
        ModelLoadError: an unknown role, a folder that is neither a model folder nor a bundle, or two
            folders for one role.
    """
    chosen: dict[str, Path] = {}

    def put(role: str, folder: Path) -> None:
        if role in chosen and chosen[role] != folder:
            raise ModelLoadError(f"two {role} models given ({chosen[role]} and {folder})", folder)
        chosen[role] = folder

    if isinstance(weights, Mapping):
        for role, folder in weights.items():
            if role not in MODEL_ROLES:
                raise ModelLoadError(f"unknown model role {role!r}; expected one of {', '.join(MODEL_ROLES)}")
            if folder is not None:
                put(role, Path(folder))
    elif weights is not None:
        folders = [Path(weights)] if isinstance(weights, str | Path) else [Path(w) for w in weights]
        for folder in folders:
            if not folder.is_dir():
                raise ModelLoadError("weights folder not found", folder)
            config = folder / "config.json"
            if config.is_file():
                try:
                    kind = json.loads(config.read_text()).get("kind")
                except (OSError, ValueError, AttributeError) as exc:
                    raise ModelLoadError(f"unreadable model configuration ({exc})", config) from exc
                if kind not in _ROLE_OF_KIND:
                    raise ModelLoadError(f"model kind {kind!r} is not used by diagnose", config)
                put(_ROLE_OF_KIND[kind], folder)
                continue
            found = [role for role in MODEL_ROLES if (folder / role).is_dir()]
            if not found:
                raise ModelLoadError(
                    "neither a model folder (config.json) nor a bundle with liver/, detector/ or "
                    "classifier/ model folders",
                    folder,
                )
            for role in found:
                put(role, folder / role)
    return {role: chosen.get(role, builtin_model_dir(default)) for role, (_, default) in MODEL_ROLES.items()}


def load_triage_settings(
    classifier_folder: Path, config: Mapping[str, Any], threshold: float | None = None
) -> TriageSettings:
    """The triage threshold: the user's, else the classifier's config, else its triage.json, else fallback.

    Args:
        classifier_folder: the classifier's model folder (may hold ``triage.json``).
        config: the classifier's ``config.json`` content (may hold a ``triage`` object).
        threshold: a threshold set by the user (``--triage-threshold``), which wins.

    Returns:
        The settings, with their source.

    Raises:
        LiaidsError: an invalid threshold in any of the sources.
    """
    if threshold is not None:
        return TriageSettings(check_threshold(threshold), "user", None)
    path = classifier_folder / TRIAGE_FILE
    data: Any = None
    source = ""
    if isinstance(config.get("triage"), Mapping):
        data, source, where = config["triage"], "classifier config", classifier_folder / "config.json"
    elif path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LiaidsError(f"not valid JSON ({exc})".splitlines()[0], path) from exc
        source, where = "triage.json", path
    if data is None:
        return TriageSettings(
            FALLBACK_TRIAGE_THRESHOLD,
            "fallback",
            None,
            {"note": "no threshold chosen on a validation cohort yet; conservative fallback"},
        )
    if not isinstance(data, Mapping) or "threshold" not in data:
        raise LiaidsError("triage settings need a 'threshold'", where)
    target = data.get("target_npv", DEFAULT_TARGET_NPV)
    details = data.get("details") if isinstance(data.get("details"), Mapping) else {}
    point = data.get("detection_threshold")
    try:
        return TriageSettings(check_threshold(data["threshold"], where), source, target, dict(details), point)
    except LiaidsError as exc:
        raise LiaidsError(exc.problem, where) from exc


def save_triage_settings(
    classifier_folder: str | Path, settings: TriageSettings, cases: Sequence[str] | None = None
) -> Path:
    """Write ``triage.json`` next to the classifier's weights (e.g. after choosing it on a validation cohort).

    Args:
        classifier_folder: the classifier's model folder.
        settings: typically :func:`liaids.pipeline.decision.triage_settings_from_validation`'s result.
        cases: the validation cases the threshold was chosen on, kept in the file (not in every report)
            so that anyone can check no model trained on them.

    Returns:
        The file written.
    """
    from liaids.io.atomic import atomic_write_text

    path = Path(classifier_folder) / TRIAGE_FILE
    data = {**settings.to_dict(), "source": "triage.json"}
    if cases is not None:
        data["cases"] = list(cases)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path


def check_device(device: str) -> str:
    """Validate ``--device``: ``cpu`` or ``cuda`` (``cuda:N`` accepted), CUDA only when available.

    Raises:
        LiaidsError: an unknown device, or CUDA asked for without a usable GPU.
    """
    name = str(device).strip().lower()
    if name not in DEVICES and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise LiaidsError(f"unknown device {device!r}; use cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LiaidsError("device cuda asked for, but no CUDA GPU is available (use --device cpu)")
    return name


@dataclass
class DiagnosisModels:
    """The three loaded models, the triage settings and where each model came from."""

    segmenter: LiverSegmenter
    detector: LesionDetector
    classifier: LesionClassifier
    triage: TriageSettings
    sources: dict[str, dict[str, Any]]
    #: Matched lesions scoring below this are not reported: the detector's operating point (its config's
    #: ``operating_point.score``, chosen on validation cases), else every candidate the detector keeps.
    lesion_threshold: float = 0.0
    #: Re-scores matched lesions from the three phases (``verifier.json`` in the detector's folder).
    verifier: LesionVerifier | None = None

    @classmethod
    def load(
        cls, weights: WeightsArg = None, device: str = "cpu", triage_threshold: float | None = None
    ) -> DiagnosisModels:
        """Load the models named by ``weights`` (see :func:`model_folders`) on ``device``.

        Raises:
            ModelLoadError: a model folder is missing, truncated (checksum) or of the wrong kind.
            LiaidsError: an invalid triage threshold.
        """
        folders = model_folders(weights)
        segmenter = LiverSegmenter.load(folders["liver"], device)
        detector = LesionDetector.load(folders["detector"], device)
        classifier = LesionClassifier.from_weights(folders["classifier"], device)
        triage = load_triage_settings(folders["classifier"], classifier.config, triage_threshold)
        sources = {}
        for role, folder in folders.items():
            config = (
                classifier.config if role == "classifier" else segmenter.config if role == "liver" else None
            )
            if config is None:  # the detector keeps no raw config; its folder was just read and verified
                config = json.loads((folder / "config.json").read_text())
            sources[role] = {
                "folder": str(folder),
                "sha256": detector.source["sha256"] if role == "detector" else sha256(folder / "model.pt"),
                "profile": config.get("profile"),
            }
        sources["detector"]["backbone"] = detector.source.get("backbone")
        if "candidate_filter" in detector.source:
            sources["detector"]["candidate_filter"] = detector.source["candidate_filter"]
        if segmenter.refiner is not None:
            refinement = folders["liver"] / REFINEMENT_DIR
            sources["liver"]["refinement"] = {
                "folder": str(refinement),
                "sha256": sha256(refinement / "model.pt"),
            }
        sources["classifier"]["variant"] = classifier.variant
        detector_config = json.loads((folders["detector"] / "config.json").read_text())
        operating = detector_config.get("operating_point") or {}
        lesion_threshold = float(operating.get("score", 0.0))
        sources["detector"]["operating_score"] = lesion_threshold
        verifier = None
        verifier_path = folders["detector"] / VERIFIER_FILE
        if verifier_path.is_file():
            verifier = LesionVerifier.load(folders["detector"])
            sources["detector"]["verifier"] = {"file": str(verifier_path), "sha256": sha256(verifier_path)}
        elif operating.get("applies_to") == VERIFIED_SCORE:
            raise ModelLoadError(
                f"the operating point applies to verified scores but {VERIFIER_FILE} is missing",
                folders["detector"],
            )
        return cls(segmenter, detector, classifier, triage, sources, lesion_threshold, verifier)


# --------------------------------------------------------------------------------------------------
# Lesion masks and sizes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseMeasurement:
    """A lesion in one phase.

    Attributes:
        bbox_ijk: the lesion's box in this phase's stored voxels (half-open).
        found: detected in this phase (False: box transferred from the other phases).
        detection_score: the detector's score here, None where not found.
        mask: ``"segmentation"`` (lesion-labelled voxels inside the box) or ``"ellipsoid"`` (the
            ellipsoid inscribed in the box, when the segmentation labels no lesion voxel there).
        voxels: voxels of the lesion in this phase's instance mask.
        volume_ml: their volume.
        diameter_mm: longest axial diameter (see :func:`axial_diameter_mm`); None for an empty mask.
    """

    bbox_ijk: tuple[int, ...]
    found: bool
    detection_score: float | None
    mask: str
    voxels: int
    volume_ml: float
    diameter_mm: float | None


@dataclass(frozen=True)
class LesionFinding:
    """One lesion of the study: its boxes and sizes per phase, the classifier's answer and its category."""

    lesion_id: int
    match: MatchedLesion
    prediction: LesionPrediction
    category: str
    phases: dict[str, PhaseMeasurement]
    measured_in: str

    @property
    def diameter_mm(self) -> float | None:
        return self.phases[self.measured_in].diameter_mm

    @property
    def volume_ml(self) -> float:
        return self.phases[self.measured_in].volume_ml


@dataclass(frozen=True)
class TriageFinding:
    """A candidate the report leaves out that the triage reads (see ``TriageSettings.detection_threshold``).

    Attributes:
        finding_id: 1..M by descending detection score (``F1``, ``F2``... in the reports).
        match: its boxes and scores per phase.
        probabilities: the classifier's seven probabilities from this candidate alone (no patient context).
        call: its type and malignant probability.
        category: ``malignant``, ``indeterminate`` or ``benign`` at the triage threshold.
    """

    finding_id: int
    match: MatchedLesion
    probabilities: dict[str, float]
    call: LesionCall
    category: str


def lesion_instance_mask(
    labels: np.ndarray, boxes: Sequence[tuple[int, Sequence[int]]]
) -> tuple[np.ndarray, dict[int, str]]:
    """Paint one phase's lesion instance mask.

    Each lesion gets the voxels its box holds that the segmentation labels as lesion; when there are none,
    the ellipsoid inscribed in the box (its axes the box's sides; a round lesion fills about that, where
    the whole box would count nearly twice its volume). Lesions are painted in the order given and never
    overwrite one another.

    Args:
        labels: the phase's segmentation ``(K, J, I)`` (1 liver, 2 lesion).
        boxes: ``(lesion_id, bbox_ijk)`` pairs, half-open stored voxel indices.

    Returns:
        ``(instances uint16 (K, J, I), lesion_id -> "segmentation" | "ellipsoid")``.
    """
    instances = np.zeros(labels.shape, np.uint16)
    sources: dict[int, str] = {}
    for lesion_id, (i0, j0, k0, i1, j1, k1) in boxes:
        region = (slice(k0, k1), slice(j0, j1), slice(i0, i1))
        view = instances[region]  # basic slicing: writes go to ``instances``
        free = view == 0
        inside = (labels[region] == LESION) & free
        if inside.any():
            view[inside] = lesion_id
            sources[lesion_id] = "segmentation"
        else:
            view[free & _inscribed_ellipsoid(view.shape)] = lesion_id
            sources[lesion_id] = "ellipsoid"
    return instances, sources


def _inscribed_ellipsoid(shape: tuple[int, ...]) -> np.ndarray:
    """Voxels of a box of ``shape`` whose centres lie in the ellipsoid touching the box's faces (never empty:
    the central voxels always do)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g + 0.5 - n / 2.0) / (n / 2.0)) ** 2 for g, n in zip(grids, shape, strict=True)) <= 1.0


def axial_diameter_mm(mask: np.ndarray, spacing: Sequence[float]) -> float | None:
    """Longest diameter in an axial slice (the RECIST measure) of a mask in canonical orientation.

    The largest distance between the centres of two edge pixels of one slice, plus one pixel (so a lesion
    of one pixel measures one pixel).

    Args:
        mask: boolean ``(K, J, I)``, ``k`` axial (a canonical volume, or a crop of one).
        spacing: voxel size ``(i, j, k)`` in mm.

    Returns:
        The diameter in mm, None for an empty mask.
    """
    si, sj = float(spacing[0]), float(spacing[1])
    best = -1.0
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        plane = mask[k]
        edge = plane & ~ndimage.binary_erosion(plane)
        jj, ii = np.nonzero(edge)
        points = np.stack([ii * si, jj * sj], axis=1)
        if len(points) > 64:
            # Only hull vertices can be farthest apart; qhull refuses collinear points, which are few.
            with contextlib.suppress(QhullError):
                points = points[ConvexHull(points).vertices]
        best = max(best, float(pdist(points).max()) if len(points) > 1 else 0.0)
    return None if best < 0 else round(best + (si + sj) / 2.0, 2)


def _box_side_mm(mask: np.ndarray, spacing: Sequence[float]) -> float | None:
    """Longer in-plane side (mm) of a canonical mask's bounding box: the major axis of an ellipsoid mask."""
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return None
    _, sj, si = found[0]
    return round(max((si.stop - si.start) * spacing[0], (sj.stop - sj.start) * spacing[1]), 2)


def measure_lesions(
    volume: Volume, instances: np.ndarray, sources: Mapping[int, str]
) -> dict[int, tuple[int, float, float | None]]:
    """Voxel count, volume (ml) and longest axial diameter (mm) of every lesion of one phase.

    Args:
        volume: the phase's CT (its geometry is used).
        instances: the phase's lesion instance mask.
        sources: lesion id -> ``"segmentation"`` or ``"ellipsoid"`` (measured by the longer side of its box:
            the RECIST rule on a few voxels would take a diagonal).

    Returns:
        Lesion id -> ``(voxels, volume_ml, diameter_mm)``.
    """
    canonical = volume.with_array(instances).to_canonical()
    spacing = canonical.spacing
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    out: dict[int, tuple[int, float, float | None]] = {}
    slices = ndimage.find_objects(canonical.array.astype(np.int32))
    for lesion_id, mask_source in sources.items():
        where = slices[lesion_id - 1] if lesion_id - 1 < len(slices) else None
        if where is None:
            out[lesion_id] = (0, 0.0, None)
            continue
        mask = canonical.array[where] == lesion_id
        n = int(mask.sum())
        diameter = (
            _box_side_mm(mask, spacing) if mask_source == "ellipsoid" else axial_diameter_mm(mask, spacing)
        )
        out[lesion_id] = (n, round(n * voxel_ml, 3), diameter)
    return out


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Diagnosis:
    """Everything one run found, before it is written out.

    Attributes:
        input: the resolved INPUT (study, phases, provenance).
        clinical: the clinical fields used.
        livers: phase -> segmentation label map (1 liver, 2 lesion) in that phase's geometry.
        instances: phase -> lesion instance mask (id = lesion id) in that phase's geometry.
        detections: phase -> the detector's lesions in that phase (liver filter applied).
        lesions: the matched, classified and measured lesions, ids 1..N by descending detection score.
        decision: patient diagnosis and triage.
        triage: the threshold used and its source.
        triage_findings: candidates below the reporting point that the triage read (empty unless the
            triage has its own detection point).
        models: role -> folder, checksum and profile of each model.
        timings: stage -> seconds.
        device: the device used.
        warnings: problems that did not stop the run (no liver in a phase, phase check vs override).
    """

    input: StudyInput
    clinical: ResolvedClinical
    livers: dict[str, Volume]
    instances: dict[str, Volume]
    detections: dict[str, list[DetectedLesion]]
    lesions: list[LesionFinding]
    decision: PatientDecision
    triage: TriageSettings
    models: dict[str, dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    warnings: list[str] = field(default_factory=list)
    triage_findings: list[TriageFinding] = field(default_factory=list)


def _measurement_phase(phases: Mapping[str, PhaseMeasurement]) -> str:
    """The phase whose mask best shows the lesion: the largest segmented one, else the best-scored find."""
    segmented = [p for p in PHASES if phases[p].mask == "segmentation" and phases[p].voxels > 0]
    if segmented:
        return max(segmented, key=lambda p: (phases[p].voxels, -PHASES.index(p)))
    found = [p for p in PHASES if phases[p].found]
    if found:
        return max(found, key=lambda p: (phases[p].detection_score or 0.0, -PHASES.index(p)))
    return "PV"


def run_diagnosis(
    study_input: StudyInput,
    clinical: ResolvedClinical,
    models: DiagnosisModels,
    progress: Progress | None = None,
) -> Diagnosis:
    """Run the pipeline on a resolved study. Reads and writes no file.

    Args:
        study_input: the study (:func:`liaids.pipeline.inputs.resolve_input`).
        clinical: the clinical fields (:func:`liaids.pipeline.inputs.resolve_clinical`).
        models: the loaded models.
        progress: called with a message and the fraction of the whole run done (0.1 -> 0.85 here).

    Returns:
        The diagnosis.

    Raises:
        LiaidsError: the liver is found in no phase (not an abdominal CT, or a failed segmentation).
    """
    report = progress or (lambda _message, _fraction: None)
    study = study_input.study
    timings: dict[str, float] = {}
    warnings = list(study_input.assignment.get("warnings", []))

    t0 = time.perf_counter()
    livers: dict[str, Volume] = {}
    for n, p in enumerate(PHASES):
        report(f"segmenting the liver ({p})", 0.1 + 0.12 * n)
        livers[p] = models.segmenter.segment(study[p])
    timings["segmentation"] = time.perf_counter() - t0
    no_liver = [p for p in PHASES if not livers[p].array.any()]
    if len(no_liver) == len(PHASES):
        raise StudyReadError(
            "no liver found in any phase: is this an abdominal CT covering the liver?", study_input.source
        )
    warnings += [f"no liver found in the {p} phase: lesions there are only transferred" for p in no_liver]

    t0 = time.perf_counter()
    detections: dict[str, list[DetectedLesion]] = {}
    for n, p in enumerate(PHASES):
        report(f"detecting lesions ({p})", 0.46 + 0.1 * n)
        detections[p] = models.detector.detect(study[p], livers[p])
    timings["detection"] = time.perf_counter() - t0

    triage_point = models.triage.detection_threshold
    reading_threshold = (
        models.lesion_threshold if triage_point is None else min(triage_point, models.lesion_threshold)
    )
    report("matching lesions across phases", 0.76)
    t0 = time.perf_counter()
    per_phase = {p: [PhaseBox(tuple(d.bbox_ijk), float(d.score)) for d in detections[p]] for p in PHASES}
    matched = match_lesions(per_phase, study.phases, livers)
    timings["matching"] = time.perf_counter() - t0
    if models.verifier is not None:
        report("verifying lesions on the three phases", 0.78)
        t0 = time.perf_counter()
        verifier = models.verifier
        # Below min_score the verified score is at most the detector's, so a lesion below min_score and
        # every point read (report, triage) cannot reach one: skip reading its features.
        floor = min(verifier.min_score, reading_threshold)
        liver_hu = study_liver_hu(study.phases, livers)
        verified = [
            replace(m, score=verifier.score_lesion(study.phases, livers, m, liver_hu))
            for m in matched
            if m.score >= floor
        ]
        matched = sorted(verified, key=lambda m: -m.score)
        timings["verification"] = time.perf_counter() - t0
    # Candidates below the detector's operating point would turn most patients into false positives; the
    # triage may still read some of them (its findings), without reporting them as lesions.
    below = sorted(
        (m for m in matched if reading_threshold <= m.score < models.lesion_threshold), key=lambda m: -m.score
    )
    matched = [m for m in matched if m.score >= models.lesion_threshold]

    report(f"classifying {len(matched)} lesion(s)", 0.8)
    t0 = time.perf_counter()
    predictions = models.classifier.classify(study, matched, clinical.info)
    # A finding is judged on its own: the others around it are mostly not lesions.
    finding_own = [
        dict(pred.lesion_probabilities or pred.probabilities)
        for pred in models.classifier.classify(study, below, clinical.info)
    ]
    finding_calls = [
        call_from_own_probabilities(n, own, m.score)
        for n, (m, own) in enumerate(zip(below, finding_own, strict=True), start=1)
    ]
    timings["classification"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ids = list(range(1, len(matched) + 1))
    instances: dict[str, Volume] = {}
    sizes: dict[str, dict[int, tuple[int, float, float | None]]] = {}
    mask_sources: dict[str, dict[int, str]] = {}
    for p in PHASES:
        boxes = [(lid, les.boxes[p]) for lid, les in zip(ids, matched, strict=True)]
        array, mask_sources[p] = lesion_instance_mask(livers[p].array, boxes)
        instances[p] = study[p].with_array(array, kind="lesion-instances")
        sizes[p] = measure_lesions(study[p], array, mask_sources[p])
    lesions: list[LesionFinding] = []
    calls = [
        LesionCall(lid, pred.lesion_type, min(max(pred.malignant_probability, 0.0), 1.0), les.score)
        for lid, les, pred in zip(ids, matched, predictions, strict=True)
    ]
    decision = decide(
        calls, models.triage.threshold, problems=warnings if no_liver else (), findings=finding_calls
    )
    triage_findings = [
        TriageFinding(call.lesion_id, m, own, call, decision.finding_categories[call.lesion_id])
        for m, own, call in zip(below, finding_own, finding_calls, strict=True)
    ]
    for lid, les, pred in zip(ids, matched, predictions, strict=True):
        phases = {
            p: PhaseMeasurement(
                bbox_ijk=tuple(int(v) for v in les.boxes[p]),
                found=bool(les.found[p]),
                detection_score=None if les.scores[p] is None else float(les.scores[p]),
                mask=mask_sources[p][lid],
                voxels=sizes[p][lid][0],
                volume_ml=sizes[p][lid][1],
                diameter_mm=sizes[p][lid][2],
            )
            for p in PHASES
        }
        lesions.append(
            LesionFinding(lid, les, pred, decision.categories[lid], phases, _measurement_phase(phases))
        )
    timings["masks_and_decision"] = time.perf_counter() - t0
    return Diagnosis(
        input=study_input,
        clinical=clinical,
        livers=livers,
        instances=instances,
        detections=detections,
        lesions=lesions,
        decision=decision,
        triage=models.triage,
        models=models.sources,
        timings=timings,
        device=str(models.segmenter.device),
        warnings=warnings,
        triage_findings=triage_findings,
    )


def _check_output_dir(out: Path, overwrite: bool) -> None:
    """Fail before any work when OUTDIR cannot be written (the staging step checks again at the end)."""
    if out.exists() and not out.is_dir():
        raise LiaidsError("output exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise LiaidsError("output folder exists and is not empty (use overwrite to replace it)", out)


def diagnose(
    input: str | Path | Sequence[str | Path] | None,
    out_dir: str | Path,
    *,
    clinical: ClinicalInput | ClinicalInfo | Mapping[str, Any] | str | Path | None = None,
    phases_override: Mapping[str, str | Path] | None = None,
    weights: WeightsArg = None,
    device: str = "cpu",
    triage_threshold: float | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Diagnose one triple-phase CT study and write the report folder (``liaids diagnose INPUT -o OUTDIR``).

    Args:
        input: INPUT: a dataset case folder, a DICOM study folder, or three volume files (NIfTI) in any
            order their names tell, else NC, ART, PV (see :mod:`liaids.pipeline.inputs`).
        out_dir: OUTDIR, created; must be absent or empty unless ``overwrite``.
        clinical: the clinical fields: :func:`liaids.pipeline.inputs.parse_clinical_options`'s result (the
            ``--clinical`` file and flags), a :class:`ClinicalInfo`, a mapping, or a JSON file. Fields not
            given come from case.json, then DICOM (age, sex).
        phases_override: ``--nc/--art/--pv``: phase -> DICOM series (folder, SeriesInstanceUID or
            SeriesNumber) or volume file.
        weights: ``--weights``: model folders (see :func:`model_folders`); default the shipped models.
        device: ``--device``: ``cpu`` or ``cuda``.
        triage_threshold: ``--triage-threshold``: operating threshold in (0, 1]; default the one stored with
            the classifier (config ``triage`` or ``triage.json``), else a conservative fallback.
        overwrite: ``--overwrite``: replace a non-empty OUTDIR (only once the run has succeeded).
        progress: called as ``progress(message, fraction)`` with fraction in [0, 1].

    Returns:
        OUTDIR, holding ``report.json``, ``report.html``, ``liver_{NC,ART,PV}.nii.gz`` and
        ``lesions_{NC,ART,PV}.nii.gz`` (see docs/report-schema.md).

    Raises:
        LiaidsError: any problem a user can act on (bad input, missing phase, clinical fields, weights,
            output folder); nothing is left in OUTDIR then.
    """
    from liaids.io.atomic import staged_output_dir
    from liaids.report import write_report_folder

    started = time.perf_counter()
    report = progress or (lambda _message, _fraction: None)
    out = Path(out_dir)
    _check_output_dir(out, overwrite)
    device = check_device(device)
    given = as_clinical_input(clinical)
    timings: dict[str, float] = {}

    report("loading models", 0.0)
    t0 = time.perf_counter()
    models = DiagnosisModels.load(weights, device, triage_threshold)
    timings["load_models"] = time.perf_counter() - t0

    report("reading the study", 0.03)
    t0 = time.perf_counter()
    study_input = resolve_input(input, phases_override)
    resolved = resolve_clinical(
        given,
        case_values=study_input.case_clinical,
        case_source=study_input.case_json,
        dicom=study_input.patient,
        required=models.classifier.network.config.uses_clinical,
    )
    timings["read"] = time.perf_counter() - t0

    diagnosis = run_diagnosis(study_input, resolved, models, report)
    diagnosis = replace(diagnosis, timings={**timings, **diagnosis.timings})  # stages in the order they ran
    report("writing the report", 0.86)
    with staged_output_dir(out, overwrite=overwrite) as stage:
        write_report_folder(diagnosis, stage, started=started)
    report("done", 1.0)
    return out
