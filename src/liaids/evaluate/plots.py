"""Figures of the evaluation: ROC curves, confusion matrix, FROC, reader study (paper Fig. 4), t-SNE.

Every function writes one PNG file and returns its path. Matplotlib is imported inside the functions and
drawn through its Agg canvas on a bare ``Figure`` (no pyplot), so importing this module costs nothing, no
display is needed and no global pyplot state is touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from liaids.codes import LESION_TYPES
from liaids.errors import EvaluationInputError
from liaids.evaluate.detection import FrocCurve
from liaids.evaluate.reader_study import AI_SESSION
from liaids.evaluate.statistics import binary_auc, roc_curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_roc_curves(
    y_true_idx: npt.ArrayLike,
    probs: npt.ArrayLike,
    path: str | Path,
    class_names: Sequence[str] = LESION_TYPES,
    title: str = "ROC, one class vs rest",
) -> Path:
    """One-vs-rest ROC curve of each class and their macro average, AUCs in the legend.

    The macro curve averages the per-class TPRs on a common FPR grid (classes absent from the truth are
    skipped), as in scikit-learn's multiclass ROC example.

    Args:
        y_true_idx: true class index per case ``[n]``.
        probs: class probabilities ``[n, C]``.
        path: PNG to write.
        class_names: names of the ``C`` classes.
        title: figure title.

    Returns:
        ``path``.
    """
    y = np.asarray(y_true_idx).ravel()
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2 or p.shape != (len(y), len(class_names)):
        raise EvaluationInputError(f"probs must be [{len(y)}, {len(class_names)}], got {p.shape}")
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    grid = np.linspace(0.0, 1.0, 201)
    tprs, aucs = [], []
    for c, name in enumerate(class_names):
        pos = y == c
        if not pos.any() or pos.all():
            continue
        fpr, tpr, _ = roc_curve(pos, p[:, c])
        auc = float(binary_auc(pos, p[:, c]))
        ax.plot(fpr, tpr, lw=1.2, label=f"{name} (AUC {auc:.3f})")
        tprs.append(np.interp(grid, fpr, tpr))
        aucs.append(auc)
    if tprs:
        ax.plot(grid, np.mean(tprs, axis=0), "k--", lw=2, label=f"macro (AUC {np.mean(aucs):.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_confusion_matrix(
    cm: npt.ArrayLike,
    path: str | Path,
    class_names: Sequence[str] = LESION_TYPES,
    title: str = "Confusion matrix",
) -> Path:
    """Heat map of a confusion matrix: colour = share of the true class (row), text = count.

    Args:
        cm: ``[C, C]`` counts, rows true, columns predicted.
        path: PNG to write.
        class_names: names of the ``C`` classes.
        title: figure title.

    Returns:
        ``path``.
    """
    m = np.asarray(cm)
    if m.ndim != 2 or m.shape != (len(class_names), len(class_names)):
        raise EvaluationInputError(f"cm must be [{len(class_names)}, {len(class_names)}], got {m.shape}")
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape), where=rows > 0)
    fig = _figure(5.5, 4.8)
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(
                j,
                i,
                f"{int(m[i, j])}",
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
            )
    ticks = np.arange(len(class_names))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=class_names, yticklabels=class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, label="share of true class")
    return _save(fig, path)


def plot_froc(curves: Mapping[str, FrocCurve], path: str | Path, title: str = "FROC") -> Path:
    """FROC curves (e.g. ``all``, ``<10mm``, ``>=10mm`` from :func:`liaids.evaluate.detection.froc`).

    The x axis is logarithmic (base 2) over the reported FP rates; markers show the interpolated
    sensitivities whose mean is the CPM given in the legend.

    Args:
        curves: name -> :class:`~liaids.evaluate.detection.FrocCurve`.
        path: PNG to write.
        title: figure title.

    Returns:
        ``path``.
    """
    if not curves:
        raise EvaluationInputError("no FROC curve to plot")
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot()
    rates: tuple[float, ...] = ()
    for name, curve in curves.items():
        if not curve.n_lesions:
            continue
        # Straight segments in rising FP order: the interpolation that gives the marked sensitivities.
        fp, sens = curve.fp_per_scan[::-1], curve.sensitivity[::-1]
        keep = fp > 0  # (0, y) cannot be shown on a log axis
        (line,) = ax.plot(fp[keep], sens[keep], lw=1.2, label=f"{name} (CPM {curve.cpm:.3f})")
        ax.plot(curve.fp_rates, curve.sensitivities, "o", color=line.get_color(), ms=4)
        rates = curve.fp_rates
    if rates:
        ax.set_xscale("log", base=2)
        ax.set_xlim(min(rates) / 1.5, max(rates) * 1.5)
        ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.set(ylim=(0, 1.01), xlabel="false positives per scan", ylabel="lesion sensitivity", title=title)
    ax.grid(True, color="0.9")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_reader_study(
    metrics_rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    title: str = "Readers with and without LiAIDS",
) -> Path:
    """Sensitivity against specificity of each reader alone, with LiAIDS (arrow) and of LiAIDS itself.

    Two panels as in the paper's Fig. 4a-b: benign as the positive class and malignant as the positive
    class.

    Args:
        metrics_rows: rows of :func:`liaids.evaluate.reader_study.reader_metrics`.
        path: PNG to write.
        title: figure title.

    Returns:
        ``path``.
    """
    if not metrics_rows:
        raise EvaluationInputError("no reader-study rows to plot")
    by_key = {(r["reader_id"], r["session"]): r for r in metrics_rows}
    readers = list(dict.fromkeys(r["reader_id"] for r in metrics_rows if r["session"] != AI_SESSION))
    fig = _figure(10.0, 4.8)
    fig.suptitle(title)
    for panel, cls in enumerate(("benign", "malignant")):
        ax = fig.add_subplot(1, 2, panel + 1)
        sens, spec = f"{cls}_sensitivity", f"{cls}_specificity"
        shown = [v for r in metrics_rows for v in (r[sens], r[spec]) if np.isfinite(v)]
        lowest = max(0.0, (min(shown) if shown else 0.0) - 0.05)
        for i, reader in enumerate(readers):
            colour = f"C{i % 10}"
            alone = by_key.get((reader, "without_ai"))
            aided = by_key.get((reader, "with_ai"))
            if alone:
                ax.plot(alone[spec], alone[sens], "o", color=colour, mfc="none", label=f"{reader}")
            if aided:
                ax.plot(aided[spec], aided[sens], "o", color=colour)
            if alone and aided:
                ax.annotate(
                    "",
                    xy=(aided[spec], aided[sens]),
                    xytext=(alone[spec], alone[sens]),
                    arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.0},
                )
        for r in metrics_rows:
            if r["session"] == AI_SESSION:
                ax.plot(r[spec], r[sens], "*", color="red", ms=14, label=str(r["reader_id"]))
        ax.set(
            xlim=(lowest, 1.01),
            ylim=(lowest, 1.01),
            xlabel="specificity",
            ylabel="sensitivity",
            title=f"{cls} (open: alone, filled: with AI)",
        )
        ax.grid(True, color="0.9")
        if panel == 0:
            ax.legend(loc="lower left", fontsize=7)
    return _save(fig, path)


def tsne_embedding(features: npt.ArrayLike, random_state: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """Two-dimensional t-SNE of feature vectors (scikit-learn, PCA initialisation, fixed seed).

    Args:
        features: ``[N, D]`` feature vectors (N >= 3), e.g. the classifier's 588-d image features.
        random_state: seed.
        perplexity: capped at ``(N - 1) / 3`` so that small sets work.

    Returns:
        ``[N, 2]`` embedding.
    """
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=float)
    if x.ndim != 2 or len(x) < 3 or not np.all(np.isfinite(x)):
        raise EvaluationInputError(f"features must be a finite [N >= 3, D] array, got shape {x.shape}")
    perplexity = min(perplexity, (len(x) - 1) / 3.0)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=random_state).fit_transform(x)


def plot_tsne(
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    path: str | Path,
    class_names: Sequence[str] = LESION_TYPES,
    random_state: int = 0,
    perplexity: float = 30.0,
    title: str = "t-SNE of lesion features",
) -> Path:
    """Scatter of the t-SNE embedding of feature vectors, coloured by true class (paper Fig. 3f).

    Args:
        features: ``[N, D]`` feature vectors.
        labels: true class index per vector ``[N]``.
        path: PNG to write.
        class_names: names of the classes.
        random_state, perplexity: see :func:`tsne_embedding`.
        title: figure title.

    Returns:
        ``path``.
    """
    y = np.asarray(labels).ravel()
    if len(y) != len(np.asarray(features)):
        raise EvaluationInputError(f"need one label per feature vector, got {len(y)} labels")
    if y.size and (y.min() < 0 or y.max() >= len(class_names)):
        raise EvaluationInputError(f"labels must be class indices 0..{len(class_names) - 1}")
    emb = tsne_embedding(features, random_state=random_state, perplexity=perplexity)
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    for c, name in enumerate(class_names):
        sel = y == c
        if sel.any():
            ax.scatter(emb[sel, 0], emb[sel, 1], s=8, color=f"C{c % 10}", label=f"{name} ({int(sel.sum())})")
    ax.set(xticks=[], yticks=[], title=title)
    ax.legend(loc="best", fontsize=8, markerscale=2)
    return _save(fig, path)
