"""report.html of an evaluation: one offline page built from metrics.json and the figure PNGs.

The page shows only what metrics.json holds, so every number on it can be found there, and under every
figure it names the CSV file, rows and columns the figure is drawn from. No script, style sheet, font or
image is fetched: the style is inline and figures are embedded as base64 PNG. Text from the data is escaped.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from liaids.codes import LESION_TYPES

_NOTICE = "Not for clinical use: a research evaluation of LiAIDS."
_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #1d2330; background: #f4f5f7; }
main { max-width: 1150px; margin: 0 auto; padding: 0 20px 40px; }
.notice { background: #8a1c1c; color: #fff; font-weight: 700; text-align: center; padding: 8px; }
h1 { font-size: 1.5em; margin: 18px 0 4px; }
h2 { font-size: 1.2em; margin: 26px 0 8px; border-bottom: 1px solid #ccd; padding-bottom: 4px; }
.muted { color: #5b6270; font-size: 0.9em; }
.card { background: #fff; border: 1px solid #d8dbe2; border-radius: 6px; padding: 12px 16px; margin: 12px 0; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; margin: 6px 0; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #e5e7ec; vertical-align: top; }
th { background: #eef0f4; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 10px 0; } figure img { max-width: 100%; border: 1px solid #d8dbe2; background: #fff; }
figcaption { font-size: 0.85em; color: #39404d; margin-top: 4px; }
code { background: #eef0f4; padding: 0 3px; border-radius: 3px; }
"""

#: Section titles in page order.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("lesion_level", "Lesion level: classification of detected lesions"),
    ("patient_level", "Patient level"),
    ("detection", "Detection"),
    ("strata", "Strata: slice thickness, mAs, centre"),
    ("triage", "Triage"),
    ("tsne", "t-SNE of image features"),
    ("ablations", "Ablations"),
    ("reader_study", "Reader study"),
)


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _e(value)


