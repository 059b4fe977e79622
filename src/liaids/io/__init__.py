"""Reading and writing CT volumes and studies: NIfTI, DICOM series, phase identification, safe outputs."""

from liaids.io.atomic import atomic_write_bytes, atomic_write_text, staged_output_dir
from liaids.io.dicom import (
    DicomScan,
    SeriesInfo,
    list_series,
    read_dicom_file_series,
    read_dicom_series,
    read_series,
    scan_dicom_folder,
    select_ct_series,
    write_dicom_series,
)
from liaids.io.nifti import read_nifti, write_nifti
from liaids.io.phases import (
    PhaseAssignment,
    check_phases,
    description_phases,
    find_aorta,
    identify_phases,
    measure_enhancement,
    read_study,
)
from liaids.io.volume import read_volume

__all__ = [
    "DicomScan",
    "PhaseAssignment",
    "SeriesInfo",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_phases",
    "description_phases",
    "find_aorta",
    "identify_phases",
    "list_series",
    "measure_enhancement",
    "read_dicom_file_series",
    "read_dicom_series",
    "read_nifti",
    "read_series",
    "read_study",
    "read_volume",
    "scan_dicom_folder",
    "select_ct_series",
    "staged_output_dir",
    "write_dicom_series",
    "write_nifti",
]
