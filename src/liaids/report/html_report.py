"""report.html: one self-contained page a radiologist can read offline.

Built from the report.json content and the key images only, so the page shows exactly what report.json
says. No script, no font, no style sheet or image is fetched: the style is inline and the key images are
embedded as base64 PNG (``data:`` URIs). Every text taken from the data is HTML-escaped.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from html import escape
from typing import Any

from liaids.codes import CLINICAL_FIELDS, LESION_TYPE_NAMES, LESION_TYPES, MALIGNANT_TYPES, PHASES
from liaids.pipeline.decision import probability_text
from liaids.report.key_images import COLOURS, phase_captions

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #1d2330; background: #f4f5f7; }
main { max-width: 1100px; margin: 0 auto; padding: 0 20px 40px; }
.notice { background: #8a1c1c; color: #fff; font-weight: 700; text-align: center; padding: 10px;
          letter-spacing: 0.02em; }
h1 { font-size: 1.5em; margin: 18px 0 4px; }
h2 { font-size: 1.2em; margin: 26px 0 8px; border-bottom: 1px solid #ccd; padding-bottom: 4px; }
h3 { font-size: 1.05em; margin: 0 0 8px; }
.muted { color: #5b6270; font-size: 0.9em; }
.card { background: #fff; border: 1px solid #d8dbe2; border-radius: 6px; padding: 14px 16px; margin: 12px 0; }
.triage { display: flex; gap: 18px; align-items: center; }
.risk { font-size: 1.4em; font-weight: 800; padding: 10px 18px; border-radius: 6px; color: #fff;
        white-space: nowrap; }
.risk.high { background: #b3261e; } .risk.low { background: #1e7b3a; }
table { border-collapse: collapse; width: 100%; font-size: 0.92em; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e5e7ec; vertical-align: top; }
th { background: #eef0f4; font-weight: 600; }
.views { display: flex; gap: 10px; flex-wrap: wrap; }
figure { margin: 0; } figure img { display: block; width: 200px; height: 200px; background: #000;
  image-rendering: auto; border-radius: 3px; }
figcaption { font-size: 0.85em; text-align: center; margin-top: 3px; }
.lesion { display: grid; grid-template-columns: auto 1fr; gap: 18px; }
.bars { min-width: 300px; }
.bar { display: grid; grid-template-columns: 3.2em 1fr 3.6em; gap: 6px; align-items: center;
       font-size: 0.88em; margin: 2px 0; }
.track { background: #e8eaef; height: 12px; border-radius: 3px; overflow: hidden; }
.fill { height: 12px; } .fill.m { background: #c0392b; } .fill.b { background: #2f6db5; }
.tag { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 0.85em; font-weight: 600;
       color: #fff; }
.tag.malignant { background: #b3261e; } .tag.indeterminate { background: #c77700; }
.tag.benign { background: #1e7b3a; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: middle;
          margin: 0 4px 0 10px; }
.warn { color: #8a4b00; }
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _bars(probabilities: Mapping[str, float]) -> str:
    rows = []
    for code in LESION_TYPES:
        p = float(probabilities.get(code) or 0.0)
        kind = "m" if code in MALIGNANT_TYPES else "b"
        rows.append(
            f'<div class="bar" title="{_e(LESION_TYPE_NAMES[code])}"><span>{_e(code)}</span>'
            f'<div class="track"><div class="fill {kind}" style="width:{100.0 * p:.1f}%"></div></div>'
            f"<span>{100.0 * p:.1f}%</span></div>"
        )
    return "".join(rows)


def _triage_section(report: Mapping[str, Any], finding_images: Mapping[int, Mapping[str, bytes]]) -> str:
    triage, dx = report["triage"], report["diagnosis"]
    risk = triage["risk"]
    if dx["diagnosis"]:
        headline = (
            f"{_e(dx['diagnosis_name']).capitalize()} ({_e(dx['diagnosis'])}), "
            f'<span class="tag {_e(dx["malignancy"])}">{_e(dx["malignancy"])}</span> '
            f"&mdash; lesion {_e(dx['deciding_lesion'])} of {_e(dx['lesion_count'])}"
        )
    else:
        headline = "No focal liver lesion detected"
    return (
        '<div class="card triage">'
        f'<div class="risk {_e(risk)}">{_e(risk).upper()} RISK</div>'
        f"<div><div><strong>Diagnosis:</strong> {headline}</div>"
        f"<div><strong>Reason:</strong> {_e(triage['reason'])}</div>"
        f'<div class="muted">Operating threshold {probability_text(float(triage["threshold"]))} '
        f"(source: {_e(triage['threshold_source'])}"
        + (f", chosen for NPV &ge; {_fmt(triage['target_npv'], 2)}" if triage.get("target_npv") else "")
        + f"). {_e(triage['rule'][:1].upper() + triage['rule'][1:])}.</div>"
        + "</div></div>"
        + _findings_block(triage, finding_images)
    )


def _findings_block(triage: Mapping[str, Any], images: Mapping[int, Mapping[str, bytes]]) -> str:
    """The triage's findings that are not confidently benign: where to look, as the report omits them."""
    point = triage.get("detection_threshold")
    if point is None:
        return ""
    findings = triage.get("findings") or []
    flagged = [f for f in findings if f["category"] != "benign"]
    head = (
        f'<div class="card"><div class="muted">The triage also read {len(findings)} candidate(s) below the '
        f"reporting threshold with a detection score of at least {_fmt(point, 2)}; "
    )
    if not flagged:
        return head + "none is malignant or indeterminate.</div></div>"
    rows = []
    for f in flagged:
        phase = f["found_in"][0] if f["found_in"] else "PV"
        box = " ".join(str(v) for v in f["phases"][phase]["bbox_ijk"])
        rows.append(
            f"<tr><td>{_e(f['id'])}</td><td>{_e(f['type'])}</td>"
            f'<td><span class="tag {_e(f["category"])}">{_e(f["category"])}</span></td>'
            f"<td>{probability_text(float(f['malignant_probability']))}</td>"
            f"<td>{_fmt(f['detection_score'], 2)}</td><td>{_e(', '.join(f['found_in']))}</td>"
            f"<td>{_e(box)} ({_e(phase)})</td></tr>"
        )
    views = "".join(_finding_views(f, images.get(int(str(f["id"]).lstrip("F")))) for f in flagged)
    return (
        head
        + f"{len(flagged)} of them are malignant or indeterminate (not reported as lesions; check them):"
        + "</div>"
        + "<table><tr><th>finding</th><th>type</th><th>category</th><th>malignant probability</th>"
        + "<th>detection score</th><th>found in</th><th>box i0 j0 k0 i1 j1 k1</th></tr>"
        + "".join(rows)
        + "</table>"
        + (
            '<p class="muted">Key images: the finding\'s box (it is not segmented) in amber where it was '
            "detected, in cyan where transferred; reported lesions in magenta, the liver in green.</p>"
            + views
            if views
            else ""
        )
        + "</div>"
    )


