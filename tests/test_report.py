"""Report writers: report.json content, the offline report.html, key images, the written masks."""

from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from liaids.classification.matching import MatchedLesion
from liaids.classification.predictor import LesionPrediction
from liaids.codes import LESION_TYPES, PHASES
from liaids.io import read_nifti
from liaids.pipeline.decision import LesionCall, TriageSettings, decide
from liaids.pipeline.diagnose import (
    Diagnosis,
    LesionFinding,
    PhaseMeasurement,
    lesion_instance_mask,
    measure_lesions,
)
from liaids.pipeline.inputs import StudyInput, parse_clinical_options, resolve_clinical
from liaids.report import SCHEMA, SCHEMA_VERSION, build_report, encode_png, render_html, write_report_folder
from liaids.report.key_images import COLOURS, render_finding_images, render_key_images
from liaids.types import Study, Volume


def decode_png(data: bytes) -> np.ndarray:
    """Decode the 8-bit RGB, unfiltered PNGs :func:`encode_png` writes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF
        if tag == b"IHDR":
            size = struct.unpack(">II", body[:8])
            assert body[8:10] == b"\x08\x02"
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    assert size is not None
    w, h = size
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(h, w, 3)


def test_png_round_trip() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(rgb)), rgb)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(rgb.astype(np.float32))


def _probabilities(winner: str, p: float) -> dict[str, float]:
    rest = (1.0 - p) / (len(LESION_TYPES) - 1)
    return {t: (p if t == winner else rest) for t in LESION_TYPES}


@pytest.fixture(scope="module")
def diagnosis(phase_volumes: dict[str, Volume]) -> Diagnosis:
    """A run's result built by hand on the small synthetic study: two lesions, one missed in NC."""
    livers, instances, lesions = {}, {}, []
    boxes = {1: (20, 40, 3, 30, 52, 7), 2: (34, 30, 2, 40, 36, 5)}
    for p in PHASES:
        labels = np.zeros(phase_volumes[p].shape, np.uint8)
        labels[:, 33:62, 14:46] = 1
        labels[4:6, 44:48, 23:27] = 2  # segmented part of lesion 1; lesion 2 has none: drawn as its box
        livers[p] = phase_volumes[p].with_array(labels)
    sources = {}
    sizes = {}
    for p in PHASES:
        array, sources[p] = lesion_instance_mask(livers[p].array, list(boxes.items()))
        instances[p] = phase_volumes[p].with_array(array)
        sizes[p] = measure_lesions(phase_volumes[p], array, sources[p])
    predictions = {
        1: LesionPrediction(_probabilities("HCC", 0.7), "HCC", 0.7 + 2 * 0.05, None),
        2: LesionPrediction(_probabilities("HC", 0.9), "HC", 3 * (0.1 / 6), None),
    }
    found = {1: {"NC": False, "ART": True, "PV": True}, 2: {p: True for p in PHASES}}
    calls = [
        LesionCall(lid, predictions[lid].lesion_type, predictions[lid].malignant_probability) for lid in boxes
    ]
    decision = decide(calls, 0.1)
    for lid, box in boxes.items():
        scores = {p: (0.8 if found[lid][p] else None) for p in PHASES}
        match = MatchedLesion({p: box for p in PHASES}, found[lid], scores, 0.8)
        phases = {
            p: PhaseMeasurement(box, found[lid][p], scores[p], sources[p][lid], *sizes[p][lid])
            for p in PHASES
        }
        lesions.append(LesionFinding(lid, match, predictions[lid], decision.categories[lid], phases, "PV"))
    clinical = resolve_clinical(
        parse_clinical_options(age=58, sex="M", missing_history="absent"), dicom={"PatientAge": "058Y"}
    )
    study_input = StudyInput(
        study=Study(phases=phase_volumes),
        kind="nifti",
        source=Path("/data/study"),
        sources={p: f"/data/study/{p}.nii.gz" for p in PHASES},
        assignment={"method": "names+images", "evidence": {p: ["file name"] for p in PHASES}, "warnings": []},
        patient={"patient_id": "<script>alert(1)</script>", "study_uid": None, "case_id": "case & co"},
    )
    return Diagnosis(
        input=study_input,
        clinical=clinical,
        livers=livers,
        instances=instances,
        detections={p: [] for p in PHASES},
        lesions=lesions,
        decision=decision,
        triage=TriageSettings(0.1, "fallback", None),
        models={"liver": {"folder": "/m/liver", "sha256": "ab" * 32, "profile": "small"}},
        timings={"segmentation": 1.5, "detection": 2.0},
    )


