"""Classification of matched lesions with a trained three-phase classifier, and lesion-level metrics.

Example::

    clf = LesionClassifier.from_weights("runs/cls_full")
    lesions = match_lesions(detections, study.phases, livers)
    for pred in clf.classify(study, lesions, ClinicalInfo.from_dict(case_json["clinical"])):
        print(pred.lesion_type, round(pred.malignant_probability, 3))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liaids.classification.context import PatientContext, load_patient_context
from liaids.classification.matching import MatchedLesion
from liaids.classification.patches import PatchPlan, extract_lesion_patches
from liaids.clinical import ClinicalInfo
from liaids.codes import CLINICAL_FIELDS, LESION_TYPES, MALIGNANT_INDICES
from liaids.errors import ClinicalInfoError, ModelLoadError
from liaids.model_store import builtin_model_dir, load_model_files
from liaids.networks.lesion_classifier import (
    ClassifierConfig,
    LesionClassifierNet,
    malignant_probability,
)
from liaids.types import Study, Volume

MODEL_KIND = "lesion-classification"
DEFAULT_MODEL = "classifier_small"


def clinical_vector(
    clinical: ClinicalInfo | Mapping[str, Any], source: str | Path | None = None
) -> np.ndarray:
    """The classifier's clinical input ``(7,)`` (:meth:`ClinicalInfo.encode`), validated.

    Args:
        clinical: a :class:`ClinicalInfo` or a mapping as in case.json.
        source: file named in error messages.

    Raises:
        ClinicalInfoError: a missing, unknown, mistyped or implausible field (for example age 300).
    """
    info = clinical if isinstance(clinical, ClinicalInfo) else ClinicalInfo.from_dict(dict(clinical), source)
    return np.asarray(info.encode(), np.float32)


@dataclass(frozen=True)
class LesionPrediction:
    """The classifier's answer for one lesion.

    Attributes:
        probabilities: lesion type code -> probability (sums to 1).
        lesion_type: the most probable type.
        malignant_probability: P(HCC) + P(ICC) + P(HM).
        image_features: the image feature vector (``image_dim``), None for the clinical-only variant.
        lesion_probabilities: the probabilities from this lesion alone, when the patient context
            (:mod:`liaids.classification.context`) changed them; None otherwise.
    """

    probabilities: dict[str, float]
    lesion_type: str
    malignant_probability: float
    image_features: np.ndarray | None
    lesion_probabilities: dict[str, float] | None = None

    def to_dict(self, with_features: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "lesion_type": self.lesion_type,
            "malignant_probability": self.malignant_probability,
            "probabilities": self.probabilities,
        }
        if self.lesion_probabilities is not None:
            out["lesion_probabilities"] = self.lesion_probabilities
        if with_features and self.image_features is not None:
            out["image_features"] = [round(float(v), 6) for v in self.image_features]
        return out


# In-plane flips the classifier trained with (patch axes H and W); the lesion box is centred in the patch,
# so its extents are unchanged by them.
IN_PLANE_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


@dataclass
class LesionClassifier:
    """A loaded lesion classifier and the patch plan it was trained with.

    ``flip_average``: average the probabilities (and image features) of each lesion's patches as cut and
    flipped in-plane, as in training (config.json ``inference.flip_average``; off unless set there).
    """

    network: LesionClassifierNet
    plan: PatchPlan
    config: dict[str, Any]
    device: torch.device
    context: PatientContext = field(default_factory=PatientContext)
    flip_average: bool = False

    @classmethod
    def from_weights(
        cls, folder: str | Path | None = None, device: str = "cpu", flip_average: bool | None = None
    ) -> LesionClassifier:
        """Load a model folder written by :func:`liaids.train.classification.train_classification`.

        Args:
            folder: the model folder (default: the shipped ``classifier_small`` weights, when present).
            device: ``cpu`` or ``cuda``.
            flip_average: override the folder's ``inference.flip_average`` setting.

        Raises:
            ModelLoadError: missing, truncated or foreign model files, or weights that do not fit.
        """
        path = Path(folder) if folder is not None else builtin_model_dir(DEFAULT_MODEL)
        state, config = load_model_files(path, MODEL_KIND)
        if config.get("labels", list(LESION_TYPES)) != list(LESION_TYPES):
            raise ModelLoadError(
                f"model classes {config.get('labels')} differ from {list(LESION_TYPES)}", path
            )
        if config.get("clinical_fields", list(CLINICAL_FIELDS)) != list(CLINICAL_FIELDS):
            raise ModelLoadError("model clinical fields differ from this version's", path)
        try:
            network = LesionClassifierNet(ClassifierConfig.from_dict(config["network"]))
            plan = PatchPlan.from_dict(config["plan"])
            network.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(
                f"weights do not fit the configured network ({type(exc).__name__}: {exc})".splitlines()[0],
                path,
            ) from exc
        dev = torch.device(device)
        network.to(dev).eval()
        if flip_average is None:
            flip_average = bool(config.get("inference", {}).get("flip_average", False))
        return cls(network, plan, config, dev, load_patient_context(path), flip_average)

    @property
    def variant(self) -> str:
        return self.network.config.variant

    @torch.no_grad()
    def predict(
        self,
        patches: np.ndarray | None,
        clinical: np.ndarray | None,
        extents: np.ndarray | None = None,
        batch: int = 32,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities ``(N, 7)`` and image features ``(N, image_dim)`` (or None) of prepared inputs.

        Args:
            patches: ``(N, 3, D, H, W)`` in [0, 1] (ignored by the clinical variant).
            clinical: ``(N, 7)`` encoded clinical vectors (ignored by the image variant).
            extents: ``(N, 3, 3)`` lesion box extents in the patches (needed by lesion pooling).
            batch: lesions per forward pass.
        """
        cfg = self.network.config
        n = len(patches) if patches is not None else len(clinical) if clinical is not None else 0
        probs, feats = [], []

        def part(array: np.ndarray | None, sl: slice, used: bool) -> torch.Tensor | None:
            return torch.from_numpy(array[sl]).float().to(self.device) if used and array is not None else None

        flips = IN_PLANE_FLIPS if self.flip_average and cfg.uses_image else ((),)
        for start in range(0, n, batch):
            sl = slice(start, min(start + batch, n))
            image = part(patches, sl, cfg.uses_image)
            outs = [
                self.network(
                    image.flip(dims) if image is not None and dims else image,
                    part(clinical, sl, cfg.uses_clinical),
                    part(extents, sl, cfg.uses_image),
                )
                for dims in flips
            ]
            prob = torch.stack([torch.softmax(o.logits.float(), 1) for o in outs]).mean(0)
            probs.append(prob.cpu().numpy())
            if outs[0].image_features is not None:
                feats.append(torch.stack([o.image_features.float() for o in outs]).mean(0).cpu().numpy())
        empty = np.zeros((0, len(LESION_TYPES)), np.float32)
        return (np.concatenate(probs) if probs else empty), (np.concatenate(feats) if feats else None)

    def classify(
        self,
        phases: Study | Mapping[str, Volume],
        lesions: Sequence[MatchedLesion | Mapping[str, Sequence[int]]],
        clinical: ClinicalInfo | Mapping[str, Any] | None = None,
    ) -> list[LesionPrediction]:
        """Classify the lesions of one study.

        Args:
            phases: the study, or phase name -> CT volume (NC, ART, PV; HU).
            lesions: matched lesions (:func:`liaids.classification.matching.match_lesions`) or, per lesion,
                phase -> ``bbox_ijk`` in that phase's voxels.
            clinical: the patient's clinical information; required unless the model is image-only.

        Returns:
            One prediction per lesion, in input order.

        Raises:
            ClinicalInfoError: clinical information missing (for a model that uses it) or invalid.
            BoxError: a lesion lacks a phase's box or a box is invalid.
        """
        volumes = phases.phases if isinstance(phases, Study) else phases
        boxes = [les.boxes if isinstance(les, MatchedLesion) else les for les in lesions]
        if not boxes:
            return []
        vec = None
        if self.network.config.uses_clinical:
            if clinical is None:
                raise ClinicalInfoError(
                    f"the {self.variant} classifier needs clinical information ({', '.join(CLINICAL_FIELDS)})"
                )
            vec = np.repeat(clinical_vector(clinical)[None], len(boxes), axis=0)
        patches = extents = None
        if self.network.config.uses_image:
            patches, extents = extract_lesion_patches(volumes, boxes, self.plan)
        own, feats = self.predict(patches, vec, extents)
        # One study is one patient: its lesions are each other's context.
        probs = self.context.apply(own)
        changed = self.context.weight > 0 and len(boxes) > 1
        malignant = malignant_probability(torch.from_numpy(probs)).numpy()
        return [
            LesionPrediction(
                probabilities={t: float(p) for t, p in zip(LESION_TYPES, probs[n], strict=True)},
                lesion_type=LESION_TYPES[int(np.argmax(probs[n]))],
                malignant_probability=float(malignant[n]),
                image_features=None if feats is None else feats[n],
                lesion_probabilities=(
                    {t: float(p) for t, p in zip(LESION_TYPES, own[n], strict=True)} if changed else None
                ),
            )
            for n in range(len(boxes))
        ]