def _phase_figures(
    phases: Mapping[str, Mapping[str, Any]], images: Mapping[str, bytes] | None, what: str
) -> str:
    """The key images of one lesion or finding in NC, ART and PV, each captioned detected or transferred."""
    if not images:
        return ""
    captions = phase_captions({p: phases[p]["found"] for p in PHASES})
    return "".join(
        f"<figure>{_img(images[p], f'{what}, {p} phase')}<figcaption>{_e(captions[p])}</figcaption></figure>"
        for p in PHASES
        if p in images
    )


def _finding_views(finding: Mapping[str, Any], images: Mapping[str, bytes] | None) -> str:
    if not images:
        return ""
    fid = finding["id"]
    figures = _phase_figures(finding["phases"], images, f"finding {fid}")
    return (
        f'<div id="finding-{_e(fid)}"><h3>Finding {_e(fid)}: {_e(finding["type"])} '
        f'<span class="tag {_e(finding["category"])}">{_e(finding["category"])}</span></h3>'
        f'<div class="views">{figures}</div></div>'
    )


def _clinical_section(report: Mapping[str, Any]) -> str:
    clinical = report["clinical"]
    rows = "".join(
        f"<tr><td>{_e(name.replace('_', ' '))}</td><td>{_e(_yes_no(clinical['values'].get(name)))}</td>"
        f'<td class="muted">{_e(clinical["sources"].get(name))}</td></tr>'
        for name in CLINICAL_FIELDS
    )
    return f"<table><tr><th>field</th><th>value</th><th>source</th></tr>{rows}</table>"


