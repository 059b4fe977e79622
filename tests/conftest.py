"""Shared fixtures: the real-data folder and small synthetic CT series and triple-phase studies."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from liaids.io.dicom import write_dicom_series
from liaids.types import Volume

#: HU of the synthetic phases: aorta and liver-like soft tissue.
PHASE_HU: dict[str, dict[str, float]] = {
    "NC": {"aorta": 40.0, "soft": 55.0},
    "ART": {"aorta": 280.0, "soft": 75.0},
    "PV": {"aorta": 160.0, "soft": 115.0},
}


#: Files every training run writes into its output folder (the model folder plus its artefacts).
TRAINING_ARTEFACTS = (
    "model.pt",
    "model.pt.sha256",
    "config.json",
    "log.csv",
    "log.json",
    "splits.json",
    "plan.json",
    "last.pt",
)


def assert_training_artefacts(folder: Path) -> None:
    """Fail naming the first artefact a training run did not write."""
    for name in TRAINING_ARTEFACTS:
        assert (folder / name).is_file(), f"{folder} lacks {name}"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repository; skips the test when it is not there."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real test data not available at {path}")
    return path


@pytest.fixture
def small_volume() -> Volume:
    """A 8 x 32 x 32 CT-like volume (HU with fractions) with non-trivial geometry."""
    rng = np.random.default_rng(7)
    array = rng.normal(40.0, 300.0, size=(8, 32, 32)).astype(np.float32)
    array[0, 0, :4] = [-3000.0, -1024.4, 70000.0, 12.5]  # clipping and rounding cases
    return Volume(
        array=array,
        spacing=(0.8, 0.9, 2.5),
        origin=(12.5, -30.25, 100.75),
        direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
    )


@pytest.fixture
def write_series() -> Callable[..., list[Path]]:
    """Factory writing a volume as a DICOM CT series with sensible default tags.

    Call as ``write_series(volume, folder, **overrides)``; overrides go to ``write_dicom_series``.
    """

    def _write(volume: Volume, folder: Path, **overrides: Any) -> list[Path]:
        kwargs: dict[str, Any] = {
            "phase": "PV",
            "patient_id": "LIAIDS-0001",
            "patient_name": "Phantom^One",
            "patient_age_years": 55,
            "patient_sex": "M",
            "study_uid": "1.2.826.0.1.3680043.10.1.1",
            "series_number": 3,
            "series_description": "Abdomen 5mm",
            "acquisition": {"kvp": 120, "mas": 210, "kernel": "B30f", "manufacturer": "ACME"},
            "contrast_agent": "Iohexol 350",
            "acquisition_time": "101500",
        }
        kwargs.update(overrides)
        return write_dicom_series(volume, folder, **kwargs)

    return _write


def _phase_volume(phase: str, seed: int = 0, shift_mm: tuple[float, float] = (0.0, 0.0)) -> Volume:
    """A small abdomen-like volume: fat body, liver, vertebra and a round aorta in front of it.

    96 x 96 pixels of 2.5 mm, 10 slices of 5 mm, canonical axial orientation; ``shift_mm`` moves the patient
    (x, y) to mimic a different position between phases.
    """
    hu = PHASE_HU[phase]
    n_k, n_j, n_i = 10, 96, 96
    spacing = (2.5, 2.5, 5.0)
    origin = (-120.0, -120.0, -300.0)
    x = origin[0] + spacing[0] * np.arange(n_i) - shift_mm[0]
    y = origin[1] + spacing[1] * np.arange(n_j) - shift_mm[1]
    yy, xx = np.meshgrid(y, x, indexing="ij")
    image = np.full((n_j, n_i), -1000.0)
    image[(xx / 100.0) ** 2 + (yy / 80.0) ** 2 <= 1.0] = -90.0  # fat-filled body
    image[((xx + 45.0) / 45.0) ** 2 + ((yy + 10.0) / 40.0) ** 2 <= 1.0] = hu["soft"]  # liver (patient right)
    image[((xx - 40.0) / 25.0) ** 2 + ((yy - 55.0) / 12.0) ** 2 <= 1.0] = 50.0  # paraspinal muscle
    image[((xx + 40.0) / 25.0) ** 2 + ((yy - 55.0) / 12.0) ** 2 <= 1.0] = 50.0
    image[xx**2 + (yy - 50.0) ** 2 <= 16.0**2] = 450.0  # vertebral body (posterior midline)
    image[(xx - 8.0) ** 2 + (yy - 18.0) ** 2 <= 11.0**2] = hu["aorta"]  # aorta, just anterior, left
    rng = np.random.default_rng(seed)
    array = np.repeat(image[None], n_k, axis=0) + rng.normal(0.0, 8.0, size=(n_k, n_j, n_i))
    return Volume(array=array.astype(np.float32), spacing=spacing, origin=origin)


@pytest.fixture(scope="session")
def phase_volumes() -> dict[str, Volume]:
    """NC / ART / PV synthetic volumes of one patient (ART and PV slightly shifted, as after breathing).

    Aorta 40 / 280 / 160 HU, liver-like soft tissue 55 / 75 / 115 HU.
    """
    return {
        "NC": _phase_volume("NC", seed=1),
        "ART": _phase_volume("ART", seed=2, shift_mm=(2.0, -1.5)),
        "PV": _phase_volume("PV", seed=3, shift_mm=(-1.0, 1.0)),
    }
