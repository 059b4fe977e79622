"""Which software and which computer produced a result.

Written into ``report.json``, the evaluation's ``metrics.json`` and every trained model's ``config.json``.
Training on a CPU repeats exactly for one seed on one machine, but not across machines or library builds
(the order of floating-point reductions differs, and a detector's training can take another path from the
first epochs on), so a model folder names the versions, CPU and thread count that trained it.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

#: Packages whose versions shape the numbers: ours, the networks' and the array maths'.
PACKAGES: tuple[str, ...] = ("liaids", "torch", "torchvision", "monai", "numpy")


def package_version(name: str) -> str:
    """The installed version of a distribution, or ``"unknown"`` (for example a source tree not installed)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def software(device: str | None = None) -> dict[str, Any]:
    """Python's version and those of :data:`PACKAGES`.

    Args:
        device: the torch device the result was computed on (``cpu``, ``cuda``...), recorded when given.

    Returns:
        ``{"python": ..., "liaids": ..., "torch": ..., "torchvision": ..., "monai": ..., "numpy": ...}``,
        plus ``"device"`` when given.
    """
    out: dict[str, Any] = {"python": platform.python_version(), **{p: package_version(p) for p in PACKAGES}}
    if device is not None:
        out["device"] = device
    return out


def machine() -> dict[str, Any]:
    """The computer: operating system, CPU model, logical CPUs and torch's intra-op thread count.

    Returns:
        ``{"platform": ..., "cpu": ..., "cpus": int, "torch_threads": int}``.
    """
    import torch

    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``; elsewhere ``platform.processor()``), or ``"unknown"``.

    Args:
        cpuinfo: the file to read, a parameter for tests.
    """
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
