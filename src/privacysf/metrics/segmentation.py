"""Dice, IoU, HD95 and ASSD (mm) per class, on MONAI's metric functions, with one empty-mask rule.

The rule (docs/metrics.md), applied per image (a 2-D slice or a 3-D case volume) and per foreground
class:

- prediction and truth both empty: Dice = IoU = 1 and HD95 = ASSD = 0;
- exactly one empty: Dice = IoU = 0 and HD95 = ASSD = the image diagonal in mm;
- otherwise MONAI's values, with distances in mm from the pixel (voxel) spacing.

MONAI would return NaN (and warn) for distances with an empty side; a silently dropped NaN flatters a
model that misses structures, so the rule replaces it with the worst possible distance instead. The
rule still scores "nothing predicted where nothing is" as perfect, so summaries also give the
foreground-only figures (images whose truth holds the class) and name the classes the truth never holds.
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
    """Per-image, per-foreground-class scores, each an (N, K-1) array.

    ``present`` is True where the image's truth holds the class: the rows a foreground-only figure
    averages over.
    """

    dice: np.ndarray
    iou: np.ndarray
    hd95: np.ndarray
    assd: np.ndarray
    present: np.ndarray

    def get(self, name: str) -> np.ndarray:
        return getattr(self, name)

    @staticmethod
    def concatenate(parts: list[SegmentationScores]) -> SegmentationScores:
        """The rows of several scorings, in order (batches, or one volume per case)."""
        if not parts:
            raise ValueError("no batch was scored")
        fields = (*METRICS, "present")
        return SegmentationScores(*(np.concatenate([p.get(f) for p in parts]) for f in fields))


def segmentation_scores(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    num_classes: int,
    spacing: np.ndarray | None = None,
) -> SegmentationScores:
    """Score label maps ``pred`` and ``truth`` of shape (N, H, W) or (N, D, H, W).

    ``spacing`` is (N, 2) or (N, 3) mm per pixel or voxel along each spatial axis (1 when omitted).
    """
    pred_t = torch.as_tensor(np.asarray(pred), dtype=torch.long)
    truth_t = torch.as_tensor(np.asarray(truth), dtype=torch.long)
    if pred_t.shape != truth_t.shape or pred_t.ndim not in (3, 4):
        raise ValueError(
            f"pred {tuple(pred_t.shape)} and truth {tuple(truth_t.shape)} must be (N, H, W) or (N, D, H, W)"
        )
    n, *shape = truth_t.shape
    spacing = np.ones((n, len(shape))) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (n, len(shape)):
        raise ValueError(f"spacing {spacing.shape} must be (N, {len(shape)}) for {tuple(truth_t.shape)} maps")
    p = one_hot(pred_t[:, None], num_classes)[:, 1:]
    t = one_hot(truth_t[:, None], num_classes)[:, 1:]
    dice = compute_dice(p, t, include_background=True, ignore_empty=False).numpy()
    iou = compute_iou(p, t, include_background=True, ignore_empty=False).numpy()
    spatial_dims = tuple(range(2, p.ndim))
    p_empty = (p.sum(dim=spatial_dims) == 0).numpy()
    t_empty = (t.sum(dim=spatial_dims) == 0).numpy()
    diagonal = np.sqrt(((np.asarray(shape) * spacing) ** 2).sum(axis=1))
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
    return SegmentationScores(dice.astype(float), iou.astype(float), hd95, assd, ~t_empty)


class MeanStd(TypedDict):
    mean: float
    std: float


class ClassScores(TypedDict, total=False):
    """One foreground class: each metric's mean ± std over images, and what the figures stand on."""

    dice: MeanStd
    iou: MeanStd
    hd95: MeanStd
    assd: MeanStd
    n: int
    """Images averaged over; in ``foreground_only``, those whose truth holds the class."""
    absent: bool
    """No image's truth holds the class: its empty-rule figures only measure false alarms."""


class ForegroundOnly(TypedDict, total=False):
    """Figures over the images whose truth holds a class, so empty images scored 1 cannot hide a miss."""

    n_images: int
    """Images whose truth holds at least one foreground class."""
    per_class: dict[str, ClassScores]
    mean: dict[str, MeanStd]
    """Each such image's mean over the classes its truth holds, then mean ± std over those images
    (left out when no image holds any class)."""


class Scored(TypedDict, total=False):
    """What a summary over slices and one over case volumes both hold."""

    per_class: dict[str, ClassScores]
    """Foreground class name -> metric -> mean ± std over images (empty-mask rule)."""
    mean: dict[str, MeanStd]
    """Metric -> mean ± std over images of the per-image foreground-class mean (empty-mask rule)."""
    foreground_only: ForegroundOnly
    absent_classes: list[str]
    """Foreground classes no image's truth holds (flagged ``absent`` in ``per_class``)."""