def _yes_no(value: Any) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    return "unknown" if value is None else str(value)


def _score_note(lesion: Mapping[str, Any]) -> str:
    """The detection score, and the detector's own where the three-phase verifier re-scored the lesion."""
    note = f"detection score {_fmt(lesion['detection_score'], 2)}"
    detector = lesion.get("detector_score")
    if detector is not None and detector != lesion["detection_score"]:
        note += f" (after the three-phase check; detector {_fmt(detector, 2)})"
    return note


def _summary_table(lesions: list[Mapping[str, Any]]) -> str:
    if not lesions:
        return '<p class="muted">No lesion was detected in the liver.</p>'
    rows = "".join(
        f"<tr><td>{les['id']}</td><td>{_e(les['type'])} ({_e(les['type_name'])})</td>"
        f'<td><span class="tag {_e(les["category"])}">{_e(les["category"])}</span></td>'
        f"<td>{_fmt(100.0 * les['malignant_probability'], 1, ' %')}</td>"
        f"<td>{_fmt(les['diameter_mm'], 1, ' mm')}</td><td>{_fmt(les['volume_ml'], 2, ' ml')}</td>"
        f"<td>{_e(', '.join(les['found_in']))}</td><td>{_fmt(les['detection_score'], 2)}</td></tr>"
        for les in lesions
    )
    return (
        "<table><tr><th>id</th><th>type</th><th>category</th><th>malignant probability</th>"
        "<th>diameter</th><th>volume</th><th>detected in</th><th>detection score</th></tr>"
        f"{rows}</table>"
    )


def _context_note(lesion: Mapping[str, Any]) -> str:
    """When the probabilities were weighed with the patient's other lesions: what this one alone gave."""
    own = lesion.get("lesion_probabilities")
    if not own:
        return ""
    top = max(LESION_TYPES, key=lambda code: float(own.get(code) or 0.0))
    return (
        '<div class="muted">Read with the patient\'s other lesions; this lesion alone: '
        f"{_e(top)} {_fmt(100.0 * float(own[top]), 1, ' %')}</div>"
    )


def _lesion_card(lesion: Mapping[str, Any], images: Mapping[str, bytes] | None) -> str:
    views = _phase_figures(lesion["phases"], images, f"lesion {lesion['id']}")
    detail_rows = "".join(
        f"<tr><td>{p}</td><td>{'detected' if m['found'] else 'transferred'}</td>"
        f"<td>{_fmt(m['detection_score'], 2)}</td><td>{_e(m['bbox_ijk'])}</td><td>{_e(m['mask'])}</td>"
        f"<td>{_fmt(m['diameter_mm'], 1, ' mm')}</td><td>{_fmt(m['volume_ml'], 2, ' ml')}</td></tr>"
        for p, m in ((p, lesion["phases"][p]) for p in PHASES)
    )
    return (
        f'<div class="card" id="lesion-{lesion["id"]}">'
        f"<h3>Lesion {lesion['id']}: {_e(lesion['type_name']).capitalize()} ({_e(lesion['type'])}) "
        f'<span class="tag {_e(lesion["category"])}">{_e(lesion["category"])}</span></h3>'
        f'<div class="lesion"><div class="views">{views}</div>'
        f'<div class="bars"><div><strong>Malignant probability '
        f"{_fmt(100.0 * lesion['malignant_probability'], 1, ' %')}</strong></div>"
        f"{_bars(lesion['probabilities'])}{_context_note(lesion)}"
        f'<div class="muted">Diameter {_fmt(lesion["diameter_mm"], 1, " mm")}, volume '
        f"{_fmt(lesion['volume_ml'], 2, ' ml')} (measured in {_e(lesion['measured_in'])}); "
        f"{_score_note(lesion)}</div></div></div>"
        "<table><tr><th>phase</th><th>lesion</th><th>score</th><th>bbox_ijk</th><th>mask</th>"
        f"<th>diameter</th><th>volume</th></tr>{detail_rows}</table></div>"
    )


