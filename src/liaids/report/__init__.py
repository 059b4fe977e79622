"""Outputs of ``liaids diagnose``: report.json, report.html with key images, liver and lesion masks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from liaids.codes import PHASES
from liaids.report.html_report import render_html
from liaids.report.json_report import SCHEMA, SCHEMA_VERSION, build_report, output_files, write_report_json
from liaids.report.key_images import (
    encode_png,
    render_finding_images,
    render_key_images,
    render_report_images,
)

if TYPE_CHECKING:
    from liaids.pipeline.diagnose import Diagnosis

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "build_report",
    "encode_png",
    "output_files",
    "render_finding_images",
    "render_html",
    "render_key_images",
    "render_report_images",
    "write_report_folder",
    "write_report_json",
]


def write_report_folder(diagnosis: Diagnosis, folder: str | Path, started: float | None = None) -> Path:
    """Write every output of a run into ``folder`` (normally the staging folder of OUTDIR).

    Files: ``liver_{P}.nii.gz`` (0/1 liver, lesions included, as in the dataset format),
    ``lesions_{P}.nii.gz`` (lesion instance ids = report.json ids), ``report.json``, ``report.html``.

    Args:
        diagnosis: the run's result.
        folder: an existing folder.
        started: ``time.perf_counter()`` at the start of the run, for the ``total`` timing.

    Returns:
        The path of report.json.
    """
    from liaids.io import write_nifti

    folder = Path(folder)
    t0 = time.perf_counter()
    names = output_files()
    for p in PHASES:
        liver = diagnosis.livers[p]
        write_nifti(liver.with_array((liver.array > 0).astype(np.uint8)), folder / names["liver"][p])
        write_nifti(diagnosis.instances[p], folder / names["lesions"][p])
    images, finding_images = render_report_images(diagnosis)
    timings = dict(diagnosis.timings)
    timings["outputs"] = time.perf_counter() - t0
    if started is not None:
        timings["total"] = time.perf_counter() - started
    report = build_report(diagnosis, timings)
    path = write_report_json(report, folder / names["report_json"])
    (folder / names["report_html"]).write_text(render_html(report, images, finding_images), encoding="utf-8")
    return path
