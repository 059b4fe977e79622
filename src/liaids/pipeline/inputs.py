"""What ``liaids diagnose`` reads: INPUT resolved into a triple-phase :class:`Study`, and the clinical fields.

INPUT is one of:

* a **dataset case folder** (holds ``case.json``): ``image_{NC,ART,PV}.nii.gz``, or a ``dicom/`` folder
  with the three series; clinical fields come from ``case.json`` unless given otherwise; the file names
  are the dataset's phase labels, so images that disagree with them give a warning, as an override does;
* a **DICOM study folder**: the three series anywhere below it; phases identified from the tags and
  confirmed on the images (:func:`liaids.io.read_study`);
* **three volumes** (NIfTI files, or one-series DICOM folders): the phase of each is named by its file name
  (``..._ART.nii.gz``, ``portal venous.nii``...), by elimination when one is left, else by the order given
  (NC, ART, PV). The images then confirm the phases as for DICOM.

Phase overrides (``--nc/--art/--pv``) pick the series of a phase: for DICOM a series folder, a
SeriesInstanceUID or a SeriesNumber; for volumes a file. An override is the user's decision: when the
images disagree with it the run goes on and report.json lists the disagreement under
``study.phase_assignment.warnings``.

Clinical fields, highest precedence first: the user's (``--clinical FILE.json`` and the flags, flags
winning), ``case.json``, DICOM PatientAge / PatientSex. A missing history field is never filled in silently:
it is an error unless the user chose ``missing_history="absent"`` (the fields are then set to False and
marked ``"assumed absent"`` in the report).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from liaids.clinical import ClinicalInfo
from liaids.codes import CLINICAL_FIELDS, PHASES
from liaids.errors import ClinicalInfoError, DatasetError, PhaseError, StudyReadError
from liaids.types import Study, Volume

HISTORY_FIELDS: tuple[str, ...] = CLINICAL_FIELDS[2:]
MISSING_HISTORY_CHOICES: tuple[str, ...] = ("error", "absent")
#: Valid stand-ins used only to validate a partial set of clinical fields with :class:`ClinicalInfo`.
_FILLER: dict[str, Any] = {"age": 50, "sex": "M", **{f: False for f in HISTORY_FIELDS}}
_DICOM_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25, "": 1.0}


# --------------------------------------------------------------------------------------------------
# Clinical information
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClinicalInput:
    """Clinical fields as the user gave them (possibly only some) and the choice for missing history.

    Args:
        values: field name -> value, only the fields given; each already validated on its own.
        sources: field name -> where it came from (``"clinical file <path>"`` or ``"option"``).
        missing_history: ``"error"`` (default) or ``"absent"`` (history fields nobody gave are False).
    """

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    missing_history: str = "error"

    def __post_init__(self) -> None:
        if self.missing_history not in MISSING_HISTORY_CHOICES:
            raise ClinicalInfoError(
                f"missing_history must be one of {', '.join(MISSING_HISTORY_CHOICES)}, "
                f"got {self.missing_history!r}"
            )


@dataclass(frozen=True)
class ResolvedClinical:
    """The clinical fields the run uses.

    Attributes:
        info: the complete, validated fields; None when some are unknown (allowed only for a classifier
            that does not use clinical information).
        values: all seven fields, None where unknown (history fields assumed absent are False).
        sources: field -> ``"option"``, ``"clinical file <path>"``, ``"case.json"``, ``"DICOM"``,
            ``"assumed absent"`` or ``"unknown"``.
    """

    info: ClinicalInfo | None
    values: dict[str, Any]
    sources: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"values": dict(self.values), "sources": dict(self.sources), "complete": self.info is not None}


def _validate_partial(values: Mapping[str, Any], source: str | Path | None) -> dict[str, Any]:
    """Check the given fields one by one (type, plausible range) and return them normalised.

    Raises:
        ClinicalInfoError: an unknown field or an invalid value.
    """
    unknown = sorted(set(values) - set(CLINICAL_FIELDS))
    if unknown:
        raise ClinicalInfoError(
            f"unknown clinical field(s) {unknown}; expected {list(CLINICAL_FIELDS)}", source
        )
    given = {k: v for k, v in values.items() if v is not None}
    # ClinicalInfo checks complete records only: complete with valid stand-ins, keep the given fields.
    checked = ClinicalInfo.from_dict({**_FILLER, **given}, source).to_dict()
    return {k: checked[k] for k in given}


def read_clinical_file(path: str | Path) -> dict[str, Any]:
    """Read clinical fields from a JSON file: an object of fields, or a case.json (its ``clinical`` key).

    Args:
        path: the file.

    Returns:
        The fields found (possibly only some), validated one by one.

    Raises:
        ClinicalInfoError: missing or unreadable file, not an object, unknown field or invalid value.
    """
    path = Path(path)
    if not path.is_file():
        raise ClinicalInfoError("clinical file not found", path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClinicalInfoError(f"not valid JSON ({exc})".splitlines()[0], path) from exc
    if isinstance(data, dict) and isinstance(data.get("clinical"), dict):
        data = data["clinical"]
    if not isinstance(data, dict):
        raise ClinicalInfoError(
            f"clinical information must be a JSON object, got {type(data).__name__}", path
        )
    return _validate_partial(data, path)


def parse_clinical_options(
    clinical_file: str | Path | None = None,
    *,
    age: float | None = None,
    sex: str | None = None,
    hepatitis_b: bool | None = None,
    hepatitis_c: bool | None = None,
    cirrhosis: bool | None = None,
    cholangiolithiasis: bool | None = None,
    extrahepatic_tumour: bool | None = None,
    missing_history: str = "error",
) -> ClinicalInput:
    """Turn the command line's clinical options into the ``clinical`` argument of :func:`diagnose`.

    Options left at None were not given. A field given both in the file and as an option takes the
    option's value.

    Args:
        clinical_file: ``--clinical FILE.json`` (fields, or a case.json).
        age, sex, hepatitis_b, hepatitis_c, cirrhosis, cholangiolithiasis, extrahepatic_tumour: the
            ``--age``, ``--sex``, ``--hepatitis-b/--no-hepatitis-b``... options.
        missing_history: ``--missing-history error|absent``.

    Returns:
        The clinical input.

    Raises:
        ClinicalInfoError: an unreadable file, an unknown field, an invalid value, an unknown choice.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if clinical_file is not None:
        values = read_clinical_file(clinical_file)
        sources = {k: f"clinical file {clinical_file}" for k in values}
    flags = {
        "age": age,
        "sex": sex,
        "hepatitis_b": hepatitis_b,
        "hepatitis_c": hepatitis_c,
        "cirrhosis": cirrhosis,
        "cholangiolithiasis": cholangiolithiasis,
        "extrahepatic_tumour": extrahepatic_tumour,
    }
    given = _validate_partial({k: v for k, v in flags.items() if v is not None}, None)
    values.update(given)
    sources.update({k: "option" for k in given})
    return ClinicalInput(values, sources, missing_history)


