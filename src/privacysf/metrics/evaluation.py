"""Scoring a method's test predictions the same way for every method, and saving its overlays."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from privacysf.common.figures import overlay_grid, pick_rows
from privacysf.data.prepare import PreparedData
from privacysf.metrics.segmentation import MeanStd, Summary, segmentation_scores, summarize
from privacysf.metrics.volumes import case_volume_scores, summarize_cases

OVERLAY_ROWS = 6


def score_test(pred: np.ndarray, data: PreparedData) -> Summary:
    """Dice/IoU/HD95/ASSD of test predictions: per class and mean, mean ± std over test slices, and
    ``per_case_3d``, the same over test cases, each case's slices scored as one volume."""
    test, num_classes, names = data.test, data.info.num_classes, data.info.class_names
    slices = segmentation_scores(pred, test.masks, num_classes, test.spacing)
    summary = summarize(slices, names, test.case_ids)
    summary["n_cases"] = len(set(test.case_ids))
    summary["unit"] = "2-D slice"
    summary["distance_unit"] = "mm" if data.info.spacing_known else "pixel"
    rows, volumes = case_volume_scores(
        pred, test.masks, num_classes, test.case_ids, test.slice_index, test.spacing, test.slice_spacing
    )
    summary["per_case_3d"] = summarize_cases(rows, test.slice_index, volumes, names)
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


def dice_3d(summary: Mapping | None) -> MeanStd | None:
    """Mean ± std over test cases of the 3-D per-case foreground-only Dice, or None where a summary
    (or a run from before 3-D scores) has none."""
    mean = (summary or {}).get("per_case_3d", {}).get("foreground_only", {}).get("mean")
    return mean["dice"] if mean else None


def headline(summary: dict) -> str:
    """One line for the terminal: mean slice Dice ± std, HD95, ASSD and n, then the 3-D case Dice."""
    m = summary["mean"]
    unit = summary.get("distance_unit", "mm")
    line = (
        f"Dice {m['dice']['mean']:.3f} ± {m['dice']['std']:.3f}  IoU {m['iou']['mean']:.3f}  "
        f"HD95 {m['hd95']['mean']:.2f} {unit}  ASSD {m['assd']['mean']:.2f} {unit}  "
        f"(n={summary['n_images']} slices, {summary['n_cases']} case(s))"
    )
    volume = dice_3d(summary)
    if volume:
        line += f"; 3-D per-case Dice {volume['mean']:.3f} ± {volume['std']:.3f}"
    return line
