"""Phantom realism figures on N cases: tissue and lesion attenuation per phase, lesion sizes, breathing.

Run: .venv/bin/python benchmarks/phantom_realism.py --cases 100 --profile internal \
         --out benchmarks/results/phantom_realism.json
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from _report import emit

from liaids.codes import LESION_TYPES, PHASES
from liaids.phantom.measure import lesion_features, lesion_roi_means, liver_centroid_shifts, tissue_means
from liaids.phantom.profiles import load_profile
from liaids.phantom.synthesize import synthesize_case


def _one(args: tuple[str, int, int]) -> dict:
    profile, seed, index = args
    case = synthesize_case(load_profile(profile), seed, index)
    shifts = case.phantom["breathing_shift_mm"]
    true_shift = {
        f"{a}-{b}": float(np.linalg.norm(np.subtract(shifts[a], shifts[b])))
        for a, b in (("NC", "ART"), ("NC", "PV"), ("ART", "PV"))
    }
    return {
        "tissues": tissue_means(case),
        "lesions": lesion_features(case),
        "roi": lesion_roi_means(case),
        "measured_shift": liver_centroid_shifts(case),
        "true_shift": true_shift,
        "thickness": case.acquisition["slice_thickness_mm"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--profile", default="internal")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    with Pool(a.workers) as pool:
        results = pool.map(_one, [(a.profile, a.seed, i) for i in range(a.cases)])
    summary: dict = {
        "cases": a.cases,
        "profile": a.profile,
        "seed": a.seed,
        "tissues": {},
        "lesion_types": {},
    }
    for name in results[0]["tissues"]:
        summary["tissues"][name] = {
            p: round(float(np.nanmean([r["tissues"][name][p] for r in results])), 1) for p in PHASES
        }
    lesions = [row for r in results for row in r["lesions"]]
    by_type = defaultdict(list)
    for row in lesions:
        by_type[row["type"]].append(row)
    roi_by_type = defaultdict(list)
    for r in results:
        for row in r["roi"]:
            roi_by_type[row["type"]].append(row)

    def mean(rows: list[dict], key: str) -> float | None:
        vals = [r[key] for r in rows if np.isfinite(r[key])]
        return round(float(np.mean(vals)), 1) if vals else None

    for t in LESION_TYPES:
        rows, roi = by_type.get(t, []), roi_by_type.get(t, [])
        summary["lesion_types"][t] = {
            "count": len(rows),
            "median_diameter_mm": round(float(np.median([r["diameter_mm"] for r in rows])), 1)
            if rows
            else None,
            "mask_mean_hu": {p: mean(rows, f"mean_{p}") for p in PHASES},
            "roi_count_10mm_plus": len(roi),
            "roi_mean_hu": {p: mean(roi, p) for p in PHASES},
        }
        if any(f"{p}_nodule" in r for r in roi for p in PHASES):
            summary["lesion_types"][t]["roi_nodule_mean_hu"] = {
                p: mean([r for r in roi if f"{p}_nodule" in r], f"{p}_nodule") for p in PHASES
            }
    diam = np.array([r["diameter_mm"] for r in lesions])
    summary["lesions_total"] = len(lesions)
    summary["share_under_1cm"] = round(float((diam < 10).mean()), 3)
    summary["share_under_5mm"] = round(float((diam < 5).mean()), 3)
    summary["share_over_10cm"] = round(float((diam > 100).mean()), 3)
    summary["diameter_range_mm"] = [round(float(diam.min()), 1), round(float(diam.max()), 1)]
    summary["patients_without_lesion"] = sum(1 for r in results if not r["lesions"])
    for key in ("measured_shift", "true_shift"):
        summary[f"mean_liver_{key}_mm"] = {
            pair: round(float(np.mean([r[key][pair] for r in results])), 2) for pair in results[0][key]
        }
    emit(summary, a.out)


if __name__ == "__main__":
    main()
