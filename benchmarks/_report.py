"""Shared output of the benchmark scripts: JSON on stdout, and the same JSON in a results file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], out: Path | None, shown: dict[str, Any] | None = None) -> None:
    """Print ``shown`` (default: ``result``) as JSON and write ``result`` to ``out`` when given."""
    print(json.dumps(result if shown is None else shown, indent=1))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")


def machine_info() -> dict[str, Any]:
    """Where a benchmark ran: the computer and thread settings, Python's and the packages' versions."""
    from liaids.provenance import machine, software

    return {**machine(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), **software()}
