"""One entry point for a single CT volume: a NIfTI file, a DICOM series folder or one DICOM file."""

from __future__ import annotations

from pathlib import Path

from liaids.errors import StudyReadError
from liaids.io.dicom import (
    is_dicom_file,
    read_dicom_file_series,
    read_series,
    scan_dicom_folder,
    select_ct_series,
)
from liaids.io.nifti import read_nifti
from liaids.types import Volume


def _is_nifti_name(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def read_volume(path: str | Path) -> Volume:
    """Read one CT volume, whatever its container.

    * ``.nii`` / ``.nii.gz`` file: :func:`liaids.io.nifti.read_nifti`.
    * folder: the one CT series it holds (searched recursively).
    * a single DICOM file: the series that file belongs to, from the files next to it.

    Args:
        path: file or folder.

    Returns:
        The volume.

    Raises:
        StudyReadError: missing path, unknown format, several CT series in the folder, or any read error.
    """
    path = Path(path)
    if not path.exists():
        raise StudyReadError("no such file or folder", path)
    if path.is_dir():
        scan = scan_dicom_folder(path)
        info = select_ct_series(scan, hint="or use read_study for a multi-phase study")
        return read_series(info, scan.root)
    if _is_nifti_name(path):
        return read_nifti(path)
    if is_dicom_file(path):
        return read_dicom_file_series(path)
    raise StudyReadError("not a NIfTI file or DICOM folder", path)