def test_instance_mask_rule(diagnosis: Diagnosis) -> None:
    array = diagnosis.instances["PV"].array
    lesion_1 = diagnosis.lesions[0].phases["PV"]
    lesion_2 = diagnosis.lesions[1].phases["PV"]
    assert lesion_1.mask == "segmentation" and lesion_1.voxels == 2 * 4 * 4 == int((array == 1).sum())
    # No lesion label in lesion 2's 6 x 6 x 3 box: the inscribed ellipsoid (6 x 6 minus its corners on the
    # middle slice, the central 4 x 4 on the two others).
    assert lesion_2.mask == "ellipsoid" and lesion_2.voxels == 32 + 2 * 16 == int((array == 2).sum())
    spacing = diagnosis.input.study["PV"].spacing
    assert lesion_2.volume_ml == pytest.approx(lesion_2.voxels * np.prod(spacing) / 1000.0, abs=1e-3)
    assert lesion_2.diameter_mm == pytest.approx(6 * 2.5)  # measured by the longer in-plane side of its box
    assert lesion_1.diameter_mm == pytest.approx(np.hypot(3 * 2.5, 3 * 2.5) + 2.5, abs=0.01)


def test_report_json_content(diagnosis: Diagnosis) -> None:
    report = build_report(diagnosis)
    text = json.dumps(report, allow_nan=False)  # strict JSON
    assert report["schema"] == SCHEMA == "liaids.diagnosis" and report["version"] == SCHEMA_VERSION
    assert "Not for clinical use" in report["notice"]
    assert report["software"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert report["software"]["device"] == diagnosis.device
    assert [les["id"] for les in report["lesions"]] == [1, 2]
    first = report["lesions"][0]
    assert first["type"] == "HCC" and first["category"] == "malignant" and first["malignant_type"]
    assert sum(first["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert first["malignant_probability"] == pytest.approx(0.8)
    assert first["lesion_probabilities"] is None  # no patient context applied
    assert first["found_in"] == ["ART", "PV"] and first["phases"]["NC"]["found"] is False
    assert first["phases"]["ART"]["bbox_ijk"] == [20, 40, 3, 30, 52, 7]
    ph = report["phases"]["ART"]
    vol = diagnosis.input.study["ART"]
    assert ph["shape_ijk"] == [96, 96, 10] and ph["spacing_mm"] == list(vol.spacing)
    assert ph["origin_mm"] == list(vol.origin) and len(ph["direction"]) == 9
    assert report["diagnosis"] == {
        "lesion_count": 2,
        "diagnosis": "HCC",
        "diagnosis_name": "hepatocellular carcinoma",
        "malignancy": "malignant",
        "deciding_lesion": 1,
        "malignant_probability": pytest.approx(0.8),
    }
    assert report["triage"]["risk"] == "high" and report["triage"]["threshold_source"] == "fallback"
    assert report["clinical"]["sources"]["age"] == "option"
    assert report["clinical"]["sources"]["cirrhosis"] == "assumed absent"
    assert report["timings_s"] == {"segmentation": 1.5, "detection": 2.0}
    assert "lesions_PV.nii.gz" in text and report["lesion_masks"]["rule"].startswith("voxels of the lesion")


def _has(img: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool((img == np.array(colour, np.uint8)).all(axis=2).any())


def test_key_images_show_the_contours(diagnosis: Diagnosis) -> None:
    images = render_key_images(diagnosis)
    assert sorted(images) == [1, 2] and all(sorted(v) == sorted(PHASES) for v in images.values())
    nc = decode_png(images[1]["NC"])
    pv = decode_png(images[1]["PV"])
    assert nc.shape == (200, 200, 3)

    # Lesion 1 was transferred into NC (cyan) and found in PV (amber); lesion 2 is nearby (magenta).
    assert _has(nc, COLOURS["transferred"]) and not _has(nc, COLOURS["found"])
    assert _has(pv, COLOURS["found"]) and _has(pv, COLOURS["liver"])
    assert _has(pv, COLOURS["other"])


def test_report_folder_and_offline_html(diagnosis: Diagnosis, tmp_path: Path) -> None:
    path = write_report_folder(diagnosis, tmp_path, started=None)
    assert path == tmp_path / "report.json"
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"report.json", "report.html"} | {
        f"{k}_{p}.nii.gz" for k in ("liver", "lesions") for p in PHASES
    }
    report = json.loads(path.read_text())
    assert set(report["timings_s"]) >= {"segmentation", "detection", "outputs"}
    for p in PHASES:
        lesions = read_nifti(tmp_path / f"lesions_{p}.nii.gz")
        liver = read_nifti(tmp_path / f"liver_{p}.nii.gz")
        assert lesions.same_geometry(diagnosis.input.study[p])
        assert set(np.unique(lesions.array).tolist()) == {0} | {les["id"] for les in report["lesions"]}
        assert set(np.unique(liver.array).tolist()) == {0, 1}
    html = (tmp_path / "report.html").read_text()
    assert html.count("Not for clinical use") == 2
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 3 * 2
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched
    assert "<script>" not in html and "&lt;script&gt;" in html and "case &amp; co" in html
    assert "HIGH RISK" in html and "Hepatocellular carcinoma (HCC)" in html
    for code in LESION_TYPES:
        assert f"<span>{code}</span>" in html  # one probability bar per type
    assert "width:70.0%" in html  # the HCC bar of lesion 1


def test_html_says_when_the_patient_context_changed_the_probabilities(diagnosis: Diagnosis) -> None:
    report = build_report(diagnosis)
    assert "this lesion alone" not in render_html(report, {})
    alone = {"HCC": 0.2, "ICC": 0.1, "HM": 0.6, "FNH": 0.05, "HH": 0.05, "HC": 0.0, "HA": 0.0}
    report["lesions"][0]["lesion_probabilities"] = alone
    html = render_html(report, {})
    assert "other lesions; this lesion alone: HM 60.0 %" in html


def test_html_names_the_detector_score_when_the_verifier_changed_it(diagnosis: Diagnosis) -> None:
    report = build_report(diagnosis)
    lesion = report["lesions"][0]
    assert lesion["detector_score"] == lesion["detection_score"]  # the hand-built run has no verifier
    assert "three-phase check" not in render_html(report, {})
    lesion["detection_score"], lesion["detector_score"] = 0.41, 0.93
    assert "detection score 0.41 (after the three-phase check; detector 0.93)" in render_html(report, {})


def test_html_without_lesions(diagnosis: Diagnosis) -> None:
    empty = replace(diagnosis, lesions=[], decision=decide([], 0.1))
    report = build_report(empty)
    html = render_html(report, render_key_images(empty))
    assert report["lesions"] == [] and report["triage"]["risk"] == "low"
    assert "LOW RISK" in html and "No focal liver lesion detected" in html and "data:image" not in html


def test_report_lists_the_triage_findings(diagnosis: Diagnosis) -> None:
    """A finding below the reporting point makes a lesion-free patient high risk; the report says where."""
    from liaids.pipeline.diagnose import TriageFinding

    box = (10, 12, 1, 18, 20, 4)
    match = MatchedLesion({p: box for p in PHASES}, {"NC": False, "ART": True, "PV": True}, {}, 0.47)
    benign_match = replace(match, score=0.44)
    calls = [LesionCall(1, "HM", 0.71, 0.47), LesionCall(2, "HC", 0.0001, 0.44)]
    decision = decide([], 0.01, findings=calls)
    findings = [
        TriageFinding(1, match, _probabilities("HM", 0.71), calls[0], decision.finding_categories[1]),
        TriageFinding(
            2, benign_match, _probabilities("HC", 0.9999), calls[1], decision.finding_categories[2]
        ),
    ]
    settings = TriageSettings(0.01, "triage.json", 0.99, {}, detection_threshold=0.4)
    run = replace(diagnosis, lesions=[], decision=decision, triage=settings, triage_findings=findings)
    report = build_report(run)
    triage = report["triage"]
    assert report["lesions"] == [] and report["diagnosis"]["diagnosis"] is None
    assert triage["risk"] == "high" and "finding F1" in triage["reason"]
    assert triage["detection_threshold"] == 0.4
    assert [(f["id"], f["category"]) for f in triage["findings"]] == [("F1", "malignant"), ("F2", "benign")]
    assert triage["findings"][0]["phases"]["ART"]["bbox_ijk"] == list(box)
    assert triage["findings"][0]["found_in"] == ["ART", "PV"]
    # Key images for the flagged finding only: its box in amber where detected, cyan where transferred.
    finding_images = render_finding_images(run)
    assert sorted(finding_images) == [1] and sorted(finding_images[1]) == sorted(PHASES)
    nc, art = decode_png(finding_images[1]["NC"]), decode_png(finding_images[1]["ART"])
    assert _has(nc, COLOURS["transferred"]) and not _has(nc, COLOURS["found"])
    assert _has(art, COLOURS["found"]) and not _has(art, COLOURS["transferred"])
    html = render_html(report, render_key_images(run), finding_images)
    assert "HIGH RISK" in html and "The triage also read 2 candidate(s)" in html
    assert "1 of them are malignant or indeterminate" in html and "10 12 1 18 20 4 (ART)" in html
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 3
    assert 'alt="finding F1, ART phase"' in html and "finding F2" not in html
    assert "data:image" not in render_html(report, {})  # without images the table stays
    quiet = build_report(
        replace(run, triage_findings=findings[1:], decision=decide([], 0.01, findings=calls[1:]))
    )
    assert quiet["triage"]["risk"] == "low"
    assert "none is malignant or indeterminate" in render_html(quiet, {})
