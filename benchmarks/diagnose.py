"""``liaids diagnose`` end to end: seconds per study and per stage, and peak memory.

Study: one phantom patient (profile qzh, seed 300), each phase cut or padded (air) to 512 x 512 x 64,
given as three NIfTI files (targets on the 2-core CPU: <= 30 s per study, <= 6 GB peak memory).
The study is prepared in a separate process, so the peak resident memory reported (``ru_maxrss``) is that of
the process that loads the models and runs the diagnosis only. Seconds per stage come from report.json.

Models: the shipped ones, or ``--weights`` (see ``liaids.pipeline.diagnose.model_folders``). A role with no
shipped weights yet (detector, classifier) gets an untrained stand-in of the ``small`` profile with the same
architecture and plan: the timings are representative, the lesions are not. The result lists the stand-ins.

Run:
  .venv/bin/python benchmarks/diagnose.py [--weights DIR] [--device cpu|cuda] [--threads N] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from _report import emit

DEPTH = 64
TARGET_SECONDS = 30.0
TARGET_PEAK_GB = 6.0


def prepare_study(folder: str) -> dict[str, Any]:
    """Write the benchmark study (three NIfTI files) and its clinical fields into ``folder``."""
    import numpy as np

    from liaids.codes import PHASES
    from liaids.io import write_nifti
    from liaids.phantom.profiles import load_profile
    from liaids.phantom.synthesize import synthesize_case
    from liaids.types import Volume

    case = synthesize_case(load_profile("qzh"), 300, 0)
    shapes = {}
    for p in PHASES:
        vol = case.study[p]
        arr = vol.array[:DEPTH]
        if arr.shape[0] < DEPTH:  # pad above the scan with air
            pad = np.full((DEPTH - arr.shape[0], *arr.shape[1:]), -1000, arr.dtype)
            arr = np.concatenate([arr, pad])
        write_nifti(Volume(arr, vol.spacing, vol.origin, vol.direction), Path(folder) / f"image_{p}.nii.gz")
        shapes[p] = list(arr.shape)
    clinical = case.plan.clinical.to_dict()
    (Path(folder) / "clinical.json").write_text(json.dumps(clinical))
    return {
        "shape_kji": shapes,
        "spacing_mm": list(case.study["PV"].spacing),
        "lesions_in_phantom": len(case.lesion_specs),
    }


def _prepare_in_child(folder: str) -> dict[str, Any]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(prepare_study, (folder,))


def stand_in_models(folder: Path, weights: Path | None) -> tuple[Path | list[Path] | None, list[str]]:
    """Untrained ``small`` models for the roles that have neither ``--weights`` nor shipped weights."""
    import torch

    from liaids.classification.patches import PATCH_PLANS
    from liaids.codes import CLINICAL_FIELDS, LESION_TYPES
    from liaids.detection.merge import MergeSettings
    from liaids.detection.preprocessing import PLANS
    from liaids.model_store import save_model
    from liaids.networks.lesion_classifier import PROFILES, LesionClassifierNet
    from liaids.networks.lesion_detector import build_detector, profile
    from liaids.pipeline.diagnose import model_folders

    chosen = model_folders(weights)
    missing = [role for role, path in chosen.items() if not (path / "model.pt").is_file()]
    folders = [chosen[role] for role in chosen if role not in missing]
    torch.manual_seed(0)
    if "detector" in missing:
        # Few boxes per slice, as a trained detector gives: an untrained one would flood the later stages.
        cfg = replace(profile("cswin3d", "small"), box_detections=5)
        config = {
            "kind": "lesion-detection",
            "profile": "small",
            "network": cfg.to_dict(),
            "plan": PLANS["small"].to_dict(),
            "merge": asdict(MergeSettings()),
        }
        folders.append(save_model(folder / "detector", build_detector(cfg).state_dict(), config))
    if "classifier" in missing:
        config = {
            "kind": "lesion-classification",
            "profile": "small",
            "variant": "full",
            "network": PROFILES["small"].to_dict(),
            "plan": PATCH_PLANS["small"].to_dict(),
            "labels": list(LESION_TYPES),
            "clinical_fields": list(CLINICAL_FIELDS),
        }
        folders.append(
            save_model(folder / "classifier", LesionClassifierNet(PROFILES["small"]).state_dict(), config)
        )
    if "liver" in missing:
        raise SystemExit("no liver segmentation weights: give --weights with a liver/ model folder")
    return folders, missing


def run(weights: Path | None, device: str, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from liaids.pipeline import diagnose, parse_clinical_options

    with tempfile.TemporaryDirectory(prefix="liaids-bench-") as tmp:
        root = Path(tmp)
        (root / "study").mkdir()
        study = _prepare_in_child(str(root / "study"))
        folders, stand_ins = stand_in_models(root / "models", weights)
        files = [root / "study" / f"image_{p}.nii.gz" for p in ("NC", "ART", "PV")]
        t0 = time.perf_counter()
        out = diagnose(
            files,
            root / "out",
            clinical=parse_clinical_options(root / "study" / "clinical.json"),
            weights=folders,
            device=device,
        )
        seconds = time.perf_counter() - t0
        report = json.loads((out / "report.json").read_text())
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {
        "study": study,
        "device": device,
        "threads": threads,
        "models": {role: {**src, "stand_in": role in stand_ins} for role, src in report["models"].items()},
        "stand_in_models": stand_ins,
        "seconds_per_study": round(seconds, 2),
        "seconds_per_stage": report["timings_s"],
        "peak_rss_gb": round(peak_gb, 2),
        "lesions_reported": len(report["lesions"]),
        "targets": {"seconds_per_study": TARGET_SECONDS, "peak_rss_gb": TARGET_PEAK_GB},
        "within_targets": {
            "seconds_per_study": seconds <= TARGET_SECONDS,
            "peak_rss_gb": peak_gb <= TARGET_PEAK_GB,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=None, help="model folders (default: shipped models)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the 2-core target: 2)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "diagnose.json")
    a = ap.parse_args()
    emit(run(a.weights, a.device, a.threads), a.out)


if __name__ == "__main__":
    main()
