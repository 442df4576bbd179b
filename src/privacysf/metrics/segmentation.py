"""Dice, IoU, HD95 and ASSD (mm) per class, on MONAI's metric functions, with one empty-mask rule.

The rule (docs/metrics.md), applied per image and per foreground class:

- prediction and truth both empty: Dice = IoU = 1 and HD95 = ASSD = 0;
- exactly one empty: Dice = IoU = 0 and HD95 = ASSD = the image diagonal in mm;
- otherwise MONAI's values, with distances in mm from the pixel spacing.

MONAI would return NaN (and warn) for distances with an empty side; a silently dropped NaN flatters a
model that misses structures, so the rule replaces it with the worst possible distance instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
)
from monai.networks.utils import one_hot

METRICS = ("dice", "iou", "hd95", "assd")


@dataclass
class SegmentationScores:
    """Per-image, per-foreground-class scores, each an (N, K-1) array."""

    dice: np.ndarray
    iou: np.ndarray
    hd95: np.ndarray
    assd: np.ndarray

    def get(self, name: str) -> np.ndarray:
        return getattr(self, name)


def segmentation_scores(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    num_classes: int,
    spacing: np.ndarray | None = None,
) -> SegmentationScores:
    """Score label maps ``pred`` and ``truth`` of shape (N, H, W); ``spacing`` is (N, 2) mm/pixel."""
    pred_t = torch.as_tensor(np.asarray(pred), dtype=torch.long)
    truth_t = torch.as_tensor(np.asarray(truth), dtype=torch.long)
    if pred_t.shape != truth_t.shape or pred_t.ndim != 3:
        raise ValueError(f"pred {tuple(pred_t.shape)} and truth {tuple(truth_t.shape)} must be (N, H, W)")
    n, height, width = truth_t.shape
    spacing = np.ones((n, 2)) if spacing is None else np.asarray(spacing, dtype=np.float64)
    p = one_hot(pred_t[:, None], num_classes)[:, 1:]
    t = one_hot(truth_t[:, None], num_classes)[:, 1:]
    dice = compute_dice(p, t, include_background=True, ignore_empty=False).numpy()
    iou = compute_iou(p, t, include_background=True, ignore_empty=False).numpy()
    p_empty = (p.sum(dim=(2, 3)) == 0).numpy()
    t_empty = (t.sum(dim=(2, 3)) == 0).numpy()
    diagonal = np.sqrt((height * spacing[:, 0]) ** 2 + (width * spacing[:, 1]) ** 2)
    hd95 = np.where(p_empty & t_empty, 0.0, diagonal[:, None] * np.ones_like(dice))
    assd = hd95.copy()
    both = np.argwhere(~p_empty & ~t_empty)
    if len(both):
        rows, cols = both[:, 0], both[:, 1]
        pairs_p = p[rows, cols][:, None]
        pairs_t = t[rows, cols][:, None]
        pair_spacing = [tuple(spacing[r]) for r in rows]
        with warnings.catch_warnings():
            # MONAI 1.5-1.6 passes its own deprecated ``always_return_as_numpy`` internally.
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
            hd95[rows, cols] = compute_hausdorff_distance(
                pairs_p, pairs_t, include_background=True, percentile=95, spacing=pair_spacing
            )[:, 0].numpy()
            assd[rows, cols] = compute_average_surface_distance(
                pairs_p, pairs_t, include_background=True, symmetric=True, spacing=pair_spacing
            )[:, 0].numpy()
    return SegmentationScores(dice.astype(float), iou.astype(float), hd95, assd)


class MeanStd(TypedDict):
    mean: float
    std: float


class Summary(TypedDict, total=False):
    """What :func:`summarize` returns (and ``metrics.json`` stores under ``test``)."""

    n_images: int
    per_class: dict[str, dict[str, MeanStd]]
    """Foreground class name -> metric -> mean ± std over images."""
    mean: dict[str, MeanStd]
    """Metric -> mean ± std over images of the per-image foreground-class mean."""
    over_cases: dict[str, Any]
    """``n_cases`` and, per metric, mean ± std over cases of each case's image mean."""
    n_cases: int
    unit: str
    distance_unit: str


def summarize(
    scores: SegmentationScores, class_names: list[str], case_ids: list[str] | None = None
) -> Summary:
    """Mean ± std over images per foreground class, and of the per-image class mean, with n.

    With ``case_ids`` (one per image) it also gives ``over_cases``: each case's images averaged first,
    then mean ± std over cases, so a patient with many slices does not outweigh one with few.
    """
    summary: Summary = {"n_images": int(len(scores.dice)), "per_class": {}, "mean": {}}
    foreground = class_names[1:]
    for k, name in enumerate(foreground):
        summary["per_class"][name] = {
            m: {"mean": float(scores.get(m)[:, k].mean()), "std": float(scores.get(m)[:, k].std())}
            for m in METRICS
        }
    if case_ids is not None:
        cases, owner = np.unique(np.asarray(case_ids), return_inverse=True)
        summary["over_cases"] = {"n_cases": len(cases)}
    for m in METRICS:
        per_image = scores.get(m).mean(axis=1)
        summary["mean"][m] = {"mean": float(per_image.mean()), "std": float(per_image.std())}
        if case_ids is not None:
            per_case = np.bincount(owner, weights=per_image) / np.bincount(owner)
            summary["over_cases"][m] = {"mean": float(per_case.mean()), "std": float(per_case.std())}
    return summary


class SegmentationMetric:
    """Accumulates scores batch by batch (the thin cumulative wrapper over the functional core)."""

    def __init__(self, num_classes: int, class_names: list[str] | None = None) -> None:
        self.num_classes = num_classes
        self.class_names = class_names or [f"class-{k}" for k in range(num_classes)]
        self._parts: list[SegmentationScores] = []

    def update(self, pred, truth, spacing=None) -> SegmentationScores:
        scores = segmentation_scores(pred, truth, self.num_classes, spacing)
        self._parts.append(scores)
        return scores

    def scores(self) -> SegmentationScores:
        if not self._parts:
            raise ValueError("no batch was scored")
        return SegmentationScores(*(np.concatenate([p.get(m) for p in self._parts]) for m in METRICS))

    def aggregate(self) -> Summary:
        return summarize(self.scores(), self.class_names)

    def reset(self) -> None:
        self._parts.clear()


def per_slice_dice(pred, truth, num_classes: int) -> np.ndarray:
    """Mean foreground Dice of each slice, with the empty-mask rule: the cheap score for validation."""
    p = one_hot(torch.as_tensor(np.asarray(pred), dtype=torch.long)[:, None], num_classes)[:, 1:]
    t = one_hot(torch.as_tensor(np.asarray(truth), dtype=torch.long)[:, None], num_classes)[:, 1:]
    return compute_dice(p, t, include_background=True, ignore_empty=False).mean(dim=1).numpy()


def mean_dice(pred, truth, num_classes: int) -> float:
    """Mean over slices of :func:`per_slice_dice`."""
    return float(per_slice_dice(pred, truth, num_classes).mean())
