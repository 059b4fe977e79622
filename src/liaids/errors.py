"""Errors a user can act on: each names the file and the problem in one line."""

from __future__ import annotations

from pathlib import Path


class LiaidsError(Exception):
    """Base class for every error the command line reports as one line and a non-zero exit."""

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


class StudyReadError(LiaidsError):
    """A CT volume or DICOM series cannot be read or is not usable as a CT volume."""


class PhaseError(LiaidsError):
    """Phases are missing, duplicated or cannot be told apart."""


class DatasetError(LiaidsError):
    """A dataset folder, dataset.json or case.json does not follow the documented format."""


class ClinicalInfoError(LiaidsError):
    """A clinical field is missing, of the wrong type or outside its plausible range."""


class ProfileError(LiaidsError):
    """A phantom centre profile is malformed."""


class ModelLoadError(LiaidsError):
    """A model folder is missing, incomplete, corrupt or of the wrong kind."""


class BoxError(LiaidsError):
    """A lesion box is malformed, empty, or lies outside its volume."""


class PredictionError(LiaidsError):
    """A predictions folder or a report.json is missing, malformed, or does not fit its case."""


class EvaluationInputError(LiaidsError, ValueError):
    """Arrays handed to an evaluation function have the wrong shape, values or length."""