def lesion_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """Lesion-level classification metrics.

    Args:
        labels: ``(N,)`` true class indices in :data:`liaids.codes.LESION_TYPES` order.
        probabilities: ``(N, 7)`` predicted probabilities.

    Returns:
        ``accuracy`` (7-class), ``macro_auc`` (one-vs-rest, mean over the classes that have positives and
        negatives; ``auc_classes`` lists them), ``class_auc``, ``binary_auc`` and ``binary_accuracy``
        (malignant = HCC/ICC/HM vs benign, score = P(malignant), threshold 0.5), ``confusion`` (rows = true,
        columns = predicted, in LESION_TYPES order) and ``n`` per class. AUCs are NaN when undefined.
    """
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, int)
    probs = np.asarray(probabilities, float)
    n_classes = len(LESION_TYPES)
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
    class_auc: dict[str, float] = {}
    for c, name in enumerate(LESION_TYPES):
        positive = labels == c
        if positive.any() and (~positive).any():
            class_auc[name] = round(float(roc_auc_score(positive, probs[:, c])), 4)
    malignant = np.isin(labels, MALIGNANT_INDICES)
    score = probs[:, list(MALIGNANT_INDICES)].sum(axis=1) if len(probs) else np.zeros(0)
    binary_auc = (
        float(roc_auc_score(malignant, score)) if malignant.any() and (~malignant).any() else float("nan")
    )
    confusion = np.zeros((n_classes, n_classes), int)
    np.add.at(confusion, (labels, pred), 1)
    return {
        "n_lesions": len(labels),
        "accuracy": round(float((pred == labels).mean()), 4) if len(labels) else float("nan"),
        "macro_auc": round(float(np.mean(list(class_auc.values()))), 4) if class_auc else float("nan"),
        "auc_classes": list(class_auc),
        "class_auc": class_auc,
        "binary_auc": round(binary_auc, 4),
        "binary_accuracy": round(float(((score >= 0.5) == malignant).mean()), 4)
        if len(labels)
        else float("nan"),
        "confusion": confusion.tolist(),
        "n": dict(zip(LESION_TYPES, np.bincount(labels, minlength=n_classes).tolist(), strict=True)),
    }
