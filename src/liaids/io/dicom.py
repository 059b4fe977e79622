"""DICOM CT series: listing a folder, reading one series into a :class:`Volume`, writing one back.

Only single-frame image objects are read; compressed transfer syntaxes (JPEG 2000, JPEG-LS, JPEG lossless)
are decoded by pydicom's pixel handlers through pylibjpeg.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian
from pydicom.valuerep import PersonName, format_number_as_ds

from liaids.codes import PHASES
from liaids.errors import LiaidsError, StudyReadError
from liaids.types import Volume

#: DICOM objects that carry no image to read as a volume, even when they hold pixel data (SEG).
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG", "DOC"})

# Geometry tolerances (mm or unitless). Scanners write positions with a few decimals only.
_ORIENTATION_TOL = 1e-4
_SPACING_TOL = 1e-3
_DUPLICATE_TOL_MM = 0.01
_GAP_FACTOR = 1.5
_UNEVEN_ABS_MM = 0.1
_UNEVEN_REL = 0.1

# Stored values of written CT: uint16 with a fixed -1024 intercept, so HU in [-1024, 64511].
_WRITE_INTERCEPT = -1024
_HU_MIN, _HU_MAX = -1024, 65535 - 1024
# Values not taken from ``acquisition`` when absent: a typical portal-venous liver protocol.
_DEFAULT_ACQUISITION: dict[str, Any] = {
    "manufacturer": "LiAIDS phantom",
    "institution": "LiAIDS",
    "kvp": 120.0,
    "mas": 200.0,
    "kernel": "STANDARD",
    "exposure_time_ms": 500,
}


@dataclass(frozen=True)
class SeriesInfo:
    """What a folder scan knows about one series, from the headers alone (no pixel data read).

    Args:
        series_uid: SeriesInstanceUID; ``"nouid-<hash>"`` when the files have none (anonymised data).
        modality: Modality tag (``"CT"``, ``"MR"``, ``"SEG"``...).
        series_description: SeriesDescription, ``""`` when absent.
        series_number: SeriesNumber or None.
        files: the series' files, in natural name order.
        contrast_agent: ContrastBolusAgent, ``""`` when absent.
        contrast_start_time: ContrastBolusStartTime (``HHMMSS.ffffff``), ``""`` when absent.
        acquisition_time: earliest AcquisitionTime of the files, else SeriesTime, else ContentTime.
        acquisition_date: AcquisitionDate, else SeriesDate, else StudyDate.
        series_time: SeriesTime.
        patient_id: PatientID.
        patient_age: PatientAge as stored (``"055Y"``).
        patient_sex: PatientSex.
        study_uid: StudyInstanceUID.
        image_type: ImageType values (``ORIGINAL``, ``PRIMARY``, ``AXIAL``, ``LOCALIZER``...).
        sop_class_uid: SOP class of the first file (file meta when the dataset leaves it empty).
        has_pixels: whether the files hold pixel data.
    """

    series_uid: str
    modality: str
    series_description: str
    series_number: int | None
    files: tuple[Path, ...]
    contrast_agent: str = ""
    contrast_start_time: str = ""
    acquisition_time: str = ""
    acquisition_date: str = ""
    series_time: str = ""
    patient_id: str = ""
    patient_age: str = ""
    patient_sex: str = ""
    study_uid: str = ""
    image_type: tuple[str, ...] = ()
    sop_class_uid: str = ""
    has_pixels: bool = True

    @property
    def is_image(self) -> bool:
        """An image object (not SEG, RTSTRUCT, SR...) with pixel data."""
        return self.has_pixels and self.modality not in NON_IMAGE_MODALITIES

    @property
    def is_ct_image(self) -> bool:
        """A CT image series usable as a volume: modality CT, not a localizer or a screen capture."""
        if not self.is_image or self.modality != "CT":
            return False
        if "LOCALIZER" in (t.upper() for t in self.image_type):
            return False
        # Dose screens are often saved as secondary captures with modality CT.
        return "Secondary Capture" not in UID(self.sop_class_uid).name

    @property
    def label(self) -> str:
        """Short human-readable name for messages: ``'description' (UID, N files)``."""
        desc = self.series_description or "no description"
        return f"'{desc}' ({self.series_uid}, {len(self.files)} files)"


@dataclass(frozen=True)
class DicomScan:
    """Result of :func:`scan_dicom_folder`.

    Args:
        root: the folder scanned (or the common parent of the files given).
        series: every series found, ordered by SeriesNumber then UID.
        skipped: files that are not DICOM (licence files, thumbnails...).
    """

    root: Path
    series: tuple[SeriesInfo, ...]
    skipped: tuple[Path, ...]


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _natural_key(path: Path) -> list[Any]:
    """Sort ``image_2`` before ``image_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _number(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        if isinstance(value, MultiValue):
            value = value[0]
        return float(value)
    except (TypeError, ValueError):
        return None


def _json_value(value: Any) -> Any:
    """Convert a pydicom value to plain JSON types."""
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, PersonName):
        return str(value)
    # pydicom's IS/DS/str subclasses print oddly: give back the builtin types.
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value).strip()
    if isinstance(value, bytes):
        return value.decode("latin-1", errors="replace").strip()
    return str(value)


