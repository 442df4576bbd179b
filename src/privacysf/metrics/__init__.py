"""Evaluation metrics: one definition of Dice, IoU, HD95 and ASSD for the whole project."""

from privacysf.metrics.segmentation import (
    METRICS,
    SegmentationMetric,
    SegmentationScores,
    mean_dice,
    per_slice_dice,
    segmentation_scores,
    summarize,
)

__all__ = [
    "METRICS",
    "SegmentationMetric",
    "SegmentationScores",
    "mean_dice",
    "per_slice_dice",
    "segmentation_scores",
    "summarize",
]
