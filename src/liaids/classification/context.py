"""Patient context: a lesion's type probabilities weighed with those of the same patient's other lesions.

The classifier sees one lesion at a time, but the lesions of one patient are mostly of one type:
metastases and cysts come in numbers, a primary tumour brings satellites (``ct-appearance.md``; in the
phantom's zzh test cohort 82 % of the lesions of patients with several lesions share the patient's most
common type). Radiologists read a lesion with the others in mind. This stage does the same with one
number, the context weight ``w``; with m(type) the mean of p(type | j) over the patient's other lesions j:

    p'(type | lesion i)  ~  p(type | lesion i) * (m(type) + floor) ** w

``w = 0`` switches it off (and a patient with one lesion is never changed); the floor keeps a type that
the other lesions rule out from being ruled out for this one (an incidental cyst beside a tumour). The
weight belongs to a classifier: it is chosen on that classifier's validation lesions and stored as
``context.json`` in its model folder (absent: 0).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from liaids.errors import ModelLoadError

CONTEXT_FILE = "context.json"
DEFAULT_FLOOR = 1e-3


@dataclass(frozen=True)
class PatientContext:
    """How much a lesion's probabilities lean on the patient's other lesions.

    Args:
        weight: exponent of the other lesions' mean probabilities (0: no context).
        floor: added to that mean before the exponent.
    """

    weight: float = 0.0
    floor: float = DEFAULT_FLOOR

    def apply(self, probabilities: np.ndarray, patient_ids: Sequence[str] | None = None) -> np.ndarray:
        """See :func:`apply_patient_context`."""
        return apply_patient_context(probabilities, self.weight, patient_ids, self.floor)

    def to_dict(self) -> dict[str, float]:
        return {"weight": self.weight, "floor": self.floor}


def apply_patient_context(
    probabilities: np.ndarray,
    weight: float,
    patient_ids: Sequence[str] | None = None,
    floor: float = DEFAULT_FLOOR,
) -> np.ndarray:
    """Lesion type probabilities with the patient context applied.

    Args:
        probabilities: ``(N, C)`` per-lesion probabilities (rows sum to 1).
        weight: the context weight (0 returns a copy unchanged).
        patient_ids: the patient of each row; None: all rows are one patient's lesions.
        floor: added to the other lesions' mean probabilities.

    Returns:
        ``(N, C)`` probabilities, rows summing to 1.
    """
    probs = np.asarray(probabilities, np.float64)
    out = probs.copy()
    if weight == 0 or len(probs) < 2:
        return out.astype(np.float32)
    ids = np.zeros(len(probs), int) if patient_ids is None else np.unique(patient_ids, return_inverse=True)[1]
    for patient in np.unique(ids):
        rows = np.flatnonzero(ids == patient)
        if len(rows) < 2:
            continue
        total = probs[rows].sum(axis=0)
        others = (total[None] - probs[rows]) / (len(rows) - 1)
        logits = np.log(np.clip(probs[rows], 1e-12, None)) + weight * np.log(others + floor)
        logits -= logits.max(axis=1, keepdims=True)
        weighted = np.exp(logits)
        out[rows] = weighted / weighted.sum(axis=1, keepdims=True)
    return out.astype(np.float32)


def mean_log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    picked = np.asarray(probabilities)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def choose_context_weight(
    probabilities: np.ndarray,
    labels: np.ndarray,
    patient_ids: Sequence[str],
    weights: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0),
) -> tuple[float, list[dict[str, float]]]:
    """The weight with the lowest mean log-loss on labelled validation lesions.

    Args:
        probabilities: ``(N, C)`` the classifier's probabilities of validation lesions (ground-truth boxes).
        labels: ``(N,)`` true class indices.
        patient_ids: the patient of each lesion.
        weights: candidate weights.

    Returns:
        The chosen weight and, per candidate, its log-loss and accuracy.
    """
    table = []
    for w in weights:
        p = apply_patient_context(probabilities, w, patient_ids)
        table.append(
            {
                "weight": float(w),
                "log_loss": round(mean_log_loss(p, labels), 5),
                "accuracy": round(float((p.argmax(1) == np.asarray(labels)).mean()), 4),
            }
        )
    best = min(table, key=lambda row: (row["log_loss"], row["weight"]))
    return best["weight"], table


def load_patient_context(folder: str | Path) -> PatientContext:
    """The context stored with a classifier (``context.json``); no file: no context.

    Raises:
        ModelLoadError: the file exists but is unreadable or holds an invalid weight.
    """
    path = Path(folder) / CONTEXT_FILE
    if not path.is_file():
        return PatientContext()
    try:
        data = json.loads(path.read_text())
        context = PatientContext(float(data["weight"]), float(data.get("floor", DEFAULT_FLOOR)))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"cannot read the patient context ({type(exc).__name__})", path) from exc
    if not (0.0 <= context.weight <= 10.0 and 0.0 < context.floor <= 1.0):
        raise ModelLoadError(
            f"invalid patient context: weight {context.weight} (0-10), floor {context.floor} (0-1]", path
        )
    return context


def save_patient_context(folder: str | Path, context: PatientContext, details: dict[str, Any]) -> Path:
    """Write ``context.json`` into a classifier's model folder, with how the weight was chosen."""
    path = Path(folder) / CONTEXT_FILE
    path.write_text(json.dumps({**context.to_dict(), "details": details}, indent=1) + "\n")
    return path
