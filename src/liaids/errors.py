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