def time_to_seconds(value: str) -> float | None:
    """Parse a DICOM TM value (``HHMMSS.ffffff``, ``HHMM``, ``HH:MM:SS``) to seconds after midnight.

    Args:
        value: the TM string.

    Returns:
        Seconds, or None when empty or unparsable.
    """
    text = value.strip().replace(":", "")
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", text)
    if not match:
        return None
    hours, minutes, seconds, fraction = match.groups()
    return int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0) + float(fraction or 0.0)


def _has_dicm_prefix(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _looks_like_raw_dataset(path: Path) -> bool:
    """A DICOM data set without preamble usually starts with a group 0x0002 or 0x0008 tag."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    return len(head) == 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3] == 0


def _read_header(path: Path) -> Dataset | None:
    """Read one file's header (pixel data deferred), or None when it is not DICOM.

    Raises:
        StudyReadError: the file is DICOM but truncated or corrupt.
    """
    if not path.is_file():
        raise StudyReadError("unreadable file (broken link or not a regular file)", path)
    try:
        prefixed = _has_dicm_prefix(path)
        raw = not prefixed and _looks_like_raw_dataset(path)
    except OSError as exc:
        raise StudyReadError(f"cannot read file ({exc.strerror or exc})", path) from exc
    if prefixed:
        force = False
    elif raw:
        force = True
    else:
        return None
    try:
        ds = pydicom.dcmread(path, defer_size=1024, force=force)
    except InvalidDicomError:
        return None
    except Exception as exc:  # pydicom raises many types on damaged files
        if force:
            return None
        raise StudyReadError(f"corrupt DICOM file ({type(exc).__name__}: {exc})", path) from exc
    if len(ds) == 0:
        if force:
            return None
        raise StudyReadError("truncated or corrupt DICOM file (no data elements)", path)
    sop_class = _sop_class(ds)
    if not force and not sop_class and not _text(ds, "Modality"):
        raise StudyReadError("corrupt DICOM file (neither SOP class nor modality readable)", path)
    # pydicom stops silently at a premature end of file: an image object without pixel data was cut short.
    if "Image Storage" in UID(sop_class).name and "PixelData" not in ds:
        raise StudyReadError("truncated or corrupt DICOM file (image object without pixel data)", path)
    return ds


def _sop_class(ds: Dataset) -> str:
    sop = _text(ds, "SOPClassUID")
    if not sop and hasattr(ds, "file_meta"):
        sop = _text(ds.file_meta, "MediaStorageSOPClassUID")
    return sop


def _series_key(ds: Dataset, path: Path) -> str:
    uid = _text(ds, "SeriesInstanceUID")
    if uid:
        return uid
    # Anonymisers sometimes blank the UID: group by what still tells series apart.
    parts = [str(path.parent), *(_text(ds, k) for k in ("SeriesNumber", "SeriesDescription", "Modality"))]
    return "nouid-" + hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def _iter_files(folder: Path, recursive: bool) -> Iterable[Path]:
    if not recursive:
        yield from (p for p in folder.iterdir() if p.is_file())
        return
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in filenames:
            yield Path(dirpath) / name


def _summarise(key: str, headers: list[tuple[Path, Dataset]]) -> SeriesInfo:
    headers.sort(key=lambda item: _natural_key(item[0]))
    first = headers[0][1]
    times = []
    for _, ds in headers:
        t = _text(ds, "AcquisitionTime") or _text(ds, "SeriesTime") or _text(ds, "ContentTime")
        if t:
            times.append(t)
    acquisition_time = min(times, key=lambda t: time_to_seconds(t) or 0.0) if times else ""
    number = _number(first, "SeriesNumber")
    return SeriesInfo(
        series_uid=key,
        modality=_text(first, "Modality").upper(),
        series_description=_text(first, "SeriesDescription"),
        series_number=None if number is None else int(number),
        files=tuple(p for p, _ in headers),
        contrast_agent=_text(first, "ContrastBolusAgent"),
        contrast_start_time=_text(first, "ContrastBolusStartTime"),
        acquisition_time=acquisition_time,
        acquisition_date=_text(first, "AcquisitionDate")
        or _text(first, "SeriesDate")
        or _text(first, "StudyDate"),
        series_time=_text(first, "SeriesTime"),
        patient_id=_text(first, "PatientID"),
        patient_age=_text(first, "PatientAge"),
        patient_sex=_text(first, "PatientSex"),
        study_uid=_text(first, "StudyInstanceUID"),
        image_type=tuple(str(v).strip() for v in (first.get("ImageType") or [])),
        sop_class_uid=_sop_class(first),
        has_pixels=all("PixelData" in ds for _, ds in headers),
    )


# --------------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------------


def scan_dicom_folder(
    folder_or_files: str | Path | Sequence[str | Path], recursive: bool = True
) -> DicomScan:
    """Group the DICOM files of a folder (or of a list of files) by series, reading headers only.

    Files that are not DICOM (any name, with or without extension) are skipped and counted.

    Args:
        folder_or_files: a folder, or an explicit list of files.
        recursive: descend into sub-folders.

    Returns:
        The series found and the files skipped.

    Raises:
        StudyReadError: the folder does not exist, or a DICOM file is truncated or corrupt.
    """
    if isinstance(folder_or_files, str | Path):
        root = Path(folder_or_files)
        if not root.exists():
            raise StudyReadError("no such folder", root)
        if not root.is_dir():
            raise StudyReadError("not a folder", root)
        files = list(_iter_files(root, recursive))
    else:
        files = [Path(f) for f in folder_or_files]
        if not files:
            raise StudyReadError("empty list of DICOM files", Path.cwd())
        for f in files:
            if not f.is_file():
                raise StudyReadError("no such file", f)
        root = Path(os.path.commonpath([f.resolve().parent for f in files]))
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    skipped: list[Path] = []
    for path in sorted(files, key=_natural_key):
        ds = _read_header(path)
        if ds is None:
            skipped.append(path)
            continue
        groups.setdefault(_series_key(ds, path), []).append((path, ds))
    series = [_summarise(key, headers) for key, headers in groups.items()]
    series.sort(key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))
    return DicomScan(root=root, series=tuple(series), skipped=tuple(skipped))


def list_series(folder: str | Path, recursive: bool = True) -> list[SeriesInfo]:
    """List the DICOM series of a folder (all objects, images or not).

    Args:
        folder: the folder to walk.
        recursive: descend into sub-folders.

    Returns:
        One :class:`SeriesInfo` per series, ordered by SeriesNumber.

    Raises:
        StudyReadError: see :func:`scan_dicom_folder`.
    """
    return list(scan_dicom_folder(folder, recursive).series)


def _describe(series: Iterable[SeriesInfo]) -> str:
    return "; ".join(s.label for s in series)


_SEVERAL_HINT = "give its SeriesInstanceUID, or read the folder as a multi-phase study with read_study"


def select_ct_series(scan: DicomScan, series_uid: str | None = None, hint: str = _SEVERAL_HINT) -> SeriesInfo:
    """Pick the one CT image series of a scan.

    Args:
        scan: a folder scan.
        series_uid: the series wanted; needed when the folder holds several CT series.
        hint: advice appended to the "several CT series" message.

    Returns:
        The series.

    Raises:
        StudyReadError: no DICOM, no CT image series, non-CT modality, unknown ``series_uid`` or
            several CT series without ``series_uid``.
    """
    root = scan.root
    if not scan.series:
        extra = f" ({len(scan.skipped)} other files skipped)" if scan.skipped else ""
        raise StudyReadError(f"no DICOM files found{extra}", root)
    if series_uid is not None:
        match = [s for s in scan.series if s.series_uid == series_uid]
        if not match:
            raise StudyReadError(
                f"no series with SeriesInstanceUID {series_uid}; found: {_describe(scan.series)}", root
            )
        chosen = match[0]
        if chosen.modality != "CT":
            raise StudyReadError(f"modality {chosen.modality or 'missing'}, expected CT", root)
        if not chosen.is_ct_image:
            raise StudyReadError(
                f"series {chosen.label} is not a CT image series (localizer or no pixels)", root
            )
        return chosen
    ct = [s for s in scan.series if s.is_ct_image]
    if not ct:
        images = [s for s in scan.series if s.is_image]
        modalities = sorted({s.modality or "missing" for s in images if s.modality != "CT"})
        if modalities:
            raise StudyReadError(f"modality {', '.join(modalities)}, expected CT", root)
        if images:
            raise StudyReadError(
                f"no CT image series, only localizer/secondary images: {_describe(images)}", root
            )
        kinds = sorted({s.modality or "unknown" for s in scan.series})
        raise StudyReadError(f"no CT image series (only non-image DICOM objects: {', '.join(kinds)})", root)
    if len(ct) > 1:
        raise StudyReadError(
            f"{len(ct)} CT series found, expected one: {_describe(ct)}. Point at one series folder, {hint}",
            root,
        )
    return ct[0]


# --------------------------------------------------------------------------------------------------
# Reading one series
# --------------------------------------------------------------------------------------------------


def _floats(ds: Dataset, keyword: str, count: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or value == "":
        raise StudyReadError(f"missing required tag {keyword}", path)
    try:
        values = np.array([float(v) for v in (value if isinstance(value, MultiValue | list) else [value])])
    except (TypeError, ValueError) as exc:
        raise StudyReadError(f"unreadable {keyword} {value!r}", path) from exc
    if values.size != count or not np.isfinite(values).all():
        raise StudyReadError(f"{keyword} needs {count} numbers, got {value!r}", path)
    return values


def _load_full(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, force=not _has_dicm_prefix(path))
    except Exception as exc:
        raise StudyReadError(f"corrupt DICOM file ({type(exc).__name__}: {exc})", path) from exc


def _pixels(ds: Dataset, path: Path) -> np.ndarray:
    syntax = UID(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) or "")
    if syntax and not syntax.is_compressed:
        # Say "truncated" plainly rather than pass on the decoder's byte count complaint.
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
        expected *= int(ds.get("BitsAllocated", 16)) // 8
        actual = len(ds.PixelData)
        if actual < expected:
            raise StudyReadError(
                f"truncated or corrupt file: {actual} bytes of pixel data, expected {expected}", path
            )
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # decoder missing, truncated data, bad encapsulation...
        where = f" (transfer syntax {syntax.name})" if syntax else ""
        raise StudyReadError(f"cannot decode pixel data{where}: {exc}", path) from exc


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _check_and_sort(
    datasets: list[Dataset], files: list[Path], root: Path
) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Check a series is one regular stack and return the slice order and its geometry.

    Returns:
        ``(order, positions_along_normal, direction_matrix, pixel_spacing)``: ``order`` lists dataset indices
        by ascending position along the slice normal.

    Raises:
        StudyReadError: missing tags, mixed orientation/size/spacing, duplicated or missing slices,
            uneven spacing or sheared (tilted) stacks.
    """
    iops, ipps, spacings, sizes = [], [], [], []
    for ds, path in zip(datasets, files, strict=True):
        if "PixelData" not in ds:
            raise StudyReadError("missing required tag PixelData (truncated file?)", path)
        frames = _number(ds, "NumberOfFrames")
        if frames is not None and frames > 1:
            raise StudyReadError(f"multi-frame image ({int(frames)} frames) not supported", path)
        for keyword in ("Rows", "Columns"):
            if _number(ds, keyword) is None:
                raise StudyReadError(f"missing required tag {keyword}", path)
        sizes.append((int(ds.Rows), int(ds.Columns)))
        iops.append(_floats(ds, "ImageOrientationPatient", 6, path))
        ipps.append(_floats(ds, "ImagePositionPatient", 3, path))
        spacings.append(_floats(ds, "PixelSpacing", 2, path))
    first = files[0]
    for k in range(1, len(datasets)):
        if not np.allclose(iops[k], iops[0], atol=_ORIENTATION_TOL):
            raise StudyReadError(
                f"mixed ImageOrientationPatient: {_rel(first, root)} has {iops[0].round(5).tolist()}, "
                f"{_rel(files[k], root)} has {iops[k].round(5).tolist()}",
                root,
            )
        if sizes[k] != sizes[0]:
            raise StudyReadError(
                f"mixed image sizes: {_rel(first, root)} is {sizes[0][0]}x{sizes[0][1]} (rows x columns), "
                f"{_rel(files[k], root)} is {sizes[k][0]}x{sizes[k][1]}",
                root,
            )
        if not np.allclose(spacings[k], spacings[0], atol=_SPACING_TOL):
            raise StudyReadError(
                f"mixed PixelSpacing: {_rel(first, root)} has {spacings[0].tolist()}, "
                f"{_rel(files[k], root)} has {spacings[k].tolist()}",
                root,
            )
    row, col = iops[0][:3], iops[0][3:]
    if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2 or abs(row @ col) > 1e-2:
        raise StudyReadError(
            f"ImageOrientationPatient {iops[0].tolist()} is not two perpendicular unit vectors", first
        )
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    positions = np.array(ipps)
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    z = along[order]
    names = [_rel(files[i], root) for i in order]
    if len(order) > 1:
        steps = np.diff(z)
        dup = np.flatnonzero(steps < _DUPLICATE_TOL_MM)
        if dup.size:
            a = int(dup[0])
            raise StudyReadError(
                f"duplicated slices: {names[a]} and {names[a + 1]} are both at position {z[a]:.3f} mm "
                f"({dup.size} duplicate pair(s))",
                root,
            )
        median = float(np.median(steps))
        gaps = np.flatnonzero(steps > _GAP_FACTOR * median)
        if gaps.size:
            a = int(gaps[0])
            more = f" and {gaps.size - 1} more gap(s)" if gaps.size > 1 else ""
            raise StudyReadError(
                f"missing slice(s): gap of {steps[a]:.2f} mm between positions {z[a]:.2f} mm ({names[a]}) "
                f"and {z[a + 1]:.2f} mm ({names[a + 1]}), expected steps of {median:.2f} mm{more}",
                root,
            )
        tol = max(_UNEVEN_ABS_MM, _UNEVEN_REL * median)
        uneven = np.flatnonzero(np.abs(steps - median) > tol)
        if uneven.size:
            a = int(uneven[0])
            raise StudyReadError(
                f"uneven slice spacing: step of {steps[a]:.3f} mm between {names[a]} ({z[a]:.2f} mm) and "
                f"{names[a + 1]} ({z[a + 1]:.2f} mm), median step {median:.3f} mm",
                root,
            )
        # Small steady drifts pass the step test but still misplace far slices: compare with a regular grid.
        mean_step = (z[-1] - z[0]) / (len(z) - 1)
        drift = np.abs(z - (z[0] + mean_step * np.arange(len(z))))
        if drift.max() > tol:
            k = int(np.argmax(drift))
            raise StudyReadError(
                f"uneven slice spacing: {names[k]} is {drift[k]:.3f} mm off a regular "
                f"{mean_step:.3f} mm grid",
                root,
            )
        # Positions must move along the normal; otherwise the stack is sheared (gantry tilt).
        rel = positions[order] - positions[order[0]]
        in_plane = np.linalg.norm(rel - np.outer(rel @ normal, normal), axis=1)
        if in_plane.max() > 0.5 * float(spacings[0].min()):
            k = int(np.argmax(in_plane))
            raise StudyReadError(
                f"slice positions do not follow the slice normal ({names[k]} is {in_plane[k]:.2f} mm off "
                "it): gantry-tilted or sheared series are not supported",
                root,
            )
    direction = np.stack([row, col, normal], axis=1)  # columns: i, j, k axes
    return order, z, direction, spacings[0]


def _exposure_mas(ds: Dataset) -> float | None:
    """Tube current-time product in mAs, from Exposure or current x time."""
    mas = _number(ds, "Exposure")
    if mas is not None:
        return mas
    uas = _number(ds, "ExposureInuAs")
    if uas is not None:
        return uas / 1000.0
    current, time_ms = _number(ds, "XRayTubeCurrent"), _number(ds, "ExposureTime")
    if current is not None and time_ms is not None:
        return current * time_ms / 1000.0
    return None


def _series_meta(ds: Dataset, root: Path, info: SeriesInfo, n_slices: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"source": str(root), "format": "dicom", "n_slices": n_slices}
    for keyword in (
        "SeriesInstanceUID",
        "StudyInstanceUID",
        "PatientID",
        "PatientAge",
        "PatientSex",
        "SeriesDescription",
        "SeriesNumber",
        "Modality",
        "Manufacturer",
        "ManufacturerModelName",
        "InstitutionName",
        "ConvolutionKernel",
        "ContrastBolusAgent",
        "ContrastBolusStartTime",
        "AcquisitionDate",
        "AcquisitionTime",
        "SeriesTime",
        "StudyDate",
    ):
        value = ds.get(keyword)
        meta[keyword] = _json_value(value) if value is not None else ""
    for keyword in ("KVP", "SliceThickness", "XRayTubeCurrent", "ExposureTime"):
        meta[keyword] = _number(ds, keyword)
    meta["Exposure_mAs"] = _exposure_mas(ds)
    meta["series_key"] = info.series_uid
    if not meta["AcquisitionTime"]:
        meta["AcquisitionTime"] = info.acquisition_time
    return meta


def read_series(info: SeriesInfo, root: Path | None = None) -> Volume:
    """Read one listed series into a float32 HU volume.

    Args:
        info: the series, from :func:`list_series` / :func:`scan_dicom_folder`.
        root: folder named in error messages (defaults to the files' common parent).

    Returns:
        The volume, ``k`` ascending along the slice normal, with the series tags in ``meta``.

    Raises:
        StudyReadError: unreadable file, missing tag, inconsistent or irregular geometry.
    """
    files = list(info.files)
    if root is None:
        root = Path(os.path.commonpath([f.resolve().parent for f in files]))
    datasets = [_load_full(f) for f in files]
    order, z, direction, pixel_spacing = _check_and_sort(datasets, files, root)
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    array = np.empty((len(order), rows, cols), dtype=np.float32)
    for k, idx in enumerate(order):
        ds, path = datasets[idx], files[idx]
        pixels = _pixels(ds, path)
        if pixels.shape != (rows, cols):
            raise StudyReadError(f"pixel data shape {pixels.shape}, expected {(rows, cols)}", path)
        slope = _number(ds, "RescaleSlope")
        intercept = _number(ds, "RescaleIntercept")
        slope = 1.0 if slope is None else slope
        intercept = 0.0 if intercept is None else intercept
        array[k] = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    first = datasets[order[0]]
    if len(order) > 1:
        step = float((z[-1] - z[0]) / (len(order) - 1))
    else:
        step = _number(first, "SpacingBetweenSlices") or _number(first, "SliceThickness") or 1.0
    origin = _floats(first, "ImagePositionPatient", 3, files[order[0]])
    return Volume(
        array=array,
        spacing=(float(pixel_spacing[1]), float(pixel_spacing[0]), abs(step)),
        origin=tuple(float(v) for v in origin),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.reshape(-1)),
        meta=_series_meta(first, root, info, len(order)),
    )