def as_clinical_input(
    clinical: ClinicalInput | ClinicalInfo | Mapping[str, Any] | str | Path | None,
) -> ClinicalInput:
    """Accept the forms the Python API allows for ``clinical``.

    Args:
        clinical: a :class:`ClinicalInput`, a complete :class:`ClinicalInfo`, a mapping of fields (possibly
            partial), a JSON file, or None (nothing given).

    Returns:
        The clinical input.

    Raises:
        ClinicalInfoError: invalid fields or file.
    """
    if clinical is None:
        return ClinicalInput()
    if isinstance(clinical, ClinicalInput):
        return clinical
    if isinstance(clinical, ClinicalInfo):
        return ClinicalInput(clinical.to_dict(), {k: "option" for k in CLINICAL_FIELDS})
    if isinstance(clinical, str | Path):
        return parse_clinical_options(clinical)
    if isinstance(clinical, Mapping):
        values = _validate_partial(dict(clinical), None)
        return ClinicalInput(values, {k: "option" for k in values})
    raise ClinicalInfoError(
        f"clinical must be a file, a mapping or ClinicalInfo, got {type(clinical).__name__}"
    )


def dicom_age_years(value: str) -> float | None:
    """Parse a DICOM PatientAge (``"055Y"``, ``"006M"``, ``"010W"``, ``"003D"``) to years (None: unusable)."""
    match = _DICOM_AGE.match(value or "")
    if not match:
        return None
    return round(int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2).upper()], 2)


