"""3-D per-case scores: each case's test slices stacked back into a volume, then mean ± std over cases.

A tumour is judged per patient, not per slice: one volume Dice per case weighs a lesion by its
voxels, and its HD95 measures surfaces through the plane too (the slicing axis's spacing in mm).
The volume is the stack of the slices the test split holds for the case, in slice order; slices
missing between them (dropped as empty, or in another split) are not filled in, so neighbours across
a gap count as adjacent (docs/metrics.md).
"""

from __future__ import annotations

import numpy as np

from privacysf.metrics.segmentation import (
    METRICS,
    CaseScores,
    SegmentationScores,
    VolumeSummary,
    score_classes,
    segmentation_scores,
)


def case_rows(case_ids: list[str], slice_index: np.ndarray) -> dict[str, np.ndarray]:
    """Each case's row indices, in slice order (cases in order of first appearance)."""
    ids = np.asarray(case_ids)
    rows = {}
    for case in dict.fromkeys(case_ids):
        own = np.flatnonzero(ids == case)
        rows[case] = own[np.argsort(slice_index[own], kind="stable")]
    return rows


def case_volume_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    num_classes: int,
    case_ids: list[str],
    slice_index: np.ndarray,
    spacing: np.ndarray,
    slice_spacing: np.ndarray,
) -> tuple[dict[str, np.ndarray], SegmentationScores]:
    """Score (N, H, W) slice label maps as one (D, H, W) volume per case: one score row per case.

    ``spacing`` (N, 2) is mm per pixel in the plane, ``slice_spacing`` (N,) mm between slices; the
    voxel spacing of a case is (slice spacing, row, column), which must be the same on all its slices.
    """
    rows = case_rows(case_ids, slice_index)
    parts = []
    for case, own in rows.items():
        voxel = np.column_stack([slice_spacing[own], spacing[own]])
        if not np.allclose(voxel, voxel[0]):
            raise ValueError(f"case {case!r}: its slices do not share one voxel spacing")
        parts.append(segmentation_scores(pred[own][None], truth[own][None], num_classes, voxel[:1]))
    return rows, SegmentationScores.concatenate(parts)


def summarize_cases(
    rows: dict[str, np.ndarray], slice_index: np.ndarray, scores: SegmentationScores, class_names: list[str]
) -> VolumeSummary:
    """Mean ± std over cases (:func:`privacysf.metrics.segmentation.score_classes`) and each case's scores."""
    foreground = class_names[1:]
    cases: dict[str, CaseScores] = {}
    for i, (case, own) in enumerate(rows.items()):
        index = slice_index[own]
        cases[case] = {
            "n_slices": len(own),
            "contiguous": bool(index[-1] - index[0] + 1 == len(own)),
            "present": [name for k, name in enumerate(foreground) if scores.present[i, k]],
            "per_class": {
                name: {m: float(scores.get(m)[i, k]) for m in METRICS} for k, name in enumerate(foreground)
            },
        }
    return {"n_cases": len(rows), **score_classes(scores, class_names), "cases": cases}
