"""report.json: the machine-readable result of ``liaids diagnose``, schema ``liaids.diagnosis``.

The schema is versioned (``version``, major.minor): a minor version only adds fields, a major version
renames or removes some. Every field is described in docs/report-schema.md.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liaids.codes import LESION_TYPE_NAMES, LESION_TYPES, PHASES, is_malignant
from liaids.detection.predictor import NOT_FOR_CLINICAL_USE
from liaids.provenance import software

if TYPE_CHECKING:
    from liaids.pipeline.diagnose import Diagnosis, LesionFinding, TriageFinding

SCHEMA = "liaids.diagnosis"
SCHEMA_VERSION = "2.3"
#: Lesion voxels of the instance masks, as written into report.json.
LESION_MASK_RULE = (
    "voxels of the lesion's box labelled lesion (2) by the liver segmentation of that phase; the ellipsoid "
    "inscribed in the box when the segmentation labels none there; lesions painted by id, never overwriting "
    "one another"
)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def output_files() -> dict[str, Any]:
    """Names of the files of OUTDIR, relative to it."""
    return {
        "report_json": "report.json",
        "report_html": "report.html",
        "liver": {p: f"liver_{p}.nii.gz" for p in PHASES},
        "lesions": {p: f"lesions_{p}.nii.gz" for p in PHASES},
    }


def _phase_entry(diagnosis: Diagnosis, phase: str) -> dict[str, Any]:
    volume = diagnosis.input.study[phase]
    meta = volume.meta
    liver = diagnosis.livers[phase].array > 0
    return {
        "source": diagnosis.input.sources.get(phase),
        "series_uid": meta.get("SeriesInstanceUID") or None,
        "series_number": meta.get("SeriesNumber") if meta.get("SeriesNumber") not in ("", None) else None,
        "series_description": meta.get("SeriesDescription") or None,
        "shape_ijk": [int(v) for v in reversed(volume.shape)],
        "spacing_mm": [_round(v, 5) for v in volume.spacing],
        "origin_mm": [_round(v, 5) for v in volume.origin],
        "direction": [_round(v, 6) for v in volume.direction],
        "liver_volume_ml": round(
            float(liver.sum()) * float(volume.spacing[0] * volume.spacing[1] * volume.spacing[2]) / 1000.0, 1
        ),
        "detections": len(diagnosis.detections[phase]),
    }


def _lesion_entry(finding: LesionFinding) -> dict[str, Any]:
    pred = finding.prediction
    phases = {}
    for p in PHASES:
        m = finding.phases[p]
        phases[p] = {
            "bbox_ijk": [int(v) for v in m.bbox_ijk],
            "found": m.found,
            "detection_score": _round(m.detection_score),
            "mask": m.mask,
            "voxels": m.voxels,
            "volume_ml": _round(m.volume_ml, 3),
            "diameter_mm": _round(m.diameter_mm, 1),
        }
    own = pred.lesion_probabilities
    return {
        "id": finding.lesion_id,
        "type": pred.lesion_type,
        "type_name": LESION_TYPE_NAMES[pred.lesion_type],
        "malignant_type": is_malignant(pred.lesion_type),
        "category": finding.category,
        "probabilities": {t: _round(pred.probabilities[t]) for t in LESION_TYPES},
        "lesion_probabilities": None if own is None else {t: _round(own[t]) for t in LESION_TYPES},
        "malignant_probability": _round(pred.malignant_probability),
        "detection_score": _round(finding.match.score),
        "detector_score": _round(
            max((v for v in finding.match.scores.values() if v is not None), default=finding.match.score)
        ),
        "diameter_mm": _round(finding.diameter_mm, 1),
        "volume_ml": _round(finding.volume_ml, 3),
        "measured_in": finding.measured_in,
        "found_in": [p for p in PHASES if finding.phases[p].found],
        "phases": phases,
    }


def _finding_entry(finding: TriageFinding) -> dict[str, Any]:
    call = finding.call
    return {
        "id": f"F{finding.finding_id}",
        "type": call.lesion_type,
        "category": finding.category,
        "malignant_probability": _round(call.malignant_probability),
        "probabilities": {t: _round(finding.probabilities[t]) for t in LESION_TYPES},
        "detection_score": _round(finding.match.score),
        "found_in": [p for p in PHASES if finding.match.found[p]],
        "phases": {
            p: {"bbox_ijk": [int(v) for v in finding.match.boxes[p]], "found": bool(finding.match.found[p])}
            for p in PHASES
        },
    }


def build_report(diagnosis: Diagnosis, timings: dict[str, float] | None = None) -> dict[str, Any]:
    """The report.json content of a run.

    Args:
        diagnosis: the run's result.
        timings: stage -> seconds to report (default: ``diagnosis.timings``); a ``total`` entry is kept.

    Returns:
        A JSON-serialisable mapping (schema ``liaids.diagnosis``, version :data:`SCHEMA_VERSION`).
    """
    decision = diagnosis.decision
    inp = diagnosis.input
    deciding = next((f for f in diagnosis.lesions if f.lesion_id == decision.deciding_lesion), None)
    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "notice": NOT_FOR_CLINICAL_USE,
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "software": software(diagnosis.device),
        "input": {"kind": inp.kind, "path": str(inp.source)},
        "study": {
            "patient_id": inp.patient.get("patient_id"),
            "study_uid": inp.patient.get("study_uid"),
            "case_id": inp.patient.get("case_id"),
            "phase_assignment": {
                "method": inp.assignment.get("method"),
                "evidence": {p: list(v) for p, v in inp.assignment.get("evidence", {}).items()},
                "overridden": list(inp.assignment.get("overridden", [])),
                "warnings": list(inp.assignment.get("warnings", [])),
            },
        },
        "phases": {p: _phase_entry(diagnosis, p) for p in PHASES},
        "clinical": diagnosis.clinical.to_dict(),
        "lesions": [_lesion_entry(f) for f in diagnosis.lesions],
        "lesion_masks": {"rule": LESION_MASK_RULE, "instance_id": "lesion id (0 = background)"},
        "diagnosis": {
            "lesion_count": len(diagnosis.lesions),
            "diagnosis": decision.diagnosis,
            "diagnosis_name": decision.diagnosis_name,
            "malignancy": decision.malignancy,
            "deciding_lesion": decision.deciding_lesion,
            "malignant_probability": _round(deciding.prediction.malignant_probability) if deciding else None,
        },
        "triage": {
            "risk": decision.risk,
            "reason": decision.reason,
            "score": _round(decision.triage_score),
            "threshold": diagnosis.triage.threshold,
            "threshold_source": diagnosis.triage.source,
            "target_npv": diagnosis.triage.target_npv,
            "threshold_details": dict(diagnosis.triage.details),
            "rule": (
                "low risk when no lesion, or every lesion is of a benign type with malignant probability "
                "below the threshold; high risk otherwise"
                + (
                    "; the findings (candidates below the reporting threshold scoring at least the triage's "
                    "detection threshold, each classified on its own) count as lesions here"
                    if diagnosis.triage.detection_threshold is not None
                    else ""
                )
            ),
            "detection_threshold": diagnosis.triage.detection_threshold,
            "findings": [_finding_entry(f) for f in diagnosis.triage_findings],
        },
        "warnings": list(diagnosis.warnings),
        "timings_s": {k: round(float(v), 3) for k, v in (timings or diagnosis.timings).items()},
        "models": {role: dict(src) for role, src in diagnosis.models.items()},
        "outputs": output_files(),
    }


def write_report_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write report.json (indented, strict JSON: a NaN is a bug and raises).

    Args:
        report: :func:`build_report`'s result.
        path: destination file.

    Returns:
        ``path``.
    """
    from liaids.io.atomic import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(report, indent=1, allow_nan=False) + "\n")
    return path
