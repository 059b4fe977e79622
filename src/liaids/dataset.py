"""The dataset format for training and evaluation, its loader and its validation.

Layout (documented in the README, "Bring your own data")::

    DATASET/
      dataset.json                 # name, licence, phases, lesion types, clinical fields, labels, case list
      CASE_ID/
        case.json                  # clinical fields, lesions (id, type, size), acquisition
        image_NC.nii.gz  image_ART.nii.gz  image_PV.nii.gz          # CT in HU
        liver_NC.nii.gz  ...                                       # 0/1 liver mask (lesions included)
        lesions_NC.nii.gz ...                                      # lesion instance ids, one per lesion
        anatomy_NC.nii.gz ...                                      # phantom only: organ labels
      (or, instead of the image files, CASE_ID/dicom/ holding the three DICOM series)

Masks of a phase share that phase's image geometry; phases need not share geometry with each other.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from liaids.clinical import ClinicalInfo
from liaids.codes import CLINICAL_FIELDS, LESION_TYPE_NAMES, LESION_TYPES, MALIGNANT_TYPES, PHASES
from liaids.errors import DatasetError, LiaidsError
from liaids.types import Study, Volume

FORMAT_VERSION = "1.0"
_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
MASK_KINDS = ("liver", "lesions", "anatomy")


@dataclass(frozen=True)
class LesionRecord:
    """One lesion of a case: its instance id in every phase's lesion mask, its type and size."""

    lesion_id: int
    lesion_type: str
    diameter_mm: float | None = None
    volume_ml: dict[str, float | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.lesion_id,
            "type": self.lesion_type,
            "diameter_mm": self.diameter_mm,
            "volume_ml": self.volume_ml,
            **self.extra,
        }


@dataclass(frozen=True)
class CaseInfo:
    """Content of case.json."""

    case_id: str
    clinical: ClinicalInfo
    lesions: list[LesionRecord]
    acquisition: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "case_id": self.case_id,
            "clinical": self.clinical.to_dict(),
            "lesions": [lr.to_dict() for lr in self.lesions],
            "acquisition": self.acquisition,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: Any, path: Path) -> CaseInfo:
        """Validate a parsed case.json.

        Raises:
            DatasetError: missing keys, unknown lesion types, duplicate or invalid lesion ids.
            ClinicalInfoError: invalid clinical fields.
        """
        if not isinstance(data, dict):
            raise DatasetError("case.json must hold a JSON object", path)
        for key in ("case_id", "clinical", "lesions", "acquisition"):
            if key not in data:
                raise DatasetError(f"case.json lacks the key {key!r}", path)
        if not isinstance(data["acquisition"], dict):
            raise DatasetError("'acquisition' must be a JSON object", path)
        clinical = ClinicalInfo.from_dict(data["clinical"], path)
        if not isinstance(data["lesions"], list):
            raise DatasetError("'lesions' must be a list", path)
        records: list[LesionRecord] = []
        seen: set[int] = set()
        for n, item in enumerate(data["lesions"]):
            if not isinstance(item, dict) or "id" not in item or "type" not in item:
                raise DatasetError(f"lesion entry {n} needs at least 'id' and 'type'", path)
            lid, ltype = item["id"], item["type"]
            if isinstance(lid, bool) or not isinstance(lid, int) or not 1 <= lid <= 65535:
                raise DatasetError(f"lesion entry {n}: id must be an integer 1-65535, got {lid!r}", path)
            if lid in seen:
                raise DatasetError(f"lesion id {lid} appears twice", path)
            if ltype not in LESION_TYPES:
                raise DatasetError(
                    f"lesion {lid}: unknown type {ltype!r}; expected one of {', '.join(LESION_TYPES)}", path
                )
            seen.add(lid)
            diameter = item.get("diameter_mm")
            if diameter is not None and (isinstance(diameter, bool) or not isinstance(diameter, int | float)):
                raise DatasetError(
                    f"lesion {lid}: diameter_mm must be a number or null, got {diameter!r}", path
                )
            volumes = item.get("volume_ml") or {}
            if not isinstance(volumes, dict) or any(
                k not in PHASES or (v is not None and (isinstance(v, bool) or not isinstance(v, int | float)))
                for k, v in volumes.items()
            ):
                raise DatasetError(f"lesion {lid}: volume_ml must map phases to numbers or null", path)
            extra = {k: v for k, v in item.items() if k not in ("id", "type", "diameter_mm", "volume_ml")}
            records.append(
                LesionRecord(lid, ltype, item.get("diameter_mm"), item.get("volume_ml") or {}, extra)
            )
        extra = {
            k: v
            for k, v in data.items()
            if k not in ("format_version", "case_id", "clinical", "lesions", "acquisition")
        }
        return cls(str(data["case_id"]), clinical, records, dict(data["acquisition"]), extra)


