"""Classification statistics: AUC, ROC, confusion matrices, proportion CIs, bootstrap, triage, paired tests.

Pure numpy/scipy functions, no model inference. Most accept a leading batch axis (``[..., n]``) so that a
bootstrap can evaluate hundreds of resamples in one call; :func:`classification_report` uses this to compute
every lesion-level statistic of the paper with 1,000-resample bootstrap CIs for 1,000 lesions in about a
second (``benchmarks/evaluation_statistics.py``).

Conventions:

* Classes are integer indices ``0..C-1``; with the default names they follow
  :data:`liaids.codes.LESION_TYPES` (HCC, ICC, HM, FNH, HH, HC, HA).
* A metric whose denominator is zero is NaN, never 0 or 1, so that "undefined" is never averaged in.
* Binary statistics take "malignant" as the positive class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import optimize, stats

from liaids.codes import LESION_TYPES, MALIGNANT_TYPES
from liaids.errors import EvaluationInputError

#: Per-class (one-vs-rest) metrics returned by :func:`one_vs_rest_metrics`, in this order.
CLASS_METRICS: tuple[str, ...] = ("sensitivity", "specificity", "precision", "npv", "f1", "accuracy")


# ---------------------------------------------------------------------------------------------- helpers


def _safe_div(num: npt.ArrayLike, den: npt.ArrayLike) -> np.ndarray:
    """``num / den`` as float, NaN where ``den`` is 0."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _scalar(x: np.ndarray) -> float | np.ndarray:
    """Unwrap 0-d arrays to Python floats so single-sample callers get plain numbers."""
    return float(x) if np.ndim(x) == 0 else x


def _nanmean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean ignoring NaN; NaN (without a RuntimeWarning) where every value is NaN."""
    finite = np.isfinite(x)
    return _safe_div(np.where(finite, x, 0.0).sum(axis=axis), finite.sum(axis=axis))


def _as_labels(y: npt.ArrayLike, n_classes: int, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if (
        arr.size
        and not np.issubdtype(arr.dtype, np.integer)
        and (not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)))
    ):
        raise EvaluationInputError(f"{name} must hold integer class indices")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise EvaluationInputError(f"{name} holds class indices outside 0..{n_classes - 1}")
    return arr


# ---------------------------------------------------------------------------------------------- AUC / ROC


def binary_auc(y_true: npt.ArrayLike, score: npt.ArrayLike) -> float | np.ndarray:
    """Area under the ROC curve by the Mann-Whitney rank statistic; tied scores count one half.

    Args:
        y_true: truth, boolean or 0/1, shape ``[..., n]``.
        score: higher means more likely positive, same shape as ``y_true``.

    Returns:
        AUC of each row (a float for 1-D input). NaN where a row has no positive or no negative case.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=float)
    if y.shape != s.shape or y.ndim == 0:
        raise EvaluationInputError(f"y_true and score need one shape [..., n], got {y.shape} and {s.shape}")
    if not np.all(np.isfinite(s)):
        raise EvaluationInputError("score holds NaN or infinite values")
    ranks = stats.rankdata(s, axis=-1)  # "average" method: ties share their mean rank
    n_pos = y.sum(axis=-1)
    n_neg = y.shape[-1] - n_pos
    rank_sum = np.where(y, ranks, 0.0).sum(axis=-1)
    return _scalar(_safe_div(rank_sum - n_pos * (n_pos + 1) / 2.0, n_pos * n_neg))


def multiclass_auc(y_true_idx: npt.ArrayLike, probs: npt.ArrayLike) -> tuple[np.ndarray, float | np.ndarray]:
    """One-vs-rest AUC of every class and their macro mean.

    A class absent from ``y_true_idx`` (or the only class present) has no ROC curve: its AUC is NaN and it is
    left out of the macro mean, which therefore averages the classes that occur.

    Args:
        y_true_idx: true class index per case, shape ``[..., n]``.
        probs: class probabilities (or any scores), shape ``[..., n, C]``.

    Returns:
        ``(per_class [..., C], macro [...])``.
    """
    p = np.asarray(probs, dtype=float)
    if p.ndim < 2:
        raise EvaluationInputError(f"probs must be [..., n, C], got shape {p.shape}")
    y = _as_labels(y_true_idx, p.shape[-1], "y_true_idx")
    if y.shape != p.shape[:-1]:
        raise EvaluationInputError(f"y_true_idx shape {y.shape} does not match probs shape {p.shape}")
    onehot = y[..., None] == np.arange(p.shape[-1])
    per_class = np.asarray(binary_auc(np.swapaxes(onehot, -1, -2), np.swapaxes(p, -1, -2)))
    return per_class, _scalar(_nanmean(per_class))