def _dicom_clinical(meta: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    age = dicom_age_years(str(meta.get("PatientAge") or ""))
    if age is not None and 0.0 <= age <= 120.0:
        out["age"] = age
    sex = str(meta.get("PatientSex") or "").strip().upper()
    if sex in ("M", "F"):  # "O" and empty carry no usable value
        out["sex"] = sex
    return out


def resolve_clinical(
    given: ClinicalInput,
    *,
    case_values: Mapping[str, Any] | None = None,
    case_source: str | Path | None = None,
    dicom: Mapping[str, Any] | None = None,
    required: bool = True,
) -> ResolvedClinical:
    """Merge the clinical sources (user, case.json, DICOM) and check nothing is missing.

    Args:
        given: what the user gave.
        case_values: the ``clinical`` object of a case.json, possibly partial.
        case_source: the case.json path, named in errors.
        dicom: DICOM patient tags (``PatientAge``, ``PatientSex``), e.g. :attr:`Study.meta`.
        required: the classifier uses clinical information; incomplete fields are then an error.

    Returns:
        The fields, their sources, and a validated :class:`ClinicalInfo` when complete.

    Raises:
        ClinicalInfoError: invalid case.json values, or (``required``) missing fields: age or sex that no
            source gives, or history fields without ``missing_history="absent"``.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source_name, layer in (
        ("DICOM", _dicom_clinical(dicom or {})),
        ("case.json", _validate_partial(dict(case_values or {}), case_source)),
    ):
        values.update(layer)
        sources.update({k: source_name for k in layer})
    values.update(given.values)
    sources.update(given.sources)
    if given.missing_history == "absent":
        for name in HISTORY_FIELDS:
            if name not in values:
                values[name] = False
                sources[name] = "assumed absent"
    missing = [f for f in CLINICAL_FIELDS if f not in values]
    if missing and required:
        hints = []
        if set(missing) & {"age", "sex"}:
            hints.append(
                "give --age/--sex or a --clinical file (DICOM PatientAge/PatientSex were not usable)"
            )
        if set(missing) & set(HISTORY_FIELDS):
            hints.append(
                "give the history flags (e.g. --hepatitis-b/--no-hepatitis-b) or a --clinical file, or "
                "choose --missing-history absent to treat unknown history as absent"
            )
        raise ClinicalInfoError(f"missing clinical field(s) {missing}: {'; '.join(hints)}", case_source)
    info = ClinicalInfo.from_dict(values) if not missing else None
    all_values = {f: (info.to_dict()[f] if info else values.get(f)) for f in CLINICAL_FIELDS}
    all_sources = {f: sources.get(f, "unknown") for f in CLINICAL_FIELDS}
    return ResolvedClinical(info, all_values, all_sources)


# --------------------------------------------------------------------------------------------------
# Study
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyInput:
    """INPUT resolved into a study.

    Attributes:
        study: the three phases (each volume in its own geometry).
        kind: ``"dicom"``, ``"nifti"`` (three volume files) or ``"case"`` (dataset case folder).
        source: the INPUT path (the common folder for several files).
        sources: phase -> the volume file it was read from, or the SeriesInstanceUID of its DICOM series.
        assignment: how the phases were identified: ``method``, ``evidence`` per phase, ``overridden``
            phases, image ``measurements``, ``warnings`` (image checks that disagreed with an override).
        patient: ``patient_id``, ``study_uid``, ``case_id`` (None where unknown).
        case_clinical: the ``clinical`` object of case.json, when INPUT is a case folder.
        case_json: path of that case.json.
    """

    study: Study
    kind: str
    source: Path
    sources: dict[str, str]
    assignment: dict[str, Any]
    patient: dict[str, Any]
    case_clinical: dict[str, Any] | None = None
    case_json: Path | None = None


def _normalise_overrides(overrides: Mapping[str, str | Path] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (overrides or {}).items():
        phase = str(key).upper()
        if phase not in PHASES:
            raise PhaseError(f"unknown phase {key!r} in the phase overrides; use {', '.join(PHASES)}")
        if value is None or str(value).strip() == "":
            continue
        out[phase] = str(value)
    return out


def _is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _name_phases(path: Path) -> set[str]:
    from liaids.io.phases import description_phases

    stem = re.sub(r"\.nii(\.gz)?$", "", path.name, flags=re.IGNORECASE)
    return description_phases(stem.replace("_", " ")) & set(PHASES)


def resolve_input(
    input: str | Path | Sequence[str | Path] | None,
    phases_override: Mapping[str, str | Path] | None = None,
) -> StudyInput:
    """Read INPUT (see the module docstring) into a triple-phase study.

    Args:
        input: a case folder, a DICOM study folder, or three volume files/series folders.
        phases_override: phase -> series selector (DICOM: series folder, SeriesInstanceUID or SeriesNumber)
            or volume file.

    Returns:
        The resolved study.

    Raises:
        StudyReadError: missing, unreadable, corrupt or non-CT input.
        PhaseError: a phase missing, claimed twice, patients that differ, or images that contradict the
            phases found from tags or names.
        DatasetError: a case folder without images.
    """
    overrides = _normalise_overrides(phases_override)
    if input is None:
        paths: list[Path] = []
    elif isinstance(input, str | Path):
        paths = [Path(input)]
    else:
        paths = [Path(p) for p in input]
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        if (folder / "case.json").is_file():
            return _resolve_case(folder, overrides)
        if all((folder / f"image_{p}.nii.gz").is_file() for p in PHASES):
            files = [folder / f"image_{p}.nii.gz" for p in PHASES]
            return _resolve_volumes(files, overrides, folder)
        return _resolve_dicom(folder, overrides)
    for path in paths:
        if not path.exists():
            raise StudyReadError("no such file or folder", path)
    if len(paths) == 1 and not overrides:
        raise StudyReadError(
            "one volume holds one phase: give three volumes (NC, ART, PV), a DICOM study folder or a case "
            "folder",
            paths[0],
        )
    return _resolve_volumes(paths, overrides, None)


def _read_case_json(folder: Path) -> tuple[dict[str, Any], Path]:
    path = folder / "case.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"not valid JSON ({exc})".splitlines()[0], path) from exc
    if not isinstance(data, dict):
        raise DatasetError("case.json must hold a JSON object", path)
    clinical = data.get("clinical")
    if clinical is not None and not isinstance(clinical, dict):
        raise DatasetError("'clinical' must be a JSON object", path)
    return data, path


def _resolve_case(folder: Path, overrides: dict[str, str]) -> StudyInput:
    data, case_json = _read_case_json(folder)
    if all((folder / f"image_{p}.nii.gz").is_file() for p in PHASES) or (
        overrides and not (folder / "dicom").is_dir()
    ):
        files = [folder / f"image_{p}.nii.gz" for p in PHASES if (folder / f"image_{p}.nii.gz").is_file()]
        resolved = _resolve_volumes(files, overrides, folder, named_by_dataset=True)
    elif (folder / "dicom").is_dir():
        resolved = _resolve_dicom(folder / "dicom", overrides)
    else:
        absent = [f"image_{p}.nii.gz" for p in PHASES if not (folder / f"image_{p}.nii.gz").is_file()]
        raise DatasetError(f"case folder lacks {', '.join(absent)} (and has no dicom/ folder)", folder)
    patient = {**resolved.patient, "case_id": str(data.get("case_id", folder.name))}
    return replace(
        resolved,
        kind="case",
        source=folder,
        patient=patient,
        case_clinical=data.get("clinical"),
        case_json=case_json,
    )


def _common_folder(paths: Sequence[Path]) -> Path:
    parents = [str(p.resolve().parent if p.is_file() else p.resolve()) for p in paths]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


def _check_images(
    series: dict[str, str],
    volumes: dict[str, Volume],
    evidence: dict[str, list[str]],
    overridden: list[str],
    root: Path,
    chosen_by: str = "overridden",
) -> tuple[dict[str, Any], list[str]]:
    """Confirm the phases on the images; fatal unless some were chosen by the user or a dataset
    (``overridden``), then a warning."""
    from liaids.io.phases import PhaseAssignment, check_phases

    assignment = PhaseAssignment(series=dict(series), evidence=evidence)
    try:
        measured = check_phases(assignment, volumes, root)
    except PhaseError as exc:
        if not overridden:
            raise
        given = ", ".join(overridden)
        return {}, [f"image check disagrees with the phases chosen ({given} {chosen_by}): {exc.problem}"]
    for phase, m in measured.items():
        aorta, soft = m.get("aorta_hu"), m.get("soft_tissue_hu")
        evidence[phase].append(
            "image check: aorta "
            + ("n/a" if aorta is None else f"{aorta:.0f} HU")
            + ", soft tissue "
            + ("n/a" if soft is None else f"{soft:.0f} HU")
        )
    return measured, []


def _resolve_volumes(
    paths: Sequence[Path], overrides: dict[str, str], folder: Path | None, named_by_dataset: bool = False
) -> StudyInput:
    from liaids.io import read_volume

    files: dict[str, Path] = {p: Path(v) for p, v in overrides.items()}
    evidence: dict[str, list[str]] = {p: [] for p in PHASES}
    for phase in files:
        evidence[phase].append(f"given as the {phase} phase ({files[phase]})")
    chosen = {f.resolve() for f in files.values() if f.exists()}
    # An override replaces the file whose name claims that phase (e.g. image_ART.nii.gz of a case folder).
    rest = [
        p
        for p in paths
        if p.resolve() not in chosen and not (len(_name_phases(p)) == 1 and _name_phases(p) <= set(files))
    ]
    open_phases = [p for p in PHASES if p not in files]
    root = folder or _common_folder([*paths, *files.values()])
    if len(rest) != len(open_phases):
        listing = ", ".join(str(p) for p in paths) or "none"
        raise PhaseError(
            f"need one volume per phase ({', '.join(PHASES)}): {len(open_phases)} phase(s) "
            f"{', '.join(open_phases) or 'none'} left open and {len(rest)} volume(s) left: {listing}",
            root,
        )
    claims: dict[str, list[Path]] = {p: [] for p in open_phases}
    for path in rest:
        named = _name_phases(path)
        if len(named) == 1 and next(iter(named)) in claims:
            claims[next(iter(named))].append(path)
    for phase, claimed in claims.items():
        if len(claimed) > 1:
            raise PhaseError(
                f"{len(claimed)} files claim phase {phase} by their names: "
                f"{', '.join(str(c) for c in claimed)}. Give one file per phase",
                root,
            )
        if claimed:
            files[phase] = claimed[0]
            how = "dataset file name" if named_by_dataset else "file name"
            evidence[phase].append(f"{how} {claimed[0].name} names {phase}")
    left_phases = [p for p in PHASES if p not in files]
    left_files = [p for p in rest if p not in files.values()]
    for phase, path in zip(left_phases, left_files, strict=True):
        files[phase] = path
        rule = "the only phase left" if len(left_phases) == 1 else "order given (NC, ART, PV)"
        evidence[phase].append(f"{path.name}: {rule}")
    volumes: dict[str, Volume] = {}
    for phase in PHASES:
        if not files[phase].exists():
            raise StudyReadError(f"no such file or folder (given for {phase})", files[phase])
        volumes[phase] = read_volume(files[phase])
    ids = {p: str(v.meta.get("PatientID") or "") for p, v in volumes.items()}
    if len({i for i in ids.values() if i}) > 1:
        detail = ", ".join(f"{p} {files[p]} has PatientID '{i}'" for p, i in ids.items() if i)
        raise PhaseError(f"mismatched PatientID across the phases: {detail}", root)
    series = {p: str(files[p]) for p in PHASES}
    # A dataset's file names are its annotators' labels, like an override: a late or weak arterial phase
    # there is data to report on, not an input error.
    labelled = sorted(overrides) or ([p for p in PHASES if claims.get(p)] if named_by_dataset else [])
    chosen_by = "overridden" if overrides else "named by the dataset"
    measured, warnings = _check_images(series, volumes, evidence, labelled, root, chosen_by)
    method = (
        "override" if len(overrides) == len(PHASES) else "override+names" if overrides else "names+images"
    )
    phases = {p: replace(volumes[p], meta={**volumes[p].meta, "phase": p}) for p in PHASES}
    first = volumes["NC"].meta
    return StudyInput(
        study=Study(phases=phases, meta={"source": str(root)}),
        kind="nifti",
        source=root,
        sources=series,
        assignment={
            "method": method,
            "evidence": evidence,
            "overridden": sorted(overrides),
            "measurements": measured,
            "warnings": warnings,
        },
        patient={
            "patient_id": first.get("PatientID") or None,
            "study_uid": first.get("StudyInstanceUID") or None,
            "case_id": None,
            "PatientAge": first.get("PatientAge") or None,
            "PatientSex": first.get("PatientSex") or None,
        },
    )


def _non_ct_error(folder: Path, problem: str) -> StudyReadError | None:
    """A clearer error when a phase is missing because one of the series is not CT."""
    from liaids.io import scan_dicom_folder

    scan = scan_dicom_folder(folder)
    ct = [s for s in scan.series if s.is_ct_image]
    other = [s for s in scan.series if s.is_image and s.modality != "CT"]
    if len(ct) >= len(PHASES) or not other:
        return None
    s = other[0]
    where = Path(os.path.commonpath([str(f.parent) for f in s.files]))
    return StudyReadError(
        f"series {s.label} has modality {s.modality or 'missing'}, not CT: a study needs one CT series per "
        f"phase ({', '.join(PHASES)}); {problem}",
        where,
    )


def _select_series(scan: Any, selector: str, phase: str, folder: Path) -> Any:
    """The series a phase override names: a series folder (or file), a SeriesInstanceUID or a SeriesNumber."""
    as_path = Path(selector)
    candidates = [as_path, folder / as_path] if not as_path.is_absolute() else [as_path]
    for path in candidates:
        if path.exists():
            target = path.resolve()
            matches = [
                s
                for s in scan.series
                if any(f.resolve() == target or target in f.resolve().parents for f in s.files)
            ]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                images = [s for s in matches if s.is_ct_image]
                if len(images) == 1:
                    return images[0]
                raise PhaseError(
                    f"{phase} override {selector!r} holds {len(matches)} series; point at one series folder",
                    path,
                )
    matches = [s for s in scan.series if s.series_uid == selector]
    if not matches and selector.isdigit():
        matches = [s for s in scan.series if s.series_number == int(selector)]
    if len(matches) != 1:
        listing = "; ".join(f"#{s.series_number} {s.label}" for s in scan.series) or "none"
        what = "matches no series" if not matches else f"matches {len(matches)} series"
        raise PhaseError(f"{phase} override {selector!r} {what}; series found: {listing}", folder)
    return matches[0]


def _resolve_dicom(folder: Path, overrides: dict[str, str]) -> StudyInput:
    from liaids.io import read_study

    if not overrides:
        try:
            study = read_study(folder)
        except (PhaseError, StudyReadError) as exc:
            if "missing phase" in exc.problem or "no CT image series" in exc.problem:
                better = _non_ct_error(folder, exc.problem)
                if better is not None:
                    raise better from exc
            raise
        assignment = study.meta["phase_assignment"]
        files = {
            p: str(v.meta.get("SeriesInstanceUID") or assignment["series"][p])
            for p, v in study.phases.items()
        }
        return StudyInput(
            study=study,
            kind="dicom",
            source=folder,
            sources=files,
            assignment={**assignment, "overridden": [], "warnings": []},
            patient={
                "patient_id": study.meta.get("PatientID") or None,
                "study_uid": study.meta.get("StudyInstanceUID") or None,
                "case_id": None,
                "PatientAge": study.meta.get("PatientAge") or None,
                "PatientSex": study.meta.get("PatientSex") or None,
            },
        )
    return _resolve_dicom_with_overrides(folder, overrides)


def _resolve_dicom_with_overrides(folder: Path, overrides: dict[str, str]) -> StudyInput:
    from liaids.io import read_series, scan_dicom_folder
    from liaids.io.phases import description_phases

    scan = scan_dicom_folder(folder)
    chosen: dict[str, Any] = {}
    evidence: dict[str, list[str]] = {p: [] for p in PHASES}
    for phase, selector in overrides.items():
        info = _select_series(scan, selector, phase, folder)
        where = Path(os.path.commonpath([str(f.parent) for f in info.files]))
        if info.modality != "CT" or not info.is_ct_image:
            raise StudyReadError(
                f"series {info.label} given for {phase} is not a CT image series (modality "
                f"{info.modality or 'missing'})",
                where,
            )
        chosen[phase] = info
        evidence[phase].append(f"given as the {phase} phase ({selector})")
    used = {s.series_uid for s in chosen.values()}
    twice = [p for p in chosen if sum(s.series_uid == chosen[p].series_uid for s in chosen.values()) > 1]
    if twice:
        raise PhaseError(f"one series is given for several phases ({', '.join(twice)})", folder)
    rest = [
        s
        for s in scan.series
        if s.is_ct_image
        and s.series_uid not in used
        and description_phases(s.series_description) != {"DELAYED"}
    ]
    for phase in [p for p in PHASES if p not in chosen]:
        claims = [s for s in rest if description_phases(s.series_description) == {phase}]
        if len(claims) == 1:
            chosen[phase] = claims[0]
            evidence[phase].append(f"SeriesDescription '{claims[0].series_description}' names {phase}")
            rest.remove(claims[0])
    open_phases = [p for p in PHASES if p not in chosen]
    if len(open_phases) == 1 and len(rest) == 1:
        chosen[open_phases[0]] = rest[0]
        evidence[open_phases[0]].append("the only CT series left")
    elif open_phases:
        listing = "; ".join(f"#{s.series_number} {s.label}" for s in rest) or "none"
        flags = " ".join(f"--{p.lower()}" for p in open_phases)
        raise PhaseError(
            f"cannot tell which series is {', '.join(open_phases)} from the remaining series ({listing}); "
            f"give {flags}",
            folder,
        )
    ids = {p: s.patient_id for p, s in chosen.items() if s.patient_id}
    if len(set(ids.values())) > 1:
        detail = ", ".join(f"{p} {chosen[p].label} has PatientID '{i}'" for p, i in ids.items())
        raise PhaseError(f"mismatched PatientID across the phases: {detail}", folder)
    volumes = {p: read_series(chosen[p], scan.root) for p in PHASES}
    series = {p: chosen[p].series_uid for p in PHASES}
    measured, warnings = _check_images(series, volumes, evidence, sorted(overrides), folder)
    phases = {p: replace(volumes[p], meta={**volumes[p].meta, "phase": p}) for p in PHASES}
    nc = chosen["NC"]
    meta = {
        "source": str(folder),
        "PatientID": nc.patient_id,
        "PatientAge": nc.patient_age,
        "PatientSex": nc.patient_sex,
        "StudyInstanceUID": nc.study_uid,
    }
    files = {p: chosen[p].series_uid for p in PHASES}
    return StudyInput(
        study=Study(phases=phases, meta=meta),
        kind="dicom",
        source=folder,
        sources=files,
        assignment={
            "method": "override" if len(overrides) == len(PHASES) else "override+tags",
            "series": series,
            "evidence": evidence,
            "overridden": sorted(overrides),
            "measurements": measured,
            "warnings": warnings,
        },
        patient={
            "patient_id": nc.patient_id or None,
            "study_uid": nc.study_uid or None,
            "case_id": None,
            "PatientAge": nc.patient_age or None,
            "PatientSex": nc.patient_sex or None,
        },
    )