@dataclass(frozen=True)
class Case:
    """A loaded case: the study, its masks per phase, and case.json."""

    info: CaseInfo
    study: Study
    liver: dict[str, Volume]
    lesions: dict[str, Volume]
    anatomy: dict[str, Volume] | None = None


def dataset_description(
    name: str,
    description: str,
    licence: str,
    case_ids: list[str],
    anatomy_labels: dict[int, str] | None = None,
) -> dict[str, Any]:
    """Build a dataset.json mapping (nnU-Net-like, with the fields our pipeline needs)."""
    labels: dict[str, Any] = {
        "liver": {"0": "background", "1": "liver (lesions and intrahepatic vessels included)"},
        "lesions": "instance ids, 0 = background; one id is one lesion in every phase (see case.json)",
    }
    if anatomy_labels:
        labels["anatomy"] = {str(k): v for k, v in sorted(anatomy_labels.items())}
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "description": description,
        "licence": licence,
        "phases": list(PHASES),
        "lesion_types": dict(LESION_TYPE_NAMES),
        "malignant_types": sorted(MALIGNANT_TYPES),
        "clinical_fields": {
            "age": "years (0-120)",
            "sex": "M or F",
            **{f: "true/false" for f in CLINICAL_FIELDS[2:]},
        },
        "labels": labels,
        "file_ending": ".nii.gz",
        "numCases": len(case_ids),
        "cases": case_ids,
    }


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError("file not found", path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"not valid JSON ({exc})".splitlines()[0], path) from exc


