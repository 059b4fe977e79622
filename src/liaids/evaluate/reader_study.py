"""Reader study: radiologists' patient-level calls with and without LiAIDS, against the truth and the AI.

Reader calls CSV
----------------
One UTF-8 CSV file with a header row; columns may come in any order and other columns are ignored.
One row per reader, patient and session:

============== ======== =========================================================================
column         required values
============== ======== =========================================================================
``reader_id``  yes      any non-empty text naming the reader, e.g. ``junior1``
``patient_id`` yes      any non-empty text; the same patient has the same id in every file
``session``    yes      ``without_ai`` (reading alone) or ``with_ai`` (reading with LiAIDS's output)
``call``       yes      ``benign`` or ``malignant``: the reader's call for the whole patient;
                        ``malignant`` when the reader finds at least one malignant lesion,
                        ``benign`` otherwise (patients read as lesion-free are ``benign``)
``truth``      no       ``benign`` or ``malignant``: the reference standard of the patient
                        (``malignant`` = at least one malignant lesion: HCC, ICC or HM;
                        patients without lesions are ``benign``)
============== ======== =========================================================================

Values are compared after stripping surrounding spaces and ignoring case. A (``reader_id``,
``patient_id``, ``session``) triple may appear only once. A reader need not read every patient in both
sessions: the per-session figures use all of that session's rows, the paired comparisons only the
patients the reader read in both sessions.

The truth is given either in the ``truth`` column (the same value in every row of a patient) or in a
separate truth CSV with columns ``patient_id`` and ``truth`` (one row per patient; same value rules). When
both are given they must agree. Every patient in the calls needs a truth; truth rows for patients nobody
read are allowed and unused.

LiAIDS's own calls, the reference point of the study, are optional and come in a third CSV with columns
``patient_id`` and ``call`` (one row per patient, same values as above). They appear as reader
``LiAIDS`` (``ai_name``) in session ``ai``.

Any breach of these rules is reported as a one-line :class:`~liaids.errors.DatasetError` naming the file,
the line (where there is one) and the problem.

Statistics
----------
Per reader and session (:func:`reader_metrics`), as in the paper's Table 3: accuracy, and sensitivity,
specificity and F1 with benign as the positive class and again with malignant as the positive class
(benign sensitivity = malignant specificity). Proportions have Wilson intervals; F1 has a percentile
bootstrap interval over patients. :func:`compare_sessions` tests with-AI against without-AI accuracy per
reader with the exact McNemar test, and pooled over readers (pooling discordant pairs treats reader-patient
pairs as independent, so read the pooled p-value as descriptive). :func:`ai_non_inferiority` runs the
paper's non-inferiority test of LiAIDS against each reader (margin 0.1, one-sided alpha 0.05; see
:func:`liaids.evaluate.statistics.paired_non_inferiority`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from liaids.errors import DatasetError
from liaids.evaluate.statistics import (
    EvaluationInputError,
    bootstrap_ci,
    mcnemar_exact,
    paired_non_inferiority,
    proportion_ci,
)

SESSIONS: tuple[str, ...] = ("without_ai", "with_ai")
CALLS: tuple[str, ...] = ("benign", "malignant")
#: Session name of LiAIDS's own calls in result rows.
AI_SESSION = "ai"
CALL_COLUMNS: tuple[str, ...] = ("reader_id", "patient_id", "session", "call")
TRUTH_COLUMNS: tuple[str, ...] = ("patient_id", "truth")
AI_COLUMNS: tuple[str, ...] = ("patient_id", "call")


@dataclass(frozen=True)
class ReaderStudy:
    """Calls and truth of a reader study; malignant = True.

    Attributes:
        truth: patient id -> truly malignant.
        calls: (reader id, session) -> patient id -> called malignant, readers in first-seen order.
        ai_calls: patient id -> LiAIDS called malignant, or None.
        ai_name: reader id under which LiAIDS appears in results.
    """

    truth: Mapping[str, bool]
    calls: Mapping[tuple[str, str], Mapping[str, bool]]
    ai_calls: Mapping[str, bool] | None = None
    ai_name: str = "LiAIDS"
    readers: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        readers: dict[str, None] = {}
        for (reader, session), by_patient in self.calls.items():
            if session not in SESSIONS:
                raise EvaluationInputError(
                    f"unknown session {session!r}; expected one of {', '.join(SESSIONS)}"
                )
            missing = sorted(set(by_patient) - set(self.truth))
            if missing:
                raise EvaluationInputError(
                    f"no truth for patient(s) {', '.join(missing[:5])} read by {reader}"
                )
            readers[reader] = None
        if self.ai_calls is not None:
            missing = sorted(set(self.ai_calls) - set(self.truth))
            if missing:
                raise EvaluationInputError(
                    f"no truth for patient(s) {', '.join(missing[:5])} called by the AI"
                )
        object.__setattr__(self, "readers", tuple(readers))

    def paired(self, first: Mapping[str, bool], second: Mapping[str, bool]) -> tuple[np.ndarray, ...]:
        """Truth and both calls on the patients present in both mappings, sorted by patient id.

        Returns:
            ``(truth, first_calls, second_calls)`` boolean arrays.
        """
        common = sorted(set(first) & set(second))
        return (
            np.array([self.truth[p] for p in common], dtype=bool),
            np.array([first[p] for p in common], dtype=bool),
            np.array([second[p] for p in common], dtype=bool),
        )


# ---------------------------------------------------------------------------------------------- loading


def _read_rows(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line number, row) pairs of a CSV, with the required columns checked."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if not reader.fieldnames:
                raise DatasetError("empty file, expected a header row", path)
            if missing:
                raise DatasetError(f"missing column(s) {', '.join(missing)}; found {', '.join(header)}", path)
            reader.fieldnames = header
            rows = []
            for row in reader:
                if None in row:
                    raise DatasetError(f"line {reader.line_num}: more fields than header columns", path)
                rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items()}))
    except OSError as e:
        raise DatasetError(f"cannot read: {e.strerror or e}", path) from e
    except (UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"not a readable UTF-8 CSV file: {e}", path) from e
    if not rows:
        raise DatasetError("no data rows", path)
    return header, rows


def _value(row: dict[str, str], column: str, allowed: tuple[str, ...] | None, path: Path, line: int) -> str:
    raw = row.get(column, "")
    if not raw:
        raise DatasetError(f"line {line}: empty {column}", path)
    if allowed is None:
        return raw
    value = raw.lower()
    if value not in allowed:
        raise DatasetError(f"line {line}: unknown {column} {raw!r}; expected {' or '.join(allowed)}", path)
    return value


def load_truth(path: str | Path) -> dict[str, bool]:
    """Read a truth CSV (``patient_id``, ``truth``); see the module docstring.

    Returns:
        patient id -> truly malignant.
    """
    path = Path(path)
    _, rows = _read_rows(path, TRUTH_COLUMNS)
    truth: dict[str, bool] = {}
    for line, row in rows:
        pid = _value(row, "patient_id", None, path, line)
        if pid in truth:
            raise DatasetError(f"line {line}: duplicate patient_id {pid!r}", path)
        truth[pid] = _value(row, "truth", CALLS, path, line) == "malignant"
    return truth


def load_ai_calls(path: str | Path) -> dict[str, bool]:
    """Read LiAIDS's patient-level calls (``patient_id``, ``call``); see the module docstring.

    Returns:
        patient id -> called malignant.
    """
    path = Path(path)
    _, rows = _read_rows(path, AI_COLUMNS)
    calls: dict[str, bool] = {}
    for line, row in rows:
        pid = _value(row, "patient_id", None, path, line)
        if pid in calls:
            raise DatasetError(f"line {line}: duplicate patient_id {pid!r}", path)
        calls[pid] = _value(row, "call", CALLS, path, line) == "malignant"
    return calls


def load_reader_study(
    calls_csv: str | Path,
    truth_csv: str | Path | None = None,
    ai_calls_csv: str | Path | None = None,
    ai_name: str = "LiAIDS",
) -> ReaderStudy:
    """Read a reader study from the CSV files described in the module docstring.

    Args:
        calls_csv: reader calls, optionally with a ``truth`` column.
        truth_csv: separate truth table, needed when ``calls_csv`` has no ``truth`` column.
        ai_calls_csv: LiAIDS's own calls, optional.
        ai_name: reader id of LiAIDS in results.

    Returns:
        :class:`ReaderStudy`.

    Raises:
        DatasetError: a file is missing, unreadable or breaks a rule; the message names file and line.
    """
    calls_path = Path(calls_csv)
    header, rows = _read_rows(calls_path, CALL_COLUMNS)
    table = load_truth(truth_csv) if truth_csv is not None else None
    has_truth_column = "truth" in header
    if table is None and not has_truth_column:
        raise DatasetError("no truth column and no truth table given", calls_path)

    inline: dict[str, bool] = {}
    calls: dict[tuple[str, str], dict[str, bool]] = {}
    for line, row in rows:
        reader = _value(row, "reader_id", None, calls_path, line)
        pid = _value(row, "patient_id", None, calls_path, line)
        session = _value(row, "session", SESSIONS, calls_path, line)
        call = _value(row, "call", CALLS, calls_path, line) == "malignant"
        by_patient = calls.setdefault((reader, session), {})
        if pid in by_patient:
            raise DatasetError(
                f"line {line}: duplicate row for reader {reader}, patient {pid}, {session}", calls_path
            )
        by_patient[pid] = call
        if has_truth_column:
            truth = _value(row, "truth", CALLS, calls_path, line) == "malignant"
            if inline.setdefault(pid, truth) != truth:
                raise DatasetError(
                    f"line {line}: truth of patient {pid} differs from an earlier row", calls_path
                )
            if table is not None and pid in table and table[pid] != truth:
                raise DatasetError(
                    f"line {line}: truth of patient {pid} disagrees with {truth_csv}", calls_path
                )
        elif table is not None and pid not in table:
            raise DatasetError(f"line {line}: patient {pid} has no truth in {truth_csv}", calls_path)

    truth_all = {**(table or {}), **inline}
    ai_calls = None
    if ai_calls_csv is not None:
        ai_calls = load_ai_calls(ai_calls_csv)
        missing = sorted(set(ai_calls) - set(truth_all))
        if missing:
            raise DatasetError(
                f"patient {missing[0]} has no truth ({len(missing)} such patients)", ai_calls_csv
            )
    return ReaderStudy(truth=truth_all, calls=calls, ai_calls=ai_calls, ai_name=ai_name)


# ---------------------------------------------------------------------------------------------- statistics


def _f1(truth: np.ndarray, call: np.ndarray) -> np.ndarray:
    """F1 with the positive class ``True``, batched over leading axes; NaN when undefined."""
    tp = (truth & call).sum(axis=-1)
    wrong = (truth != call).sum(axis=-1)
    den = 2 * tp + wrong
    return np.divide(2.0 * tp, den, out=np.full(np.shape(den), np.nan), where=den > 0)


def call_metrics(
    truth: np.ndarray, call: np.ndarray, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Patient-level accuracy and, for benign and for malignant as positive class, sensitivity,
    specificity, precision and F1, each with a confidence interval.

    Args:
        truth: per patient, truly malignant ``[n]``.
        call: per patient, called malignant ``[n]``.
        confidence: interval level (Wilson for proportions, percentile bootstrap for F1).
        n_resamples: bootstrap resamples for the F1 intervals (0: NaN bounds).
        seed: bootstrap seed.

    Returns:
        flat dict: ``n``, ``accuracy``, ``{benign,malignant}_{sensitivity,specificity,precision,f1}``,
        and ``<name>_ci_low`` / ``<name>_ci_high`` for each.
    """
    t = np.asarray(truth).astype(bool).ravel()
    c = np.asarray(call).astype(bool).ravel()
    if t.shape != c.shape or t.size == 0:
        raise EvaluationInputError(f"need one call per patient, got {t.size} truths and {c.size} calls")
    out: dict[str, float] = {"n": int(t.size), "n_malignant": int(t.sum())}

    def prop(name: str, k: int, n: int) -> None:
        lo, hi = proportion_ci(k, n, confidence)
        out[name] = k / n if n else math.nan
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = float(lo), float(hi)

    prop("accuracy", int((t == c).sum()), t.size)
    for cls, pos_t, pos_c in (("benign", ~t, ~c), ("malignant", t, c)):
        ctp, ctn = int((pos_t & pos_c).sum()), int((~pos_t & ~pos_c).sum())
        cfp, cfn = int((~pos_t & pos_c).sum()), int((pos_t & ~pos_c).sum())
        prop(f"{cls}_sensitivity", ctp, ctp + cfn)
        prop(f"{cls}_specificity", ctn, ctn + cfp)
        prop(f"{cls}_precision", ctp, ctp + cfp)
        out[f"{cls}_f1"] = float(_f1(pos_t, pos_c))
        if n_resamples > 0:
            lo, hi = bootstrap_ci(
                _f1, pos_t, pos_c, n_resamples=n_resamples, confidence=confidence, seed=seed, vectorized=True
            )
        else:
            lo = hi = math.nan
        out[f"{cls}_f1_ci_low"], out[f"{cls}_f1_ci_high"] = float(lo), float(hi)
    return out


