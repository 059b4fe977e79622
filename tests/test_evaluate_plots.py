"""Evaluation figures are written as non-empty PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from liaids.errors import EvaluationInputError
from liaids.evaluate.detection import froc, match_scan
from liaids.evaluate.plots import (
    plot_confusion_matrix,
    plot_froc,
    plot_reader_study,
    plot_roc_curves,
    plot_tsne,
    tsne_embedding,
)
from liaids.evaluate.reader_study import ReaderStudy, reader_metrics
from liaids.evaluate.statistics import confusion_matrix

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 2000


@pytest.fixture(scope="module")
def lesions() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.r_[np.arange(7), rng.integers(0, 7, 113)]
    logits = rng.normal(size=(120, 7))
    logits[np.arange(120), y] += 2.0
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def test_roc_and_confusion_matrix_pngs(tmp_path: Path, lesions: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = lesions
    _assert_png(plot_roc_curves(y, p, tmp_path / "roc.png"))
    _assert_png(plot_confusion_matrix(confusion_matrix(y, p.argmax(1), 7), tmp_path / "sub" / "cm.png"))
    with pytest.raises(EvaluationInputError):
        plot_confusion_matrix(np.zeros((3, 3)), tmp_path / "bad.png")


def test_froc_png(tmp_path: Path) -> None:
    cube = [0, 0, 0, 10, 10, 10]
    matches = [
        match_scan("a", [cube, [50, 50, 0, 60, 60, 5]], [0.9, 0.4], [cube], [12.0]),
        match_scan(
            "b", [[20, 20, 0, 24, 24, 2]], [0.7], [[20, 20, 0, 24, 24, 2], [70, 70, 0, 80, 80, 3]], [5.0, 9.0]
        ),
    ]
    _assert_png(plot_froc(froc(matches), tmp_path / "froc.png"))


def test_reader_study_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    truth = {f"p{i}": bool(rng.random() < 0.3) for i in range(60)}

    def noisy(rate: float) -> dict[str, bool]:
        return {p: (not t) if rng.random() < rate else t for p, t in truth.items()}

    study = ReaderStudy(
        truth=truth,
        calls={
            (r, s): noisy(0.3 if s == "without_ai" else 0.1)
            for r in ("j1", "s1")
            for s in ("without_ai", "with_ai")
        },
        ai_calls=noisy(0.1),
    )
    _assert_png(plot_reader_study(reader_metrics(study, n_resamples=0), tmp_path / "readers.png"))


def test_tsne_png_and_embedding(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 12)
    features = rng.normal(size=(36, 8)) + 6.0 * labels[:, None]
    emb = tsne_embedding(features, random_state=0)
    assert emb.shape == (36, 2)
    # Well-separated clusters stay apart: each point's nearest neighbour has its label.
    d = np.linalg.norm(emb[:, None] - emb[None], axis=2) + np.eye(36) * 1e9
    assert np.all(labels[d.argmin(axis=1)] == labels)
    _assert_png(plot_tsne(features, labels, tmp_path / "tsne.png"))
