"""Shared output of the benchmark scripts: JSON on stdout, and the same JSON in a results file."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], out: Path | None, shown: dict[str, Any] | None = None) -> None:
    """Print ``shown`` (default: ``result``) as JSON and write ``result`` to ``out`` when given."""
    print(json.dumps(result if shown is None else shown, indent=1))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")


def machine_info() -> dict[str, Any]:
    """Where a benchmark ran: CPU count, thread setting, Python and numpy versions."""
    import numpy as np

    return {
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