def roc_curve(y_true: npt.ArrayLike, score: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve at every distinct score, a case being positive when ``score >= threshold``.

    Same points as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``: the first threshold is
    ``inf`` (nothing positive, point (0, 0)), then the distinct scores in decreasing order.

    Args:
        y_true: truth, boolean or 0/1, shape ``[n]``, with both classes present.
        score: shape ``[n]``.

    Returns:
        ``(fpr, tpr, thresholds)``, each of length ``distinct scores + 1``.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(score, dtype=float).ravel()
    if y.shape != s.shape or not np.all(np.isfinite(s)):
        raise EvaluationInputError("y_true and score need one length and finite scores")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise EvaluationInputError("an ROC curve needs both positive and negative cases")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    fpr = np.r_[0.0, fps / (len(y) - n_pos)]
    tpr = np.r_[0.0, tps / n_pos]
    return fpr, tpr, np.r_[np.inf, s[last_of_tie]]


# ---------------------------------------------------------------------------------------------- counts


def confusion_matrix(y_true_idx: npt.ArrayLike, y_pred_idx: npt.ArrayLike, n_classes: int) -> np.ndarray:
    """Counts of (true, predicted) class pairs.

    Args:
        y_true_idx, y_pred_idx: class indices, same shape ``[..., n]``.
        n_classes: number of classes ``C``.

    Returns:
        int64 array ``[..., C, C]``; rows are the true class, columns the predicted class.
    """
    t = _as_labels(y_true_idx, n_classes, "y_true_idx")
    p = _as_labels(y_pred_idx, n_classes, "y_pred_idx")
    if t.shape != p.shape or t.ndim == 0:
        raise EvaluationInputError(f"y_true_idx and y_pred_idx shapes differ: {t.shape} vs {p.shape}")
    lead = t.shape[:-1]
    n_rows = math.prod(lead)
    cc = n_classes * n_classes
    # One bincount over all rows: each row's (true, pred) codes are shifted into its own block.
    codes = (t * n_classes + p).reshape(n_rows, -1) + (np.arange(n_rows) * cc)[:, None]
    counts = np.bincount(codes.ravel(), minlength=n_rows * cc)
    return counts.reshape(*lead, n_classes, n_classes)


def one_vs_rest_metrics(cm: npt.ArrayLike) -> dict[str, np.ndarray]:
    """Per-class metrics, each class against all others, from a confusion matrix.

    F1 is ``2 TP / (2 TP + FP + FN)``, equal to the harmonic mean of sensitivity and precision where both
    are defined, and 0 for a class that occurs but is never predicted.

    Args:
        cm: confusion matrix ``[..., C, C]`` (rows true, columns predicted).

    Returns:
        ``{"tp", "fp", "fn", "tn"}`` counts and :data:`CLASS_METRICS` (sensitivity = recall, specificity,
        precision = PPV, NPV, F1, one-vs-rest accuracy), each ``[..., C]``; NaN where undefined.
    """
    cm = np.asarray(cm)
    if cm.ndim < 2 or cm.shape[-1] != cm.shape[-2]:
        raise EvaluationInputError(f"a confusion matrix must be [..., C, C], got shape {cm.shape}")
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    fn = cm.sum(axis=-1) - tp
    fp = cm.sum(axis=-2) - tp
    tn = cm.sum(axis=(-2, -1))[..., None] - tp - fn - fp
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "sensitivity": _safe_div(tp, tp + fn),
        "specificity": _safe_div(tn, tn + fp),
        "precision": _safe_div(tp, tp + fp),
        "npv": _safe_div(tn, tn + fn),
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
        "accuracy": _safe_div(tp + tn, tp + tn + fp + fn),
    }