def read_dicom_series(
    folder_or_files: str | Path | Sequence[str | Path], series_uid: str | None = None
) -> Volume:
    """Read one CT series from a folder (searched recursively) or a list of files.

    Slices are sorted by position along the slice normal (row x column cosines), ascending; pixel values
    are rescaled to HU (float32). Non-DICOM files and non-image objects (SEG, RTSTRUCT...) are ignored.

    Args:
        folder_or_files: a folder, or the files of one series.
        series_uid: which series to read when the folder holds several CT series.

    Returns:
        The CT volume: ``spacing = (column spacing, row spacing, slice step)``, ``origin`` = position of the
        first slice, ``direction`` columns = row cosine, column cosine, slice normal.

    Raises:
        StudyReadError: see :func:`select_ct_series` and :func:`read_series`.
    """
    scan = scan_dicom_folder(folder_or_files)
    info = select_ct_series(scan, series_uid)
    return read_series(info, scan.root)


def read_dicom_file_series(path: str | Path) -> Volume:
    """Read the series one DICOM file belongs to, from the files in the same folder.

    Args:
        path: any slice of the series.

    Returns:
        The whole series as a volume.

    Raises:
        StudyReadError: the file is not DICOM, or see :func:`read_series`.
    """
    path = Path(path)
    if not path.is_file():
        raise StudyReadError("no such file", path)
    header = _read_header(path)
    if header is None:
        raise StudyReadError("not a DICOM file", path)
    scan = scan_dicom_folder(path.parent, recursive=False)
    info = select_ct_series(scan, _series_key(header, path))
    return read_series(info, scan.root)


