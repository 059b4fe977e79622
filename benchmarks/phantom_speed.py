"""Phantom speed: seconds to synthesise one triple-phase 512 x 512 x ~60-slice case, and to write it.

Target (issue 2): at most 5 s per case on the 2-core development machine (rendering, in memory).

Run: .venv/bin/python benchmarks/phantom_speed.py --cases 5
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from _report import emit

from liaids.phantom.cohort import write_phantom_case
from liaids.phantom.profiles import load_profile
from liaids.phantom.synthesize import synthesize_case


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=5)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--write", action="store_true", help="also time writing NIfTI (gzip level 1)")
    a = ap.parse_args()
    # 5 mm slices with generous margins: about 60 slices per phase, as the target states.
    prof = replace(load_profile("internal"), slice_thickness_mm={"5.0": 1.0}, scan_margin_mm=(45.0, 60.0))
    synthesize_case(prof, a.seed, 999)  # warm-up: imports, caches
    render, write, slices = [], [], []
    for i in range(a.cases):
        t0 = time.perf_counter()
        case = synthesize_case(prof, a.seed, i)
        render.append(time.perf_counter() - t0)
        slices.append([case.study[p].shape[0] for p in ("NC", "ART", "PV")])
        if a.write:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                write_phantom_case(case, Path(tmp) / case.case_id)
                write.append(time.perf_counter() - t0)
    out = {
        "cases": a.cases,
        "slices_per_phase": slices,
        "render_s_median": round(statistics.median(render), 2),
        "render_s_max": round(max(render), 2),
        "write_nifti_s_median": round(statistics.median(write), 2) if write else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    emit(out, None)


if __name__ == "__main__":
    main()
