"""Evaluation metrics: one definition of Dice, IoU, HD95 and ASSD for the whole project, per 2-D
slice and per 3-D case volume."""

from privacysf.metrics.segmentation import (
    METRICS,
    SegmentationMetric,
    SegmentationScores,
    mean_dice,
    per_slice_dice,
    score_classes,
    segmentation_scores,
    summarize,
    validation_dice,
)
from privacysf.metrics.volumes import case_volume_scores, summarize_cases

__all__ = [
    "METRICS",
    "SegmentationMetric",
    "SegmentationScores",
    "case_volume_scores",
    "mean_dice",
    "validation_dice",
    "per_slice_dice",
    "score_classes",
    "segmentation_scores",
    "summarize",
    "summarize_cases",
]