def is_dicom_file(path: str | Path) -> bool:
    """Whether ``path`` is a file that starts like DICOM (preamble + ``DICM``, or a bare data set)."""
    path = Path(path)
    return path.is_file() and (_has_dicm_prefix(path) or _looks_like_raw_dataset(path))


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def derived_uid(*parts: str) -> str:
    """A deterministic UID ``2.25.<uuid>`` from the name-based (v5) UUID of ``parts``.

    ``pydicom.uid.generate_uid(prefix=None, ...)`` ignores its entropy sources and returns a random UUID,
    so it cannot give reproducible files.

    Args:
        parts: strings that identify the object (a parent UID, a slice index...).

    Returns:
        The UID (at most 44 characters, within the 64 allowed).
    """
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '|'.join(parts)).int}"


def _ds(value: float) -> str:
    """A number as a DICOM DS string (at most 16 characters, as precise as that allows)."""
    return format_number_as_ds(float(value))


def write_dicom_series(
    volume: Volume,
    folder: str | Path,
    *,
    phase: str,
    patient_id: str,
    patient_name: str,
    patient_age_years: int,
    patient_sex: str,
    study_uid: str,
    series_uid: str | None = None,
    series_number: int,
    series_description: str,
    acquisition: dict[str, Any],
    contrast_agent: str | None,
    acquisition_time: str,
    study_date: str = "20260101",
) -> list[Path]:
    """Write a volume in HU as a CT series, one uncompressed file per slice.

    Values are rounded and clipped to ``[-1024, 64511]`` HU and stored as uint16 with RescaleIntercept -1024.
    Every UID derives from ``study_uid`` / ``series_uid``, and no clock is read, so writing the same
    volume twice gives byte-identical files. A volume whose ``k`` axis points against the row x column
    normal (left-handed direction) is written correctly but reads back with ``k`` reversed.

    Args:
        volume: the CT volume (float or integer HU).
        folder: output folder (created); files are named ``IM0001.dcm``... in ``k`` order.
        phase: one of :data:`liaids.codes.PHASES`, recorded in ImageComments.
        patient_id: PatientID.
        patient_name: PatientName (``Family^Given``).
        patient_age_years: age, written as PatientAge ``"055Y"``.
        patient_sex: ``"M"``, ``"F"`` or ``"O"``.
        study_uid: StudyInstanceUID (shared by the phases of a study).
        series_uid: SeriesInstanceUID; derived from the study UID, phase and series number when None.
        series_number: SeriesNumber.
        series_description: SeriesDescription.
        acquisition: optional protocol values: ``manufacturer``, ``institution``, ``kvp``, ``mas``,
            ``kernel``, ``slice_thickness_mm``, ``exposure_time_ms``, ``contrast_start_time`` (TM),
            ``study_time`` (TM), ``model``, ``study_description``.
        contrast_agent: ContrastBolusAgent; None or empty for a non-contrast series (tag left out).
        acquisition_time: AcquisitionTime / SeriesTime / ContentTime (``HHMMSS``).
        study_date: StudyDate / SeriesDate / AcquisitionDate (``YYYYMMDD``).

    Returns:
        The written files, in slice order.

    Raises:
        LiaidsError: unknown phase or sex, or a direction that is not orthonormal.
    """
    folder = Path(folder)
    if phase not in PHASES:
        raise LiaidsError(f"unknown phase {phase!r}; use {', '.join(PHASES)}", folder)
    if patient_sex not in ("M", "F", "O"):
        raise LiaidsError(f"patient_sex must be M, F or O, got {patient_sex!r}", folder)
    d = volume.direction_matrix
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise LiaidsError("volume direction is not orthonormal; cannot write it as an axial stack", folder)
    acq = {**_DEFAULT_ACQUISITION, **{k: v for k, v in acquisition.items() if v is not None}}
    if series_uid is None:
        series_uid = derived_uid(study_uid, phase, str(series_number))
    frame_uid = derived_uid(study_uid, "frame-of-reference")
    row, col = d[:, 0], d[:, 1]
    normal = np.cross(row, col)
    iop = [_ds(v) for v in (*row, *col)]
    n_k, n_j, n_i = volume.shape
    hu = np.clip(
        np.rint(np.nan_to_num(np.asarray(volume.array, dtype=np.float64), nan=_HU_MIN)), _HU_MIN, _HU_MAX
    )
    stored = (hu - _WRITE_INTERCEPT).astype(np.uint16)
    mas = float(acq["mas"])
    exposure_ms = int(acq["exposure_time_ms"])
    thickness = float(acq.get("slice_thickness_mm") or volume.spacing[2])
    width = max(4, len(str(n_k)))
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for k in range(n_k):
        sop_uid = derived_uid(series_uid, "slice", str(k))
        position = volume.index_to_physical(np.array([0.0, 0.0, float(k)]))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
        ds.StudyTime = str(acq.get("study_time", ""))
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = acquisition_time
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = str(acq["manufacturer"])
        ds.InstitutionName = str(acq["institution"])
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = str(acq.get("study_description", "CT ABDOMEN TRIPLE PHASE"))
        ds.SeriesDescription = series_description
        if acq.get("model"):
            ds.ManufacturerModelName = str(acq["model"])
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = patient_sex
        ds.PatientAge = f"{int(patient_age_years):03d}Y"
        if contrast_agent:
            ds.ContrastBolusAgent = contrast_agent
            if acq.get("contrast_start_time"):
                ds.ContrastBolusStartTime = str(acq["contrast_start_time"])
        ds.BodyPartExamined = "ABDOMEN"
        ds.SliceThickness = _ds(thickness)
        ds.KVP = _ds(float(acq["kvp"]))
        ds.ReconstructionDiameter = _ds(max(n_i * volume.spacing[0], n_j * volume.spacing[1]))
        ds.ExposureTime = str(exposure_ms)
        ds.XRayTubeCurrent = str(round(mas * 1000.0 / exposure_ms))
        ds.Exposure = str(round(mas))
        ds.ConvolutionKernel = str(acq["kernel"])
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = str(int(series_number))
        ds.AcquisitionNumber = "1"
        ds.InstanceNumber = str(k + 1)
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = iop
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(float(position @ normal))
        ds.ImageComments = f"LiAIDS synthetic {phase} phase"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = n_j
        ds.Columns = n_i
        ds.PixelSpacing = [_ds(volume.spacing[1]), _ds(volume.spacing[0])]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = str(_WRITE_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.LossyImageCompression = "00"
        ds.PixelData = np.ascontiguousarray(stored[k]).astype("<u2").tobytes()
        path = folder / f"IM{k + 1:0{width}d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written
