"""Where the detector loses small lesions: region proposals, the box head's score, or the final boxes.

Per lesion cross-section (one true lesion on one detection-grid slice, ground-truth liver crop, the
detector without its candidate filter), three questions, all with the hit rule IoU > 0.3 of a box with
the lesion's 2D box:
- proposed: is any of the region proposal network's proposals for that slice such a box?
- recognised: does the box head give any such proposal a lesion probability above 0.5?
- detected: is any final 2D detection of that slice such a box (its score is reported)?
Rows are grouped by the longer side of the lesion's 2D box in grid pixels (1 mm on the ``small`` grid).
If lesions are proposed but not recognised, the box head (or the features it reads) is the limit;
if they are not even proposed, the proposals are. ``--proposals N`` keeps N proposals per slice instead
of the model's own number (``rpn_post_nms_test``; pre-NMS 1.5 N), to see whether more proposals would
reach the small lesions.

Run:
  .venv/bin/python benchmarks/proposal_recall.py --data data/det_val24 [--weights DIR] [--proposals N] \\
      [--max-cases N] [--out FILE.json]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _report import emit, machine_info
from torchvision.ops import box_iou

from liaids.codes import PHASES
from liaids.dataset import Dataset
from liaids.detection.predictor import LesionDetector
from liaids.detection.preprocessing import slab_indices, slice_boxes, to_detection_grid
from liaids.networks.lesion_detector import build_detector

SIDE_BANDS_PX: tuple[tuple[float, float], ...] = ((1, 3), (3, 5), (5, 8), (8, 12), (12, 10_000))
HIT_IOU = 0.3


def load_network(folder: Path | None, proposals: int | None) -> tuple[LesionDetector, torch.nn.Module]:
    """The detector (no candidate filter) and its network in eval mode, optionally rebuilt to keep
    ``proposals`` proposals per slice (pre-NMS 1.5 x) with the same weights."""
    detector = LesionDetector.load(folder, candidate_filter=False)
    if not proposals:
        return detector, detector.network
    cfg = replace(detector.config, rpn_post_nms_test=proposals, rpn_pre_nms_test=int(1.5 * proposals))
    network = build_detector(cfg)
    network.load_state_dict(detector.network.state_dict())
    return detector, network.eval()


@torch.no_grad()
def slice_rows(network: torch.nn.Module, slab: torch.Tensor, truth: dict[int, np.ndarray]) -> list[dict]:
    """One row per true lesion box of a slice: best proposal IoU, box-head and final detection scores."""
    images, _ = network.transform([slab])
    features = network.backbone(images.tensors)
    proposals = network.rpn(images, features)[0][0]
    pooled = network.roi_heads.box_roi_pool(features, [proposals], images.image_sizes)
    logits, _ = network.roi_heads.box_predictor(network.roi_heads.box_head(pooled))
    head_score = torch.softmax(logits, dim=-1)[:, 1]
    final = network.roi_heads(features, [proposals], images.image_sizes)[0][0]
    rows = []
    for lesion_id, box in truth.items():
        gt = torch.as_tensor(box, dtype=torch.float32)[None]
        iou_p = box_iou(gt, proposals)[0] if len(proposals) else torch.zeros(0)
        iou_d = box_iou(gt, final["boxes"])[0] if len(final["boxes"]) else torch.zeros(0)
        hits_p, hits_d = iou_p > HIT_IOU, iou_d > HIT_IOU
        rows.append(
            {
                "lesion": lesion_id,
                "side_px": float(max(box[2] - box[0], box[3] - box[1])),
                "best_proposal_iou": round(float(iou_p.max()), 3) if len(iou_p) else 0.0,
                "first_hit_rank": int(hits_p.nonzero()[0, 0]) if hits_p.any() else None,
                "head_score": round(float(head_score[hits_p].max()), 4) if hits_p.any() else None,
                "detection_score": round(float(final["scores"][hits_d].max()), 4) if hits_d.any() else None,
            }
        )
    return rows


def summarise(rows: list[dict]) -> list[dict[str, Any]]:
    out = []
    for lo, hi in SIDE_BANDS_PX:
        band = [r for r in rows if lo <= r["side_px"] < hi]
        if not band:
            continue
        proposed = [r for r in band if r["head_score"] is not None]
        ranks = [r["first_hit_rank"] for r in proposed]
        out.append(
            {
                "side_px": [lo, hi],
                "cross_sections": len(band),
                "proposed": round(len(proposed) / len(band), 3),
                "median_rank_of_first_hit": float(np.median(ranks)) if ranks else None,
                "recognised": round(sum(r["head_score"] > 0.5 for r in proposed) / len(band), 3),
                "detected": round(sum(r["detection_score"] is not None for r in band) / len(band), 3),
            }
        )
    return out


def run(data: Path, weights: Path | None, proposals: int | None, max_cases: int | None) -> dict[str, Any]:
    detector, network = load_network(weights, proposals)
    ds = Dataset(data)
    rows = []
    for case_id in ds.case_ids[:max_cases]:
        case = ds.load_case(case_id)
        for phase in PHASES:
            image = case.study[phase]
            canonical = image.to_canonical()
            liver = image.with_array(case.liver[phase].array > 0).to_canonical().array
            lesions = image.with_array(case.lesions[phase].array.astype(np.int16)).to_canonical().array
            grid, _, labels = to_detection_grid(canonical, detector.plan.inference_grids[0], liver, lesions)
            assert labels is not None
            for k in range(grid.shape[0]):
                truth = slice_boxes(labels[k], min_pixels=1)
                if not truth:
                    continue
                slab = grid[slab_indices(k, grid.shape[0], detector.config.context)]
                for row in slice_rows(network, torch.from_numpy(slab).float() / 255.0, truth):
                    rows.append({"case": case_id, "phase": phase, "slice": k, **row})
    return {
        "data": str(data),
        "detector": detector.source,
        "proposals_per_slice": proposals or detector.config.rpn_post_nms_test,
        "hit_rule": f"IoU > {HIT_IOU} with the lesion's 2D box",
        "machine": machine_info(),
        "by_side": summarise(rows),
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--proposals", type=int, default=None)
    ap.add_argument("--max-cases", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    result = run(a.data, a.weights, a.proposals, a.max_cases)
    emit(result, a.out, shown={k: v for k, v in result.items() if k != "rows"})


if __name__ == "__main__":
    main()