def _stat(entry: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``value (low-high)`` of a ``{"value", "ci_low", "ci_high"}`` entry; ``k/n`` appended when present."""
    if not entry:
        return "n/a"
    text = _num(entry.get("value"), digits)
    if entry.get("ci_low") is not None and entry.get("ci_high") is not None:
        text += f" ({_num(entry['ci_low'], digits)}&ndash;{_num(entry['ci_high'], digits)})"
    if "k" in entry and "n" in entry:
        text += f" <span class='muted'>{entry['k']}/{entry['n']}</span>"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure_html(entry: Mapping[str, Any], folder: Path) -> str:
    path = folder / entry["file"]
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    sources = "; ".join(
        f"<code>{_e(s['csv'])}</code> (rows: {_e(s['rows'])}; columns: {_e(', '.join(s['columns']))})"
        for s in entry["sources"]
    )
    return (
        f'<figure id="fig-{_e(entry["id"])}">'
        f'<img src="data:image/png;base64,{data}" alt="{_e(entry["title"])}">'
        f"<figcaption><b>{_e(entry['title'])}</b> <span class='muted'>({_e(entry['file'])})</span><br>"
        f"Data: {sources}</figcaption></figure>"
    )


def _lesion_level(m: Mapping[str, Any]) -> str:
    pop = m["population"]
    parts = [
        f"<p>{_e(pop['rule'])}. Classified: <b>{pop['classified']}</b> of {pop['true_lesions']} true "
        "lesions; "
        f"missed (not classified): <b>{pop['missed_not_classified']}</b>; predictions that hit no lesion: "
        f"<b>{pop['false_positive_predictions']}</b>; duplicates: <b>{pop['duplicate_predictions']}</b>; "
        f"below the score threshold: <b>{pop['below_threshold_predictions']}</b>.</p>"
    ]
    if "skipped" in m:
        return "".join(parts) + f"<p class='muted'>Skipped: {_e(m['skipped'])}</p>"
    parts.append(
        _table(
            ["seven-class", "value (95 % CI)"],
            [[_e(k.replace("_", " ")), _stat(v)] for k, v in m["multiclass"].items()],
        )
    )
    parts.append(
        _table(
            ["binary (malignant positive)", "value (95 % CI)"],
            [[_e(k), _stat(v)] for k, v in m["binary"].items()],
        )
    )
    metrics = ("auc", "sensitivity", "specificity", "precision", "f1")
    parts.append(
        _table(
            ["type", "n", *metrics],
            [
                [_e(t), str(m["per_class"][t]["n"]), *(_stat(m["per_class"][t][k]) for k in metrics)]
                for t in LESION_TYPES
                if t in m["per_class"]
            ],
        )
    )
    return "".join(parts)


def _patient_level(m: Mapping[str, Any]) -> str:
    rows = [
        ["seven-class (NONE = no lesion), all patients", _stat(m["seven_class"])],
        ["seven-class, patients with lesions", _stat(m["seven_class_patients_with_lesions"])],
        ["predicted class is one of the true types", _stat(m["seven_class_any_true_type"])],
    ]
    b = m.get("binary")
    if b:
        for name in (
            "accuracy",
            "malignant_sensitivity",
            "malignant_specificity",
            "malignant_precision",
            "malignant_f1",
            "benign_f1",
        ):
            rows.append(
                [f"binary {name.replace('_', ' ')}", _stat({k: b.get(s) for k, s in _keys(name).items()})]
            )
    return f"<p>{_e(m['rule'])}.</p>" + _table(["measure", "value (95 % CI)"], rows)


def _keys(name: str) -> dict[str, str]:
    return {"value": name, "ci_low": f"{name}_ci_low", "ci_high": f"{name}_ci_high"}


def _detection(m: Mapping[str, Any]) -> str:
    counts = (
        "n_scans",
        "true_lesions",
        "detected",
        "missed",
        "predicted_lesions",
        "true_positive_predictions",
        "false_positive_predictions",
        "duplicate_predictions",
        "below_threshold_predictions",
        "false_positives_per_scan",
    )
    parts = [_table(["count", "value"], [[_e(k.replace("_", " ")), _num(m.get(k))] for k in counts])]
    if "recall" in m:
        parts.append(
            _table(
                ["lesions", "recall (95 % CI)", "detected / lesions"],
                [
                    [
                        _e(s),
                        _stat({"value": r["recall"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]}),
                        f"{r['detected']}/{r['lesions']}",
                    ]
                    for s, r in m["recall"].items()
                ],
            )
        )
        rates = list(next(iter(m["froc"].values()))["sensitivity_at"])
        parts.append(
            _table(
                ["FROC: lesions", *(f"@{r} FP/scan" for r in rates), "CPM"],
                [
                    [_e(s), *(_num(c["sensitivity_at"][r]) for r in rates), _num(c["cpm"])]
                    for s, c in m["froc"].items()
                ],
            )
        )
    return "".join(parts)


def _strata(m: Mapping[str, Any]) -> str:
    measures = (
        "lesion_seven_class_accuracy",
        "lesion_binary_accuracy",
        "detection_recall",
        "patient_seven_class_accuracy",
        "patient_binary_accuracy",
    )
    rows = []
    for stratifier, strata in m.items():
        if stratifier == "source":
            continue
        for stratum, entry in strata.items():
            rows.append([_e(stratifier), _e(stratum), *(_stat(entry.get(x)) for x in measures)])
    return _table(["stratifier", "stratum", *(x.replace("_", " ") for x in measures)], rows)


def _triage(m: Mapping[str, Any]) -> str:
    rows = [
        [_e(k.replace("_", " ")), _stat(m[k])]
        for k in ("low_risk_share", "npv", "ppv", "sensitivity", "specificity")
    ]
    text = f"<p>{_e(m['rule'])}. Thresholds used by the reports: {_e(m['thresholds_used'])}.</p>"
    choice = m.get("threshold_for_target_npv")
    if choice:
        text += (
            "<p class='muted'>On this cohort, the largest threshold reaching NPV "
            f"{_num(choice['target_npv'])} is "
            f"{_num(choice['threshold'])} (low-risk share {_num(choice['low_risk_share'])}, NPV "
            f"{_num(choice['npv'])}, target met: {_num(choice['target_met'])}).</p>"
        )
    return text + _table(["measure", "value (95 % CI)"], rows)


def _tsne(m: Mapping[str, Any]) -> str:
    if "skipped" in m:
        return f"<p class='muted'>Skipped: {_e(m['skipped'])}</p>"
    return f"<p>{m['n_lesions']} lesions, {m['feature_dim']}-d features from {_e(m['features_from'])}.</p>"


def _ablations(m: Mapping[str, Any]) -> str:
    if "skipped" in m:
        return f"<p class='muted'>Skipped: {_e(m['skipped'])}</p>"
    parts = [
        f"<p>Classifiers on {_e(m['classifiers_on'])}; detectors on {_e(m['detectors_on'])}; p: "
        f"{_e(m['p_value'])}.</p>"
    ]
    for role in ("classifier", "detector"):
        models = m.get(role)
        if not models:
            continue
        measures = list(dict.fromkeys(k for e in models.values() for k in e["measures"]))
        rows = []
        for name, entry in models.items():
            cells = []
            for k in measures:
                s = entry["measures"].get(k)
                cell = _stat(s) if s else "n/a"
                if s and s.get("p_value_vs_reference") is not None:
                    cell += f" <span class='muted'>p={_num(s['p_value_vs_reference'], 4)}</span>"
                cells.append(cell)
            rows.append([_e(name), _e(entry["variant"]), *cells])
        parts.append(_table([role, "variant", *(k.replace("_", " ") for k in measures)], rows))
    return "".join(parts)


def _reader_study(m: Mapping[str, Any]) -> str:
    if "skipped" in m:
        return f"<p class='muted'>Skipped: {_e(m['skipped'])}</p>"
    cols = (
        "accuracy",
        "benign_sensitivity",
        "benign_specificity",
        "benign_f1",
        "malignant_sensitivity",
        "malignant_specificity",
        "malignant_f1",
    )
    rows = [
        [
            _e(r["reader_id"]),
            _e(r["session"]),
            str(r["n"]),
            *(_stat({k: r.get(s) for k, s in _keys(c).items()}) for c in cols),
        ]
        for r in m["metrics"]
    ]
    parts = [
        f"<p>LiAIDS's calls: {_e(m['ai_calls_source'] or 'not given')}.</p>",
        _table(["reader", "session", "n", *(c.replace("_", " ") for c in cols)], rows),
    ]
    if m["comparison"]:
        parts.append(
            _table(
                ["reader", "n", "accuracy without AI", "with AI", "difference", "p (McNemar)"],
                [
                    [
                        _e(r["reader_id"]),
                        str(r["n"]),
                        _num(r["accuracy_without_ai"]),
                        _num(r["accuracy_with_ai"]),
                        _num(r["difference"]),
                        _num(r["p_value"], 4),
                    ]
                    for r in m["comparison"]
                ],
            )
        )
    if m["non_inferiority"]:
        parts.append(
            _table(
                ["reader", "n", "LiAIDS - reader", "90 % CI", "p (one-sided)", "non-inferior"],
                [
                    [
                        _e(r["reader_id"]),
                        str(r["n"]),
                        _num(r["difference"]),
                        f"{_num(r['ci_low'])}&ndash;{_num(r['ci_high'])}",
                        _num(r["p_value"], 4),
                        _num(r["non_inferior"]),
                    ]
                    for r in m["non_inferiority"]
                ],
            )
        )
    return "".join(parts)


_RENDERERS = {
    "lesion_level": _lesion_level,
    "patient_level": _patient_level,
    "detection": _detection,
    "strata": _strata,
    "triage": _triage,
    "tsne": _tsne,
    "ablations": _ablations,
    "reader_study": _reader_study,
}


def _failed_cases_html(dataset: Mapping[str, Any]) -> list[str]:
    """A warning card listing the cases left out (``--skip-failed``), or nothing."""
    failed = dataset.get("failed_cases") or []
    if not failed:
        return []
    items = "".join(f"<li><code>{_e(c['case_id'])}</code>: {_e(c['error'])}</li>" for c in failed)
    return [
        f"<div class='card'><b>{len(failed)} of {dataset['cases']} cases left out of every number on this "
        f"page</b> (the pipeline refused them, or their report was missing):<ul>{items}</ul></div>"
    ]


def render_evaluation_html(metrics: Mapping[str, Any], folder: str | Path) -> str:
    """The evaluation page.

    Args:
        metrics: the metrics.json content (strict-JSON form).
        folder: the evaluation folder holding the figure files named in ``metrics["figures"]``.

    Returns:
        The HTML text.
    """
    folder = Path(folder)
    figures: dict[str, list[Mapping[str, Any]]] = {}
    for entry in metrics.get("figures", []):
        figures.setdefault(entry["section"], []).append(entry)
    ds = metrics["dataset"]
    settings = metrics["settings"]
    pred = metrics["predictions"]
    body = [
        f"<div class='notice'>{_NOTICE}</div><main>",
        f"<h1>Evaluation of {_e(ds.get('name') or ds['folder'])}</h1>",
        f"<p class='muted'>{ds['cases']} cases from <code>{_e(ds['folder'])}</code>; predictions: "
        f"{_e(pred['kind'])} (<code>{_e(pred['folder'])}</code>); created {_e(metrics['created'])}; "
        f"liaids {_e(metrics['software']['liaids'])}.</p>",
        *_failed_cases_html(ds),
        "<div class='card'><b>Settings</b> "
        + _e(", ".join(f"{k} = {v}" for k, v in settings.items()))
        + "<br><span class='muted'>Every number on this page is in <code>metrics.json</code>; every figure "
        "names the CSV rows and columns it is drawn from.</span></div>",
    ]
    for key, title in SECTIONS:
        section = metrics.get(key)
        if section is None:
            continue
        body.append(f"<h2 id='{key}'>{_e(title)}</h2><div class='card'>")
        if isinstance(section, Mapping) and section.get("source"):
            body.append(f"<p class='muted'>Source: {_e(section['source'])}</p>")
        body.append(_RENDERERS[key](section))
        body.extend(_figure_html(f, folder) for f in figures.get(key, []))
        body.append("</div>")
    files = metrics.get("files", {})
    body.append("<h2 id='files'>Files</h2><div class='card'>")
    body.append(_table(["file", "content"], [[f"<code>{_e(k)}</code>", _e(v)] for k, v in files.items()]))
    body.append(f"</div></main><div class='notice'>{_NOTICE}</div>")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>LiAIDS evaluation: {_e(ds.get('name') or '')}</title><style>{_STYLE}</style></head><body>"
        + "".join(body)
        + "</body></html>\n"
    )
