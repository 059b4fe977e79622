"""Lesion verification: is a matched lesion a lesion at all, or a vessel the detector took for one?

Not part of the paper. On the phantom's validation cohort most false positives above the detector's
operating point are hepatic veins, the IVC and portal branches, found in all three phases: each phase's
detector and candidate filter see a few slices of one phase, where a vessel's cross-section looks like a
round lesion, and the classifier then calls it a haemangioma (it fills in with the blood pool). What gives
a vessel away is the three phases together: in the portal venous phase its lumen is brighter than the
liver and the bright structure runs on beyond the box, while lesions are hypodense there or enclose their
enhancement. (Fitted on the phantom, the model leans on the PV attenuation; the bright structure leaving
the box did not separate vessels from lesions there and got a weight of the other sign.) This stage
reads those properties from each phase's matched box and combines them with the detector's score in a
logistic model, fitted on detector output of validation cases and stored as JSON
(``verifier.json`` in the detector's folder: feature names, standardisation, coefficients), so the rule is
inspectable.

The verified score replaces the matched lesion's score (and so the detector's operating point applies to
it). Only candidates the detector scores at least ``min_score`` are verified, as only those were fitted
on; below it the score is the detector's times the verifier's probability, which keeps them below the
verified ones and their order roughly as it was.

Features of one matched lesion (:data:`FEATURES`):

* ``score_logit``: logit of the detector's score (the highest over the phases where it was found);
* ``log2_size_cm``: log2 of the largest box extent in cm, largest over the phases;
* ``found_phases``: phases where the detector found it (1-3);
* ``core_{NC,ART,PV}``: median HU of the box's middle third minus the liver's median HU, per phase;
* ``bright_outside_PV``: of the PV voxels brighter than the liver by :data:`BRIGHT_HU` that are connected
  to the box's middle third (searched within a region three times the box), the share outside the box;
* ``bright_inside_PV``: the share of the box those connected bright voxels fill;
* ``liver_core``: the least liver share of the box's middle third over the phases.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from liaids.classification.matching import MatchedLesion
from liaids.codes import PHASES
from liaids.errors import LiaidsError
from liaids.types import Volume

VERIFIER_KIND = "lesion-verifier"
VERIFIER_FILE = "verifier.json"
#: ``applies_to`` of a detector's ``operating_point`` set on verified scores (it needs the verifier).
VERIFIED_SCORE = "verified score"
#: HU above the liver's median from which a PV voxel counts as enhancing like a vessel lumen.
BRIGHT_HU = 40.0
#: Largest side (voxels) of the region searched for a bright structure leaving the box.
_MAX_REGION = 160
FEATURES: tuple[str, ...] = (
    "score_logit",
    "log2_size_cm",
    "found_phases",
    "core_NC",
    "core_ART",
    "core_PV",
    "bright_outside_PV",
    "bright_inside_PV",
    "liver_core",
)


def _box_kji(
    bbox_ijk: tuple[int, ...] | list[int], shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A half-open ``bbox_ijk`` as clipped ``(k, j, i)`` lower and upper corners (at least one voxel)."""
    lo = np.array([bbox_ijk[2], bbox_ijk[1], bbox_ijk[0]], int)
    hi = np.array([bbox_ijk[5], bbox_ijk[4], bbox_ijk[3]], int)
    lo = np.clip(lo, 0, np.array(shape) - 1)
    hi = np.clip(np.maximum(hi, lo + 1), 1, np.array(shape))
    return lo, hi