def reader_metrics(
    study: ReaderStudy, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> list[dict[str, Any]]:
    """One row of :func:`call_metrics` per reader and session, then one for LiAIDS (session ``ai``).

    Args:
        study: the reader study.
        confidence, n_resamples, seed: see :func:`call_metrics`.

    Returns:
        rows with ``reader_id`` and ``session`` first, readers in first-seen order, ``without_ai`` first.
    """
    rows = []
    for reader in study.readers:
        for session in SESSIONS:
            by_patient = study.calls.get((reader, session))
            if not by_patient:
                continue
            truth, call, _ = study.paired(by_patient, by_patient)
            rows.append(
                {
                    "reader_id": reader,
                    "session": session,
                    **call_metrics(truth, call, confidence, n_resamples, seed),
                }
            )
    if study.ai_calls:
        truth, call, _ = study.paired(study.ai_calls, study.ai_calls)
        rows.append(
            {
                "reader_id": study.ai_name,
                "session": AI_SESSION,
                **call_metrics(truth, call, confidence, n_resamples, seed),
            }
        )
    return rows


def compare_sessions(study: ReaderStudy) -> list[dict[str, Any]]:
    """With-AI against without-AI accuracy, per reader (exact McNemar) and pooled over readers.

    Args:
        study: the reader study.

    Returns:
        one row per reader with both sessions, then ``reader_id = "pooled"``: ``n`` (paired patients),
        ``accuracy_without_ai``, ``accuracy_with_ai``, ``difference`` (with - without), ``improved``
        (right only with AI), ``worsened`` (right only without AI), ``p_value`` (two-sided).
    """
    rows = []
    with_all, without_all = [], []
    for reader in study.readers:
        alone = study.calls.get((reader, "without_ai"))
        aided = study.calls.get((reader, "with_ai"))
        if not alone or not aided:
            continue
        truth, with_call, without_call = study.paired(aided, alone)
        if not truth.size:
            continue
        with_ok, without_ok = with_call == truth, without_call == truth
        with_all.append(with_ok)
        without_all.append(without_ok)
        rows.append({"reader_id": reader, **_session_row(with_ok, without_ok)})
    if with_all:
        rows.append(
            {"reader_id": "pooled", **_session_row(np.concatenate(with_all), np.concatenate(without_all))}
        )
    return rows


def _session_row(with_ok: np.ndarray, without_ok: np.ndarray) -> dict[str, float]:
    m = mcnemar_exact(with_ok, without_ok)
    return {
        "n": m["n"],
        "accuracy_without_ai": m["accuracy_b"],
        "accuracy_with_ai": m["accuracy_a"],
        "difference": m["difference"],
        "improved": m["a_only"],
        "worsened": m["b_only"],
        "p_value": m["p_value"],
    }


def ai_non_inferiority(
    study: ReaderStudy, session: str = "without_ai", margin: float = 0.1, alpha: float = 0.05
) -> list[dict[str, Any]]:
    """Non-inferiority of LiAIDS's accuracy against each reader's, on the patients both called.

    Defaults from the paper's trial: "a non-inferiority margin (delta, δ) of 0.1, a significance level
    (alpha, α) of 0.05"; the test is one-sided, see
    :func:`~liaids.evaluate.statistics.paired_non_inferiority`.

    Args:
        study: the reader study, with ``ai_calls``.
        session: the readers' session to compare against (``without_ai``: readers alone).
        margin, alpha: non-inferiority margin on the accuracy difference and one-sided level.

    Returns:
        one row per reader: ``reader_id``, ``session`` and the fields of
        :class:`~liaids.evaluate.statistics.NonInferiorityResult` (``difference`` = LiAIDS - reader).
    """
    if not study.ai_calls:
        raise EvaluationInputError("the non-inferiority test needs LiAIDS's calls (ai_calls)")
    if session not in SESSIONS:
        raise EvaluationInputError(f"unknown session {session!r}; expected one of {', '.join(SESSIONS)}")
    rows = []
    for reader in study.readers:
        by_patient = study.calls.get((reader, session))
        if not by_patient:
            continue
        truth, ai_call, reader_call = study.paired(study.ai_calls, by_patient)
        if not truth.size:
            continue
        result = paired_non_inferiority(ai_call == truth, reader_call == truth, margin=margin, alpha=alpha)
        rows.append({"reader_id": reader, "session": session, **asdict(result)})
    return rows


def write_rows(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write result rows (from the functions above) as a CSV file with the keys of the first row as header.

    Returns:
        the path written.
    """
    path = Path(path)
    if not rows:
        raise EvaluationInputError("no rows to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
