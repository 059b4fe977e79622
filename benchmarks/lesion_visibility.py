"""How visible the phantom's lesions are in each phase, and what the detector finds at each visibility.

Per lesion and phase (one row per true lesion of a phase volume, as ``benchmarks/detection.py accuracy``
counts them): the lesion's median attenuation against the liver parenchyma around it, divided by that
parenchyma's spread. Ring: liver parenchyma (anatomy label ``liver``: vessels, ducts and other lesions
excluded) 1-4 voxels in-plane outside the lesion, on the lesion's slices. Spread: 1.4826 x the median
absolute deviation of the ring (noise plus texture: the clutter a reader must see the lesion against).
``contrast_to_noise`` = |lesion median - ring median| / spread. A lesion with an enhancing rim or nodules
and a centre like the liver scores low although a reader sees its rim: the median is a conservative
measure for those types (HM rim, HH nodules, HA rim).

The detection result (``benchmarks/detection.py accuracy --out FILE``, same dataset) gives each row's
best score; rows are joined by scan and by the lesion's rank among the instance ids present in that phase.
Reported per size stratum and contrast band: lesion-phases, found at any score, found at the 2-false-
positives-per-scan threshold of that result, and of those the ones whose best-scoring hit is a box of
their own (IoU > 0.3; the others are hits through IoM > 0.5 by a box many times the lesion, chance
overlaps for small lesions; a lesion with an own box below a larger box's score counts as not own).

Run (needs the dataset's anatomy maps, i.e. a phantom dataset):
  .venv/bin/python benchmarks/lesion_visibility.py --data data/test_zzh40 \\
      --detection benchmarks/results/detection_zzh40_cswin3d.json [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from _report import emit
from scipy import ndimage

from liaids.codes import PHASES
from liaids.dataset import Dataset
from liaids.phantom.labels import Tissue

BANDS: tuple[tuple[float, float], ...] = ((0.0, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, math.inf))
RING_VOXELS = (1, 4)


def _band(value: float) -> str:
    for lo, hi in BANDS:
        if lo <= value < hi:
            return f"{lo:g}-{hi:g}" if math.isfinite(hi) else f">={lo:g}"
    return "n/a"


def lesion_phase_rows(ds: Dataset, case_id: str) -> list[dict]:
    """One row per lesion present in each phase of a case, in instance-id order (the detection rows')."""
    case = ds.load_case(case_id, with_anatomy=True)
    if case.anatomy is None:
        raise SystemExit(f"{ds.root / case_id}: no anatomy maps (lesion_visibility needs a phantom dataset)")
    types = {les.lesion_id: les.lesion_type for les in case.info.lesions}
    diameters = {les.lesion_id: les.diameter_mm for les in case.info.lesions}
    in_plane = np.zeros((1, 3, 3), bool)
    in_plane[0] = ndimage.generate_binary_structure(2, 1)
    rows = []
    for p in PHASES:
        hu = case.study[p].array.astype(np.float32)
        instances = case.lesions[p].array.astype(np.int32)
        parenchyma = (case.anatomy[p].array == int(Tissue.LIVER)) & (instances == 0)
        for rank, lesion_id in enumerate(sorted(int(i) for i in np.unique(instances) if i > 0)):
            mask = instances == lesion_id
            near = ndimage.binary_dilation(mask, in_plane, iterations=RING_VOXELS[0])
            far = ndimage.binary_dilation(mask, in_plane, iterations=RING_VOXELS[1])
            ring = far & ~near & parenchyma
            row = {
                "scan_id": f"{case_id}/{p}",
                "lesion_index": rank,
                "lesion_id": lesion_id,
                "type": types.get(lesion_id),
                "diameter_mm": diameters.get(lesion_id),
                "phase": p,
                "voxels": int(mask.sum()),
                "ring_voxels": int(ring.sum()),
            }
            if ring.sum() >= 10:
                background = hu[ring]
                centre = float(np.median(background))
                spread = float(1.4826 * np.median(np.abs(background - centre)))
                contrast = float(np.median(hu[mask])) - centre
                row.update(
                    contrast_hu=round(contrast, 1),
                    spread_hu=round(spread, 1),
                    contrast_to_noise=round(abs(contrast) / max(spread, 1e-3), 3),
                )
            rows.append(row)
    return rows


def summarise(rows: list[dict], threshold: float) -> dict:
    """Counts per size stratum and contrast band: lesion-phases, found at any score, found at 2 FP/scan."""
    out: dict = {}
    for stratum, keep in (("<10mm", lambda d: d < 10), (">=10mm", lambda d: d >= 10)):
        table = {}
        for row in rows:
            if row.get("diameter_mm") is None or not keep(row["diameter_mm"]):
                continue
            band = _band(row["contrast_to_noise"]) if "contrast_to_noise" in row else "n/a"
            cell = table.setdefault(
                band, {"lesion_phases": 0, "found_any_score": 0, "found_at_2fp": 0, "own_box_at_2fp": 0}
            )
            cell["lesion_phases"] += 1
            score = row.get("best_score")
            if score is not None and not math.isnan(score):
                cell["found_any_score"] += 1
                cell["found_at_2fp"] += int(score >= threshold)
                cell["own_box_at_2fp"] += int(score >= threshold and row["iou"] > 0.3)
        order = [_band(lo) for lo, _ in BANDS] + ["n/a"]
        out[stratum] = {b: table[b] for b in order if b in table}
    by_phase = {}
    for p in PHASES:
        small = [r for r in rows if r["phase"] == p and (r.get("diameter_mm") or 0) < 10]
        values = [r["contrast_to_noise"] for r in small if "contrast_to_noise" in r]
        by_phase[p] = {
            "small_lesion_phases": len(small),
            "median_contrast_to_noise": round(float(np.median(values)), 3) if values else None,
            "below_1": sum(v < 1 for v in values),
        }
    out["small_by_phase"] = by_phase
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--detection", type=Path, required=True, help="benchmarks/detection.py accuracy output")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    ds = Dataset(a.data)
    detection = json.loads(a.detection.read_text())
    best = {(r["scan_id"], r["lesion_index"]): r for r in detection["lesions"]}
    threshold = float(detection["recall_at_2fp"]["threshold"])
    rows = [row for case_id in ds.case_ids for row in lesion_phase_rows(ds, case_id)]
    for row in rows:
        found = best.get((row["scan_id"], row["lesion_index"]))
        if found is None:
            raise SystemExit(f"{a.detection}: no row for {row['scan_id']} lesion {row['lesion_index']}")
        if abs(found["diameter_mm"] - (row["diameter_mm"] or -1)) > 0.01:
            raise SystemExit(
                f"{a.detection}: {row['scan_id']} lesion {row['lesion_index']} is another lesion"
            )
        row["best_score"], row["iou"] = found["best_score"], found["iou"]
    result = {
        "data": str(a.data),
        "detection": str(a.detection),
        "threshold_at_2fp": threshold,
        "measure": "|median lesion HU - median ring HU| / (1.4826 MAD of the ring); ring: liver parenchyma "
        f"{RING_VOXELS[0]}-{RING_VOXELS[1]} voxels in-plane outside the lesion",
        "summary": summarise(rows, threshold),
        "rows": rows,
    }
    emit(result, a.out, shown={k: v for k, v in result.items() if k != "rows"})


if __name__ == "__main__":
    main()