def _middle_third(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    third = (hi - lo) // 3
    return lo + third, np.maximum(hi - third, lo + third + 1)


def _slices(lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...]:
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def liver_median_hu(volume: Volume, liver: np.ndarray) -> float:
    """Median HU of the liver (every 7th liver voxel; 60 HU, a typical liver, where no liver is found)."""
    values = volume.array[liver > 0][::7]
    return float(np.median(values)) if values.size else 60.0


def _liver_array(liver: Volume | np.ndarray) -> np.ndarray:
    return liver.array if isinstance(liver, Volume) else liver


def study_liver_hu(
    study: Mapping[str, Volume], livers: Mapping[str, Volume | np.ndarray]
) -> dict[str, float]:
    """:func:`liver_median_hu` of each phase: computed once per study, shared by its lesions."""
    return {p: liver_median_hu(study[p], _liver_array(livers[p])) for p in PHASES}


def bright_structure(hu: np.ndarray, lo: np.ndarray, hi: np.ndarray, threshold: float) -> tuple[float, float]:
    """How a bright structure through a box continues beyond it.

    Args:
        hu: CT ``(K, J, I)``.
        lo, hi: the box's ``(k, j, i)`` corners, half-open.
        threshold: HU from which a voxel is bright.

    Returns:
        ``(outside, inside)``: of the bright voxels connected to the box's middle third (within a region
        three times the box, at most :data:`_MAX_REGION` voxels a side), the share outside the box, and the
        share of the box they fill. ``(0, 0)`` when the middle third holds no bright voxel.
    """
    centre = (lo + hi) / 2.0
    half = np.minimum(1.5 * (hi - lo), _MAX_REGION / 2.0)
    r_lo = np.maximum(np.floor(centre - half).astype(int), 0)
    r_hi = np.minimum(np.ceil(centre + half).astype(int), np.array(hu.shape))
    bright = hu[_slices(r_lo, r_hi)] > threshold
    c_lo, c_hi = _middle_third(lo, hi)
    core = _slices(c_lo - r_lo, c_hi - r_lo)
    if not bright[core].any():
        return 0.0, 0.0
    labels, _ = ndimage.label(bright)
    touching = np.unique(labels[core])
    connected = np.isin(labels, touching[touching > 0])
    box = _slices(lo - r_lo, hi - r_lo)
    inside = int(connected[box].sum())
    total = int(connected.sum())
    return (total - inside) / total, inside / float(np.prod(hi - lo))


def lesion_features(
    study: Mapping[str, Volume],
    livers: Mapping[str, Volume | np.ndarray],
    lesion: MatchedLesion,
    liver_hu: Mapping[str, float] | None = None,
) -> np.ndarray:
    """The verifier's features of one matched lesion, in :data:`FEATURES` order.

    Args:
        study: phase -> CT volume (HU), as read.
        livers: phase -> liver mask of the same grid.
        lesion: the matched lesion (a box in every phase).
        liver_hu: :func:`study_liver_hu` of the study, when already computed.

    Returns:
        float64 ``(len(FEATURES),)``.
    """
    liver_hu = study_liver_hu(study, livers) if liver_hu is None else liver_hu
    score = min(max(float(lesion.score), 1e-4), 1.0 - 1e-4)
    sizes, cores, liver_cores = [], {}, []
    bright = (0.0, 0.0)
    for phase in PHASES:
        volume = study[phase]
        liver = _liver_array(livers[phase])
        lo, hi = _box_kji(lesion.boxes[phase], volume.shape)
        spacing_kji = np.asarray(volume.spacing[::-1], float)
        sizes.append(float(((hi - lo) * spacing_kji).max()))
        c_lo, c_hi = _middle_third(lo, hi)
        reference = liver_hu[phase]
        cores[phase] = float(np.median(volume.array[_slices(c_lo, c_hi)])) - reference
        liver_cores.append(float((liver[_slices(c_lo, c_hi)] > 0).mean()))
        if phase == "PV":
            bright = bright_structure(volume.array, lo, hi, reference + BRIGHT_HU)
    values = {
        "score_logit": math.log(score / (1.0 - score)),
        "log2_size_cm": math.log2(max(max(sizes) / 10.0, 0.1)),
        "found_phases": float(sum(bool(v) for v in lesion.found.values())),
        "core_NC": cores["NC"],
        "core_ART": cores["ART"],
        "core_PV": cores["PV"],
        "bright_outside_PV": bright[0],
        "bright_inside_PV": bright[1],
        "liver_core": min(liver_cores),
    }
    return np.array([values[name] for name in FEATURES], float)


@dataclass(frozen=True)
class LesionVerifier:
    """Logistic model over :data:`FEATURES`: the probability that a matched lesion is a true lesion.

    Args:
        mean, scale: standardisation of each feature.
        coef: one weight per standardised feature.
        intercept: the bias.
        min_score: detector score from which candidates were fitted on and are verified.
        source: provenance (cases fitted on, their counts), kept in ``verifier.json``.
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    min_score: float = 0.0
    source: dict[str, Any] | None = None

    def probability(self, features: np.ndarray) -> np.ndarray:
        """Probabilities ``(N,)`` for features ``(N, len(FEATURES))``."""
        z = (np.atleast_2d(features) - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def rescore(self, detector_score: float, features: np.ndarray) -> float:
        """The verified score of one matched lesion (rule in the module docstring)."""
        p = float(self.probability(features)[0])
        return p if detector_score >= self.min_score else float(detector_score) * p

    def score_lesion(
        self,
        study: Mapping[str, Volume],
        livers: Mapping[str, Volume | np.ndarray],
        lesion: MatchedLesion,
        liver_hu: Mapping[str, float] | None = None,
    ) -> float:
        """:meth:`rescore` of a matched lesion's features (:func:`lesion_features`)."""
        return self.rescore(float(lesion.score), lesion_features(study, livers, lesion, liver_hu))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": VERIFIER_KIND,
            "features": list(FEATURES),
            "bright_hu": BRIGHT_HU,
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "min_score": self.min_score,
            "source": self.source or {},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "verifier") -> LesionVerifier:
        if data.get("kind") != VERIFIER_KIND or list(data.get("features", [])) != list(FEATURES):
            raise LiaidsError(f"not a lesion verifier for features {', '.join(FEATURES)}", where)
        n = len(FEATURES)
        try:
            fields = [tuple(float(v) for v in data[k]) for k in ("mean", "scale", "coef")]
            intercept = float(data["intercept"])
            min_score = float(data.get("min_score", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise LiaidsError(f"malformed lesion verifier ({exc})", where) from exc
        if any(len(f) != n for f in fields) or any(s <= 0 for s in fields[1]):
            raise LiaidsError(f"lesion verifier needs {n} means, positive scales and weights", where)
        if data.get("bright_hu", BRIGHT_HU) != BRIGHT_HU:
            raise LiaidsError(
                f"lesion verifier fitted with bright_hu {data['bright_hu']}, this code uses {BRIGHT_HU}",
                where,
            )
        return cls(*fields, intercept=intercept, min_score=min_score, source=data.get("source"))

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / VERIFIER_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> LesionVerifier:
        path = Path(folder) / VERIFIER_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LiaidsError(f"cannot read the lesion verifier ({exc})", path) from exc
        return cls.from_dict(data, str(path))


def fit_verifier(
    features: np.ndarray,
    is_lesion: np.ndarray,
    l2: float = 1.0,
    min_score: float = 0.0,
    source: dict[str, Any] | None = None,
) -> LesionVerifier:
    """Fit the logistic model by Newton's method with an L2 penalty on the weights (not the bias).

    Args:
        features: ``(N, len(FEATURES))`` of the candidates the detector scores at least ``min_score``.
        is_lesion: ``(N,)`` booleans, True where the matched lesion hits a true lesion.
        l2: penalty weight (on standardised features).
        min_score: recorded in the model: the detector score from which it verifies.
        source: provenance kept in the model.

    Returns:
        The fitted verifier.
    """
    x = np.asarray(features, float)
    y = np.asarray(is_lesion, float)
    if x.ndim != 2 or x.shape[1] != len(FEATURES) or len(y) != len(x):
        raise LiaidsError(f"features must be (N, {len(FEATURES)}) with one label each")
    if y.min() == y.max():
        raise LiaidsError("the verifier needs both true lesions and false positives to learn from")
    mean = x.mean(axis=0)
    scale = np.where(x.std(axis=0) > 1e-9, x.std(axis=0), 1.0)
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        grad = z.T @ (p - y) + penalty * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return LesionVerifier(
        tuple(mean.tolist()), tuple(scale.tolist()), tuple(w[:-1].tolist()), float(w[-1]), min_score, source
    )
