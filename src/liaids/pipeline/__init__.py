"""The end-to-end job ``liaids diagnose``: inputs, pipeline, patient decision and triage."""

from liaids.pipeline.decision import (
    DEFAULT_TARGET_NPV,
    FALLBACK_TRIAGE_THRESHOLD,
    LesionCall,
    PatientDecision,
    TriageSettings,
    decide,
    lesion_category,
    triage_score,
    triage_settings_from_validation,
)
from liaids.pipeline.diagnose import (
    Diagnosis,
    DiagnosisModels,
    diagnose,
    load_triage_settings,
    model_folders,
    run_diagnosis,
    save_triage_settings,
)
from liaids.pipeline.inputs import (
    ClinicalInput,
    ResolvedClinical,
    StudyInput,
    parse_clinical_options,
    resolve_clinical,
    resolve_input,
)

__all__ = [
    "DEFAULT_TARGET_NPV",
    "FALLBACK_TRIAGE_THRESHOLD",
    "ClinicalInput",
    "Diagnosis",
    "DiagnosisModels",
    "LesionCall",
    "PatientDecision",
    "ResolvedClinical",
    "StudyInput",
    "TriageSettings",
    "decide",
    "diagnose",
    "lesion_category",
    "load_triage_settings",
    "model_folders",
    "parse_clinical_options",
    "resolve_clinical",
    "resolve_input",
    "run_diagnosis",
    "save_triage_settings",
    "triage_score",
    "triage_settings_from_validation",
]