class CaseScores(TypedDict):
    """One test case's volume: how it was stacked and each class's 3-D scores."""

    n_slices: int
    contiguous: bool
    """False when slices are missing between the case's first and last test slice (stacked anyway)."""
    present: list[str]
    """Classes the case's truth holds."""
    per_class: dict[str, dict[str, float]]


class VolumeSummary(Scored, total=False):
    """3-D figures: each test case's slices stacked into one volume, then mean ± std over cases."""

    n_cases: int
    cases: dict[str, CaseScores]


class Summary(Scored, total=False):
    """What :func:`summarize` returns (and ``metrics.json`` stores under ``test``)."""

    n_images: int
    over_cases: dict[str, Any]
    """``n_cases`` and, per metric, mean ± std over cases of each case's image mean."""
    n_cases: int
    unit: str
    distance_unit: str
    per_case_3d: VolumeSummary


def _mean_std(values: np.ndarray) -> MeanStd:
    return {"mean": float(values.mean()), "std": float(values.std())}


def _class_scores(scores: SegmentationScores, column: int, rows: np.ndarray) -> ClassScores:
    """A class's metrics over the images selected by the boolean ``rows``."""
    pick = {m: _mean_std(scores.get(m)[rows, column]) for m in METRICS}
    return {
        "dice": pick["dice"],
        "iou": pick["iou"],
        "hd95": pick["hd95"],
        "assd": pick["assd"],
        "n": int(rows.sum()),
    }


def score_classes(scores: SegmentationScores, class_names: list[str]) -> Scored:
    """Per class and mean, with the empty-mask rule and foreground-only, and the absent classes.

    A foreground-only per-image mean averages the classes that image's truth holds, so an image with
    one of three classes is judged on that class alone.
    """
    everywhere = np.ones(len(scores.dice), bool)
    per_class: dict[str, ClassScores] = {}
    foreground: dict[str, ClassScores] = {}
    absent: list[str] = []
    for k, name in enumerate(class_names[1:]):
        per_class[name] = _class_scores(scores, k, everywhere)
        if scores.present[:, k].any():
            foreground[name] = _class_scores(scores, k, scores.present[:, k])
        else:
            absent.append(name)
            per_class[name]["absent"] = True
            foreground[name] = {"n": 0, "absent": True}
    holding = scores.present.any(axis=1)
    foreground_only: ForegroundOnly = {"n_images": int(holding.sum()), "per_class": foreground}
    if holding.any():
        weights = scores.present[holding]
        foreground_only["mean"] = {
            m: _mean_std((scores.get(m)[holding] * weights).sum(axis=1) / weights.sum(axis=1))
            for m in METRICS
        }
    return {
        "per_class": per_class,
        "mean": {m: _mean_std(scores.get(m).mean(axis=1)) for m in METRICS},
        "foreground_only": foreground_only,
        "absent_classes": absent,
    }


def summarize(
    scores: SegmentationScores, class_names: list[str], case_ids: list[str] | None = None
) -> Summary:
    """:func:`score_classes` over images, with n.

    With ``case_ids`` (one per image) it also gives ``over_cases``: each case's images averaged first,
    then mean ± std over cases, so a patient with many slices does not outweigh one with few.
    """
    summary: Summary = {"n_images": int(len(scores.dice)), **score_classes(scores, class_names)}
    if case_ids is not None:
        cases, owner = np.unique(np.asarray(case_ids), return_inverse=True)
        summary["over_cases"] = {"n_cases": len(cases)}
        for m in METRICS:
            per_image = scores.get(m).mean(axis=1)
            per_case = np.bincount(owner, weights=per_image) / np.bincount(owner)
            summary["over_cases"][m] = _mean_std(per_case)
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
        return SegmentationScores.concatenate(self._parts)

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


def validation_dice(pred, truth, num_classes: int) -> float:
    """Early stopping's score: each foreground class's Dice over the whole split (overlap and sizes
    summed over its slices), averaged over the classes the split's truth holds.

    The per-slice mean (:func:`mean_dice`) scores a class neither true nor predicted on a slice as 1,
    so on a split of small or rare structures a network that predicts nothing scores well and early
    stopping keeps it (a tumour on a few slices: 0.5 from the first epoch). Summed over the split, a
    class that is there scores 0 until it is found and false alarms anywhere lower it. A split whose
    truth holds no foreground at all falls back to :func:`mean_dice`, which still counts false alarms.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    scores = []
    for k in range(1, num_classes):
        true, predicted = truth == k, pred == k
        if true.any():
            scores.append(2 * np.count_nonzero(true & predicted) / (true.sum() + predicted.sum()))
    return float(np.mean(scores)) if scores else mean_dice(pred, truth, num_classes)