def summary_metrics(cm: npt.ArrayLike) -> dict[str, float | np.ndarray]:
    """Overall accuracy and macro averages of the one-vs-rest metrics.

    Macro averages are taken over the classes where the metric is defined (NaN classes are skipped).

    Args:
        cm: confusion matrix ``[..., C, C]``.

    Returns:
        ``{"accuracy", "macro_sensitivity", "macro_specificity", "macro_precision", "macro_f1"}``.
    """
    cm = np.asarray(cm)
    per = one_vs_rest_metrics(cm)
    out: dict[str, float | np.ndarray] = {
        "accuracy": _scalar(_safe_div(np.trace(cm, axis1=-2, axis2=-1), cm.sum(axis=(-2, -1))))
    }
    for name in ("sensitivity", "specificity", "precision", "f1"):
        out[f"macro_{name}"] = _scalar(_nanmean(per[name]))
    return out


def binary_metrics(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> dict[str, float]:
    """Binary metrics with ``True``/1 (malignant) as the positive class.

    Args:
        y_true, y_pred: booleans or 0/1, shape ``[n]``.

    Returns:
        ``{"n", "tp", "fp", "fn", "tn", "accuracy", "sensitivity", "specificity", "precision", "npv",
        "f1"}``; NaN where undefined.
    """
    t = np.asarray(y_true).astype(bool).astype(np.int64)
    p = np.asarray(y_pred).astype(bool).astype(np.int64)
    per = one_vs_rest_metrics(confusion_matrix(t, p, 2))
    out: dict[str, float] = {"n": float(t.size)}
    for k in ("tp", "fp", "fn", "tn"):
        out[k] = float(per[k][1])
    out["accuracy"] = float(per["accuracy"][1])
    for k in ("sensitivity", "specificity", "precision", "npv", "f1"):
        out[k] = float(per[k][1])
    return out


def proportion_ci(
    successes: npt.ArrayLike, total: npt.ArrayLike, confidence: float = 0.95
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Wilson score interval of a binomial proportion (sensitivity, specificity, PPV, NPV, recall, ...).

    Unlike the Wald interval it stays inside [0, 1] and keeps its coverage near 0 and 1, where NPV and
    recall live. Same values as ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``.

    Args:
        successes: counts ``k``, scalar or array.
        total: counts ``n`` (``0 <= k <= n``), broadcastable with ``successes``.
        confidence: two-sided confidence level.

    Returns:
        ``(low, high)``; NaN where ``total`` is 0.
    """
    k = np.asarray(successes, dtype=float)
    n = np.asarray(total, dtype=float)
    if np.any(k < 0) or np.any(k > n):
        raise EvaluationInputError("proportion_ci needs 0 <= successes <= total")
    if not 0.0 < confidence < 1.0:
        raise EvaluationInputError(f"confidence must be in (0, 1), got {confidence}")
    z = stats.norm.ppf(0.5 + confidence / 2.0)
    p = _safe_div(k, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = 1.0 + z * z / n
        centre = (p + z * z / (2.0 * n)) / denom
        half = z / denom * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    low = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
    high = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    return _scalar(low), _scalar(high)


# ---------------------------------------------------------------------------------------------- bootstrap


def bootstrap_distribution(
    stat_fn: Callable[..., Any],
    *arrays: npt.ArrayLike,
    n_resamples: int = 1000,
    seed: int = 0,
    vectorized: bool = False,
    batch_size: int = 100,
) -> np.ndarray:
    """Values of a statistic on paired bootstrap resamples of the cases.

    Cases are the rows (axis 0) of every array; one resample draws ``n`` row indices with replacement and
    applies them to all arrays alike, so pairs such as (truth, score) stay together.

    Args:
        stat_fn: the statistic. With ``vectorized=False`` it takes the resampled arrays and returns a scalar
            or a 1-D vector. With ``vectorized=True`` it takes arrays with a leading resample axis
            (``[b, n, ...]``) and returns ``[b]`` or ``[b, K]``.
        arrays: equally long arrays, cases along axis 0.
        n_resamples: number of resamples ``B``.
        seed: seed of the ``numpy.random.Generator`` drawing the indices.
        vectorized: see ``stat_fn``.
        batch_size: resamples per vectorised call (bounds memory).

    Returns:
        float array ``[B]`` or ``[B, K]``; NaN where the statistic is undefined on a resample.
    """
    data = [np.asarray(a) for a in arrays]
    if not data:
        raise EvaluationInputError("bootstrap needs at least one array")
    n = len(data[0])
    if n == 0 or any(len(a) != n for a in data):
        raise EvaluationInputError(
            f"bootstrap arrays must be non-empty and equally long, got {[len(a) for a in data]}"
        )
    if n_resamples < 1:
        raise EvaluationInputError(f"n_resamples must be positive, got {n_resamples}")
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, n_resamples, batch_size):
        idx = rng.integers(0, n, size=(min(batch_size, n_resamples - start), n))
        if vectorized:
            values = np.asarray(stat_fn(*[a[idx] for a in data]), dtype=float)
            if values.shape[0] != len(idx):
                raise EvaluationInputError("a vectorized stat_fn must return one value (or row) per resample")
        else:
            values = np.stack([np.asarray(stat_fn(*[a[row] for a in data]), dtype=float) for row in idx])
        chunks.append(values)
    return np.concatenate(chunks)


def bootstrap_ci(
    stat_fn: Callable[..., Any],
    *arrays: npt.ArrayLike,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
    vectorized: bool = False,
    batch_size: int = 100,
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Bootstrap confidence interval of a statistic, resampling cases (rows) in pairs.

    Degenerate resamples, where the statistic is NaN (an AUC on a resample that lost one class, a
    sensitivity without positives), are skipped: the interval is computed from the remaining resamples,
    component by component for a vector statistic. If all are degenerate the interval is NaN.

    Args:
        stat_fn, arrays, n_resamples, seed, vectorized, batch_size: as in :func:`bootstrap_distribution`.
        confidence: two-sided confidence level.
        method: ``"percentile"`` (quantiles of the resampled statistic, as ``scipy.stats.bootstrap``
            ``method="percentile"``) or ``"basic"`` (reverse percentile: ``2 theta - quantiles``).

    Returns:
        ``(low, high)``: floats for a scalar statistic, arrays ``[K]`` for a vector one.
    """
    if method not in ("percentile", "basic"):
        raise EvaluationInputError(f"unknown bootstrap method {method!r}; use 'percentile' or 'basic'")
    if not 0.0 < confidence < 1.0:
        raise EvaluationInputError(f"confidence must be in (0, 1), got {confidence}")
    values = bootstrap_distribution(
        stat_fn, *arrays, n_resamples=n_resamples, seed=seed, vectorized=vectorized, batch_size=batch_size
    )
    low, high = _nanquantiles(values, (1.0 - confidence) / 2.0)
    if method == "basic":
        data = [np.asarray(a) for a in arrays]
        if vectorized:
            theta = np.asarray(stat_fn(*[a[None] for a in data]), dtype=float)[0]
        else:
            theta = np.asarray(stat_fn(*data), dtype=float)
        low, high = 2.0 * theta - high, 2.0 * theta - low
    return _scalar(low), _scalar(high)


def _nanquantiles(values: np.ndarray, tail: float) -> tuple[np.ndarray, np.ndarray]:
    """``tail`` and ``1 - tail`` quantiles along axis 0, skipping NaN, NaN where every value is NaN."""
    finite = np.isfinite(values)
    if finite.all():
        q = np.quantile(values, [tail, 1.0 - tail], axis=0)
        return q[0], q[1]
    flat = values.reshape(len(values), -1)
    low = np.full(flat.shape[1], np.nan)
    high = np.full(flat.shape[1], np.nan)
    for j in range(flat.shape[1]):
        v = flat[np.isfinite(flat[:, j]), j]
        if v.size:
            low[j], high[j] = np.quantile(v, [tail, 1.0 - tail])
    shape = values.shape[1:]
    return low.reshape(shape), high.reshape(shape)


# ---------------------------------------------------------------------------------------------- report


def _report_vector(
    y: np.ndarray, probs: np.ndarray, malignant: np.ndarray, present: np.ndarray, threshold: float
) -> np.ndarray:
    """Every lesion-level statistic of :func:`classification_report`, batched: ``[..., n]`` -> ``[..., K]``.

    Macro statistics are NaN on a resample that lost a class present in the full sample, so that every
    macro value averages the same classes (such resamples are skipped for the macro CIs only).
    """
    n_classes = probs.shape[-1]
    cm = confusion_matrix(y, probs.argmax(axis=-1), n_classes)
    per = one_vs_rest_metrics(cm)
    per_auc, _ = multiclass_auc(y, probs)
    lost = (cm.sum(axis=-1)[..., present] == 0).any(axis=-1)

    def macro(x: np.ndarray) -> np.ndarray:
        return np.where(lost, np.nan, _nanmean(x[..., present]))

    accuracy = _safe_div(np.trace(cm, axis1=-2, axis2=-1), cm.sum(axis=(-2, -1)))
    multi = [accuracy, macro(per_auc)] + [
        macro(per[m]) for m in ("sensitivity", "specificity", "precision", "f1")
    ]
    per_class = [per_auc] + [per[m] for m in ("sensitivity", "specificity", "precision", "f1")]

    truth_mal = malignant[y]
    score_mal = probs[..., malignant].sum(axis=-1)
    pred_mal = score_mal >= threshold
    bcm = confusion_matrix(truth_mal.astype(np.int64), pred_mal.astype(np.int64), 2)
    bper = one_vs_rest_metrics(bcm)
    binary = [np.asarray(binary_auc(truth_mal, score_mal)), bper["accuracy"][..., 1]]
    binary += [bper[m][..., 1] for m in ("sensitivity", "specificity", "precision", "npv", "f1")]
    return np.concatenate(
        [np.stack(multi, axis=-1), np.concatenate(per_class, axis=-1), np.stack(binary, -1)], -1
    )


#: Names of the statistics in :func:`classification_report` (besides the per-class block).
_MULTI_NAMES = (
    "accuracy",
    "macro_auc",
    "macro_sensitivity",
    "macro_specificity",
    "macro_precision",
    "macro_f1",
)
_PER_CLASS_NAMES = ("auc", "sensitivity", "specificity", "precision", "f1")
_BINARY_NAMES = ("auc", "accuracy", "sensitivity", "specificity", "precision", "npv", "f1")


def classification_report(
    y_true_idx: npt.ArrayLike,
    probs: npt.ArrayLike,
    *,
    class_names: Sequence[str] = LESION_TYPES,
    malignant_classes: Sequence[str] | None = None,
    binary_threshold: float = 0.5,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """All lesion-level classification statistics of the paper with bootstrap CIs (one shared resampling).

    The 7-class prediction is the arg-max class; the malignant probability is the sum of the malignant
    classes' probabilities and the binary call is ``malignant probability >= binary_threshold``.
    CIs are paired percentile bootstrap intervals over lesions (see :func:`bootstrap_ci`).

    Args:
        y_true_idx: true class index per lesion ``[n]``.
        probs: class probabilities ``[n, C]`` in ``class_names`` order.
        class_names: names of the classes (default :data:`~liaids.codes.LESION_TYPES`).
        malignant_classes: names counted as malignant (default: those in
            :data:`~liaids.codes.MALIGNANT_TYPES`).
        binary_threshold: malignant probability at or above which a lesion is called malignant.
        n_resamples: bootstrap resamples (0: no CIs, NaN bounds).
        confidence: two-sided confidence level.
        seed: bootstrap seed.

    Returns:
        ``{"n", "confidence", "n_resamples", "multiclass": {name: stat}, "per_class": {class: {"n", name:
        stat}}, "binary": {name: stat}, "confusion_matrix": [[...]]}``, where each ``stat`` is
        ``{"value", "ci_low", "ci_high"}``.
    """
    p = np.asarray(probs, dtype=float)
    names = list(class_names)
    if p.ndim != 2 or p.shape[1] != len(names):
        raise EvaluationInputError(f"probs must be [n, {len(names)}], got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise EvaluationInputError("probs holds NaN or infinite values")
    y = _as_labels(y_true_idx, len(names), "y_true_idx")
    if y.shape != (p.shape[0],) or y.size == 0:
        raise EvaluationInputError(f"y_true_idx must be [n] with n = {p.shape[0]} > 0, got shape {y.shape}")
    mal_names = (
        [c for c in names if c in MALIGNANT_TYPES] if malignant_classes is None else list(malignant_classes)
    )
    unknown = sorted(set(mal_names) - set(names))
    if unknown:
        raise EvaluationInputError(f"malignant classes not in class_names: {', '.join(unknown)}")
    malignant = np.isin(names, mal_names)
    support = np.bincount(y, minlength=len(names))
    present = support > 0

    point = _report_vector(y[None], p[None], malignant, present, binary_threshold)[0]
    if n_resamples > 0:
        low, high = bootstrap_ci(
            lambda yy, pp: _report_vector(yy, pp, malignant, present, binary_threshold),
            y,
            p,
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
            vectorized=True,
        )
    else:
        low = high = np.full_like(point, np.nan)

    def stat(i: int) -> dict[str, float]:
        return {"value": float(point[i]), "ci_low": float(low[i]), "ci_high": float(high[i])}

    c = len(names)
    n_multi = len(_MULTI_NAMES)
    per_class: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        entry: dict[str, Any] = {"n": int(support[j])}
        for m, metric in enumerate(_PER_CLASS_NAMES):
            entry[metric] = stat(n_multi + m * c + j)
        per_class[name] = entry
    first_binary = n_multi + len(_PER_CLASS_NAMES) * c
    cm = confusion_matrix(y, p.argmax(axis=1), c)
    return {
        "n": int(y.size),
        "confidence": confidence,
        "n_resamples": n_resamples,
        "class_names": names,
        "malignant_classes": mal_names,
        "multiclass": {m: stat(i) for i, m in enumerate(_MULTI_NAMES)},
        "per_class": per_class,
        "binary": {m: stat(first_binary + i) for i, m in enumerate(_BINARY_NAMES)},
        "confusion_matrix": cm.tolist(),
    }


# ---------------------------------------------------------------------------------------------- triage


@dataclass(frozen=True)
class TriageThreshold:
    """Operating point chosen by :func:`triage_threshold`.

    Attributes:
        threshold: a patient is low risk when its maximum malignant probability is ``< threshold``
            (``inf``: every patient is low risk).
        npv: share of low-risk patients without a malignant lesion (NaN if nobody is low risk).
        low_risk_share: share of all patients that are low risk.
        n_low_risk, n_patients: counts.
        target_npv: the NPV asked for.
        target_met: False when no threshold reaches ``target_npv``; the threshold is then the most cautious
            one (only patients with probability 0, i.e. no lesion, are low risk).
    """

    threshold: float
    npv: float
    low_risk_share: float
    n_low_risk: int
    n_patients: int
    target_npv: float
    target_met: bool


def _triage_inputs(
    max_malignant_prob: npt.ArrayLike, malignant_truth: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(max_malignant_prob, dtype=float).ravel()
    t = np.asarray(malignant_truth).astype(bool).ravel()
    if p.shape != t.shape or p.size == 0:
        raise EvaluationInputError(
            f"need one probability and one truth per patient, got {p.size} and {t.size}"
        )
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise EvaluationInputError("maximum malignant probabilities must lie in [0, 1]")
    return p, t


def triage_threshold(
    max_malignant_prob: npt.ArrayLike, malignant_truth: npt.ArrayLike, target_npv: float = 0.99
) -> TriageThreshold:
    """Largest threshold whose low-risk group still reaches the target NPV, chosen on a validation set.

    A patient is low risk when the highest malignant probability over their lesions is below the threshold.
    Patients without a lesion are low risk by definition: give them probability 0 (no threshold can then make
    them high risk, since thresholds are always above the smallest probability). The low-risk group only
    changes at observed probabilities, so the largest threshold for a group is the smallest probability left
    out of it; the search scans every such group and keeps the largest one with ``NPV >= target_npv`` (NPV is
    not monotone in the threshold, so the first failure does not end the search).

    Args:
        max_malignant_prob: per patient, highest malignant probability of their lesions (0 if none), ``[n]``.
        malignant_truth: per patient, True when they truly have a malignant lesion, ``[n]``.
        target_npv: NPV the low-risk group must reach (paper: 0.99).

    Returns:
        :class:`TriageThreshold`.
    """
    p, t = _triage_inputs(max_malignant_prob, malignant_truth)
    order = np.argsort(p, kind="stable")
    p, t = p[order], t[order]
    group_end = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]  # last index of each distinct value
    n_low = group_end + 1
    n_bad = np.cumsum(t)[group_end]
    ok = np.flatnonzero((n_low - n_bad) >= target_npv * n_low - 1e-9)
    values = p[group_end]
    if ok.size:
        g = int(ok[-1])
        met = True
    else:
        # Most cautious choice: only the no-lesion patients (probability 0) stay low risk, if any.
        g = 0 if values[0] == 0.0 else -1
        met = False
    threshold = float(values[g + 1]) if g + 1 < len(values) else math.inf
    low = int(n_low[g]) if g >= 0 else 0
    npv = float((n_low[g] - n_bad[g]) / n_low[g]) if g >= 0 else math.nan
    return TriageThreshold(threshold, npv, low / len(p), low, len(p), target_npv, met)


def triage_metrics(
    max_malignant_prob: npt.ArrayLike,
    malignant_truth: npt.ArrayLike,
    threshold: float,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Triage performance at a fixed threshold (low risk = maximum malignant probability ``< threshold``).

    Args:
        max_malignant_prob, malignant_truth: as in :func:`triage_threshold` (e.g. a test set).
        threshold: chosen beforehand, e.g. by :func:`triage_threshold` on a validation set.
        confidence: level of the Wilson intervals.

    Returns:
        ``low_risk_share``, ``npv``, ``ppv``, ``sensitivity`` (malignant patients sent to high risk),
        ``specificity`` and counts, each proportion with ``_ci_low``/``_ci_high``.
    """
    p, t = _triage_inputs(max_malignant_prob, malignant_truth)
    high = p >= threshold
    tp = int((high & t).sum())
    fp = int((high & ~t).sum())
    fn = int((~high & t).sum())
    tn = int((~high & ~t).sum())
    out: dict[str, float] = {
        "threshold": float(threshold),
        "n": len(p),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }
    for name, k, n in (
        ("low_risk_share", tn + fn, len(p)),
        ("npv", tn, tn + fn),
        ("ppv", tp, tp + fp),
        ("sensitivity", tp, tp + fn),
        ("specificity", tn, tn + fp),
    ):
        lo, hi = proportion_ci(k, n, confidence)
        out[name] = k / n if n else math.nan
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = float(lo), float(hi)
    return out


# ---------------------------------------------------------------------------------------------- paired tests


def _paired_counts(a_correct: npt.ArrayLike, b_correct: npt.ArrayLike) -> tuple[int, int, int]:
    a = np.asarray(a_correct).astype(bool).ravel()
    b = np.asarray(b_correct).astype(bool).ravel()
    if a.shape != b.shape or a.size == 0:
        raise EvaluationInputError(
            f"paired tests need two equally long non-empty arrays, got {a.size} and {b.size}"
        )
    return int((a & ~b).sum()), int((~a & b).sum()), int(a.size)


def mcnemar_exact(a_correct: npt.ArrayLike, b_correct: npt.ArrayLike) -> dict[str, float]:
    """Exact McNemar test: do two paired readings differ in accuracy?

    Only discordant cases inform the test; under the null each is equally likely to favour either reading,
    so the two-sided p-value is a binomial test of ``n_a_only`` out of ``n_a_only + n_b_only`` against 1/2
    (``scipy.stats.binomtest``). With no discordant case the p-value is 1.

    Args:
        a_correct, b_correct: per case, whether reading a / reading b was right, ``[n]``.

    Returns:
        ``{"n", "a_only", "b_only", "accuracy_a", "accuracy_b", "difference" (a - b), "p_value"}``.
    """
    a_only, b_only, n = _paired_counts(a_correct, b_correct)
    acc_a = float(np.asarray(a_correct).astype(bool).mean())
    acc_b = float(np.asarray(b_correct).astype(bool).mean())
    discordant = a_only + b_only
    p_value = float(stats.binomtest(a_only, discordant, 0.5).pvalue) if discordant else 1.0
    return {
        "n": n,
        "a_only": a_only,
        "b_only": b_only,
        "accuracy_a": acc_a,
        "accuracy_b": acc_b,
        "difference": acc_a - acc_b,
        "p_value": p_value,
    }


@dataclass(frozen=True)
class NonInferiorityResult:
    """Outcome of :func:`paired_non_inferiority`.

    Attributes:
        n: paired cases.
        new_only, reference_only: discordant counts (only the new / only the reference reading right).
        accuracy_new, accuracy_reference: accuracies.
        difference: ``accuracy_new - accuracy_reference``.
        ci_low, ci_high: Tango score interval of the difference at level ``1 - 2 alpha`` (90 % for
            alpha 0.05), the interval whose lower bound above ``-margin`` is the same decision as the test.
        statistic: Tango's score statistic Z for H0 ``difference <= -margin``.
        p_value: one-sided, ``1 - Phi(Z)``.
        margin, alpha: the test's settings.
        non_inferior: ``p_value < alpha``.
    """

    n: int
    new_only: int
    reference_only: int
    accuracy_new: float
    accuracy_reference: float
    difference: float
    ci_low: float
    ci_high: float
    statistic: float
    p_value: float
    margin: float
    alpha: float
    non_inferior: bool


def _tango_z(b: int, c: int, n: int, theta: float) -> float:
    """Tango's (1998) score statistic for H0: ``p_new - p_ref = theta`` with paired binary outcomes.

    ``b``: only new correct, ``c``: only reference correct. The variance uses the restricted maximum
    likelihood estimate of the "only reference correct" probability ``q`` under H0 (then ``b`` has
    probability ``q + theta``), the larger root of ``2n q^2 + (-(b + c) + (2n - b + c) theta) q
    - c theta (1 - theta) = 0``.
    """
    qa = 2.0 * n
    qb = -(b + c) + (2.0 * n - b + c) * theta
    qc = -c * theta * (1.0 - theta)
    q = (-qb + math.sqrt(max(qb * qb - 4.0 * qa * qc, 0.0))) / (2.0 * qa)
    var = n * (2.0 * q + theta * (1.0 - theta))
    num = b - c - n * theta
    if var <= 1e-15:
        return math.copysign(math.inf, num) if num else 0.0
    return num / math.sqrt(var)


def paired_non_inferiority(
    new_correct: npt.ArrayLike, reference_correct: npt.ArrayLike, margin: float = 0.1, alpha: float = 0.05
) -> NonInferiorityResult:
    """One-sided non-inferiority test of a new reading's accuracy against a reference on the same cases.

    H0: ``acc_new - acc_ref <= -margin`` against H1: ``acc_new - acc_ref > -margin``, by Tango's score
    test for a difference of paired proportions (valid for small discordant counts, unlike the Wald test,
    whose variance vanishes when nobody disagrees). The defaults follow the paper's trial design: margin
    (delta) 0.1 and alpha 0.05; the paper does not name its test, and its sample size (173 for power 0.8 at
    expected accuracy 0.92) is not used here.

    Args:
        new_correct: per case, whether the new reading (e.g. LiAIDS) was right, ``[n]``.
        reference_correct: per case, whether the reference (e.g. radiologists) was right, ``[n]``.
        margin: non-inferiority margin on the accuracy difference, in (0, 1).
        alpha: one-sided significance level.

    Returns:
        :class:`NonInferiorityResult`.
    """
    if not 0.0 < margin < 1.0 or not 0.0 < alpha < 0.5:
        raise EvaluationInputError(f"need 0 < margin < 1 and 0 < alpha < 0.5, got {margin} and {alpha}")
    b, c, n = _paired_counts(new_correct, reference_correct)
    z_stat = _tango_z(b, c, n, -margin)
    p_value = float(stats.norm.sf(z_stat))
    z_crit = float(stats.norm.ppf(1.0 - alpha))
    diff = (b - c) / n
    eps = 1e-12
    # The score statistic falls as theta rises; the interval is where |Z(theta)| <= z_crit.
    if _tango_z(b, c, n, -1.0 + eps) <= z_crit:
        ci_low = -1.0
    else:
        ci_low = optimize.brentq(lambda th: _tango_z(b, c, n, th) - z_crit, -1.0 + eps, diff, xtol=1e-12)
    if _tango_z(b, c, n, 1.0 - eps) >= -z_crit:
        ci_high = 1.0
    else:
        ci_high = optimize.brentq(lambda th: _tango_z(b, c, n, th) + z_crit, diff, 1.0 - eps, xtol=1e-12)
    acc_new = float(np.asarray(new_correct).astype(bool).mean())
    acc_ref = float(np.asarray(reference_correct).astype(bool).mean())
    return NonInferiorityResult(
        n=n,
        new_only=b,
        reference_only=c,
        accuracy_new=acc_new,
        accuracy_reference=acc_ref,
        difference=diff,
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        statistic=float(z_stat),
        p_value=p_value,
        margin=margin,
        alpha=alpha,
        non_inferior=p_value < alpha,
    )
