"""Provenance: the software and machine recorded in model folders, reports and evaluations."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from liaids.model_store import load_model_files, save_model
from liaids.provenance import PACKAGES, cpu_model, software


def _base(version: str) -> str:
    return version.split("+")[0]  # local build tags (+cpu, +cu121) are not in every listing


def test_software_names_python_and_the_installed_packages() -> None:
    info = software("cpu")
    assert set(PACKAGES) | {"python", "device"} == set(info)
    assert _base(info["torch"]) == _base(torch.__version__) and info["device"] == "cpu"
    assert "device" not in software()


def test_cpu_model_reads_the_model_name(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000 @ 3.0GHz\nflags\t: x\n")
    assert cpu_model(cpuinfo) == "Test CPU 9000 @ 3.0GHz"
    assert isinstance(cpu_model(tmp_path / "missing"), str) and cpu_model(tmp_path / "missing")


def test_saved_model_config_records_software_and_machine(tmp_path: Path) -> None:
    config = {"kind": "test-model", "training": {"seed": 0}}
    save_model(tmp_path / "m", {"w": torch.ones(2)}, config)
    stored = json.loads((tmp_path / "m" / "config.json").read_text())
    assert stored["kind"] == "test-model" and stored["training"] == {"seed": 0}
    assert _base(stored["software"]["torch"]) == _base(torch.__version__)
    assert stored["machine"]["torch_threads"] == torch.get_num_threads() and stored["machine"]["cpus"] >= 1
    state, loaded = load_model_files(tmp_path / "m", "test-model")
    assert torch.equal(state["w"], torch.ones(2)) and loaded == stored
    # A config that names its own software (a model folder copied and re-saved) keeps it.
    save_model(tmp_path / "copy", {"w": torch.ones(2)}, {**config, "software": {"torch": "1.0"}})
    assert json.loads((tmp_path / "copy" / "config.json").read_text())["software"] == {"torch": "1.0"}