class Dataset:
    """A dataset folder. Opening reads and checks dataset.json; cases are loaded on demand.

    Example::

        ds = Dataset("data/phantom")
        case = ds.load_case(ds.case_ids[0])
        case.study["ART"].array.shape
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError("dataset folder not found", self.root)
        meta = _read_json(self.root / "dataset.json")
        if not isinstance(meta, dict):
            raise DatasetError("dataset.json must hold a JSON object", self.root / "dataset.json")
        for key in ("name", "phases", "cases"):
            if key not in meta:
                raise DatasetError(f"dataset.json lacks the key {key!r}", self.root / "dataset.json")
        if meta["phases"] != list(PHASES):
            raise DatasetError(
                f"phases must be {list(PHASES)}, got {meta['phases']!r}", self.root / "dataset.json"
            )
        cases = meta["cases"]
        if not isinstance(cases, list) or not all(
            isinstance(c, str) and _SAFE_ID.fullmatch(c) for c in cases
        ):
            raise DatasetError(
                "'cases' must be a list of case ids (letters, digits, '.', '_', '-'; no path separators)",
                self.root / "dataset.json",
            )
        duplicated = sorted({c for c in cases if cases.count(c) > 1})
        if duplicated:
            raise DatasetError(f"case ids listed twice: {duplicated[:5]}", self.root / "dataset.json")
        missing = [c for c in meta["cases"] if not (self.root / c).is_dir()]
        if missing:
            raise DatasetError(
                f"case folder(s) listed but missing: {missing[:5]}", self.root / "dataset.json"
            )
        self.meta: dict[str, Any] = meta
        self.case_ids: list[str] = list(meta["cases"])

    def __len__(self) -> int:
        return len(self.case_ids)

    def read_info(self, case_id: str) -> CaseInfo:
        """Read and validate one case.json without loading images."""
        path = self.root / case_id / "case.json"
        info = CaseInfo.from_dict(_read_json(path), path)
        if info.case_id != case_id:
            raise DatasetError(f"case_id {info.case_id!r} differs from its folder name {case_id!r}", path)
        return info

    def load_case(self, case_id: str, *, with_anatomy: bool = False) -> Case:
        """Load a case and check that masks match their images and the lesions of case.json.

        Raises:
            DatasetError: a file is missing, a mask's geometry differs from its image, a mask holds
                values it must not, or lesion ids disagree with case.json.
        """
        from liaids.io import read_nifti

        folder = self.root / case_id
        info = self.read_info(case_id)
        if all((folder / f"image_{p}.nii.gz").is_file() for p in PHASES):
            images = {p: read_nifti(folder / f"image_{p}.nii.gz") for p in PHASES}
            study = Study(phases=images, meta={"case_id": case_id})
        elif (folder / "dicom").is_dir():
            from liaids.io import read_study

            study = read_study(folder / "dicom")
        else:
            absent = [f"image_{p}.nii.gz" for p in PHASES if not (folder / f"image_{p}.nii.gz").is_file()]
            raise DatasetError(f"missing {', '.join(absent)} (and no dicom/ folder)", folder)
        masks: dict[str, dict[str, Volume]] = {"liver": {}, "lesions": {}, "anatomy": {}}
        kinds = MASK_KINDS if with_anatomy else MASK_KINDS[:2]
        for kind in kinds:
            for p in PHASES:
                path = folder / f"{kind}_{p}.nii.gz"
                if not path.is_file():
                    raise DatasetError("mask file not found", path)
                vol = read_nifti(path)
                if not vol.same_geometry(study[p], tol=1e-2):
                    raise DatasetError(
                        f"geometry differs from the {p} image (shape {vol.shape} vs {study[p].shape}, "
                        f"spacing {tuple(round(s, 3) for s in vol.spacing)} vs "
                        f"{tuple(round(s, 3) for s in study[p].spacing)})",
                        path,
                    )
                masks[kind][p] = vol
        known = {lr.lesion_id for lr in info.lesions}
        seen: set[int] = set()
        for p in PHASES:
            liver_vals = np.unique(masks["liver"][p].array)
            if not set(liver_vals.tolist()) <= {0, 1}:
                raise DatasetError(
                    f"liver mask must hold 0/1 only, found {liver_vals[:6].tolist()}",
                    folder / f"liver_{p}.nii.gz",
                )
            ids = set(np.unique(masks["lesions"][p].array).tolist()) - {0}
            unknown = sorted(ids - known)
            if unknown:
                raise DatasetError(
                    f"lesion ids {unknown} are not listed in case.json", folder / f"lesions_{p}.nii.gz"
                )
            seen |= ids
        absent_everywhere = sorted(known - seen)
        if absent_everywhere:
            raise DatasetError(
                f"lesions {absent_everywhere} of case.json appear in no lesion mask", folder / "case.json"
            )
        return Case(info, study, masks["liver"], masks["lesions"], masks["anatomy"] if with_anatomy else None)

    def validate(self) -> list[str]:
        """Load every case; return one line per problem found (empty list = valid)."""
        problems = []
        for case_id in self.case_ids:
            try:
                self.load_case(case_id)
            except LiaidsError as exc:
                problems.append(str(exc))
        return problems


def write_case_files(
    folder: Path, info: CaseInfo, masks: dict[str, dict[str, Volume]], images: dict[str, Volume] | None
) -> None:
    """Write one case folder (images optional when the study is stored as DICOM beside them)."""
    from liaids.io import write_nifti

    folder.mkdir(parents=True, exist_ok=True)
    if images is not None:
        for p in PHASES:
            write_nifti(images[p], folder / f"image_{p}.nii.gz")
    for kind, per_phase in masks.items():
        for p, vol in per_phase.items():
            write_nifti(vol, folder / f"{kind}_{p}.nii.gz")
    (folder / "case.json").write_text(json.dumps(info.to_dict(), indent=1) + "\n")
