"""Self-describing model folders: weights, configuration and checksum, loaded safely.

A model folder holds ``model.pt`` (a state dict, loaded with ``weights_only=True``), ``config.json``
(network profile and sizes, preprocessing plan, training provenance) and ``model.pt.sha256``. Nothing
else is needed to run the model, and a truncated or altered weights file is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from liaids.errors import ModelLoadError
from liaids.provenance import machine, software

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def builtin_model_dir(name: str) -> Path:
    """Folder of a model shipped inside the package (``liaids/weights/NAME``)."""
    return Path(str(resources.files("liaids").joinpath("weights").joinpath(name)))


def save_model(folder: Path, state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """Write ``model.pt``, its checksum and ``config.json`` into ``folder`` (created).

    ``config.json`` also gets ``software`` and ``machine`` (:mod:`liaids.provenance`) unless ``config``
    has them: training does not repeat bit for bit across machines and library builds.
    """
    config = {"software": software(), "machine": machine(), **config}
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, weights)
    (folder / f"{WEIGHTS_FILE}.sha256").write_text(f"{sha256(weights)}  {WEIGHTS_FILE}\n")
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    return folder


def load_model_files(folder: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a model folder: verify the checksum, load weights safely, check the model kind.

    Args:
        folder: the model folder.
        kind: expected ``config["kind"]`` (for example ``"liver-segmentation"``).

    Raises:
        ModelLoadError: missing files, checksum mismatch (truncated or altered weights), unreadable
            weights, or a model of another kind.
    """
    folder = Path(folder)
    weights, config_path = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    for path in (weights, config_path):
        if not path.is_file():
            raise ModelLoadError("model file not found", path)
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"unreadable model configuration ({exc})", config_path) from exc
    if not isinstance(config, dict) or config.get("kind") != kind:
        got = config.get("kind") if isinstance(config, dict) else None
        raise ModelLoadError(f"expected a {kind} model, found {got!r}", config_path)
    checksum_file = folder / f"{WEIGHTS_FILE}.sha256"
    if checksum_file.is_file():
        expected = checksum_file.read_text().split()[0]
        if sha256(weights) != expected:
            raise ModelLoadError("checksum mismatch: the weights file is truncated or altered", weights)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged archives
        raise ModelLoadError(
            f"cannot load weights ({type(exc).__name__}: {exc})".splitlines()[0], weights
        ) from exc
    if not isinstance(state, dict):
        raise ModelLoadError("weights file does not hold a state dict", weights)
    return state, config
