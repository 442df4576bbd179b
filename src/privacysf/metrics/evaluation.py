"""Scoring a method's test predictions the same way for every method, and saving its overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privacysf.common.figures import overlay_grid, pick_rows
from privacysf.data.prepare import PreparedData
from privacysf.metrics.segmentation import Summary, segmentation_scores, summarize

OVERLAY_ROWS = 6


def score_test(pred: np.ndarray, data: PreparedData) -> Summary:
    """Dice/IoU/HD95/ASSD of test predictions: per class and mean, mean ± std over test slices."""
    test = data.test
    scores = segmentation_scores(pred, test.masks, data.info.num_classes, test.spacing)
    summary = summarize(scores, data.info.class_names, test.case_ids)
    summary["n_cases"] = len(set(test.case_ids))
    summary["unit"] = "2-D slice"
    summary["distance_unit"] = "mm" if data.info.spacing_known else "pixel"
    return summary


def save_test_overlays(path: Path, data: PreparedData, predictions: dict[str, np.ndarray]) -> None:
    """image | truth | each method's prediction, on evenly spread labelled test slices."""
    rows = pick_rows(data.test.masks, OVERLAY_ROWS)
    columns = {"truth": data.test.masks[rows], **{k: v[rows] for k, v in predictions.items()}}
    overlay_grid(
        path,
        data.test.images[rows, 0],
        columns,
        data.info.num_classes,
        data.info.display_rotations,
        [f"{data.test.case_ids[r]}:{data.test.slice_index[r]}" for r in rows],
    )


def headline(summary: dict) -> str:
    """One line for the terminal: mean Dice ± std, HD95, ASSD and n."""
    m = summary["mean"]
    unit = summary.get("distance_unit", "mm")
    return (
        f"Dice {m['dice']['mean']:.3f} ± {m['dice']['std']:.3f}  IoU {m['iou']['mean']:.3f}  "
        f"HD95 {m['hd95']['mean']:.2f} {unit}  ASSD {m['assd']['mean']:.2f} {unit}  "
        f"(n={summary['n_images']} slices, {summary['n_cases']} case(s))"
    )