def _legend() -> str:
    items = [
        ("found", "lesion, detected in this phase"),
        ("transferred", "lesion, box transferred from the other phases"),
        ("other", "other lesions"),
        ("liver", "liver"),
    ]
    return (
        '<p class="muted">Contours:'
        + "".join(
            f'<span class="swatch" style="background:rgb{COLOURS[key]}"></span>{_e(text)}'
            for key, text in items
        )
        + ". Axial views in radiological display (patient's right on the left), window L40/W400.</p>"
    )


def _study_section(report: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{p}</td><td>{_e(ph['series_description'] or ph['source'])}</td>"
        f"<td>{_e(' x '.join(str(v) for v in ph['shape_ijk']))}</td>"
        f"<td>{_e(' x '.join(f'{v:.2f}' for v in ph['spacing_mm']))}</td>"
        f"<td>{_fmt(ph['liver_volume_ml'], 0, ' ml')}</td><td>{ph['detections']}</td></tr>"
        for p, ph in report["phases"].items()
    )
    assignment = report["study"]["phase_assignment"]
    warnings = [*assignment.get("warnings", []), *report.get("warnings", [])]
    warn = "".join(f'<p class="warn">Warning: {_e(w)}</p>' for w in dict.fromkeys(warnings))
    return (
        "<table><tr><th>phase</th><th>series</th><th>voxels (i x j x k)</th><th>spacing (mm)</th>"
        f"<th>liver</th><th>detections</th></tr>{rows}</table>"
        f'<p class="muted">Phases identified by: {_e(assignment["method"])}'
        + (f"; overridden: {_e(', '.join(assignment['overridden']))}" if assignment.get("overridden") else "")
        + f".</p>{warn}"
    )


def _footer(report: Mapping[str, Any]) -> str:
    models = "".join(
        f"<tr><td>{_e(role)}</td><td>{_e(src.get('folder'))}</td>"
        f"<td><code>{_e((src.get('sha256') or '')[:16])}</code></td></tr>"
        for role, src in report["models"].items()
    )
    timings = ", ".join(f"{_e(k)} {v:.1f} s" for k, v in report["timings_s"].items())
    return (
        f"<table><tr><th>model</th><th>folder</th><th>sha256</th></tr>{models}</table>"
        f'<p class="muted">Timings: {timings}. LiAIDS {_e(report["software"]["liaids"])} on '
        f"{_e(report['software']['device'])}; report schema {_e(report['schema'])} {_e(report['version'])}; "
        f"created {_e(report['created'])}.</p>"
    )


def render_html(
    report: Mapping[str, Any],
    key_images: Mapping[int, Mapping[str, bytes]],
    finding_images: Mapping[int, Mapping[str, bytes]] | None = None,
) -> str:
    """The report page.

    Args:
        report: report.json content (:func:`liaids.report.json_report.build_report`).
        key_images: lesion id -> phase -> PNG bytes (:func:`liaids.report.key_images.render_key_images`).
        finding_images: triage finding id (1 for ``F1``) -> phase -> PNG bytes
            (:func:`liaids.report.key_images.render_finding_images`); none: the findings without images.

    Returns:
        The HTML document.
    """
    study = report["study"]
    who = study.get("case_id") or study.get("patient_id") or "unknown patient"
    lesions = report["lesions"]
    cards = "".join(_lesion_card(les, key_images.get(les["id"])) for les in lesions)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>LiAIDS report: {_e(who)}</title><style>{_STYLE}</style></head><body>"
        f'<div class="notice" role="alert">{_e(report["notice"])}</div><main>'
        f"<h1>Liver lesion report</h1>"
        f'<div class="muted">Patient {_e(study.get("patient_id") or "n/a")} &middot; case '
        f"{_e(study.get('case_id') or 'n/a')} &middot; study {_e(study.get('study_uid') or 'n/a')} &middot; "
        f"{_e(report['input']['kind'])} input {_e(report['input']['path'])}</div>"
        f"<h2>Triage</h2>{_triage_section(report, finding_images or {})}"
        f"<h2>Lesions ({len(lesions)})</h2>{_summary_table(lesions)}"
        + (_legend() + cards if lesions else "")
        + f"<h2>Clinical information</h2>{_clinical_section(report)}"
        f"<h2>Study</h2>{_study_section(report)}"
        f"<h2>Software</h2>{_footer(report)}"
        f'<div class="notice">{_e(report["notice"])}</div></main></body></html>\n'
    )
