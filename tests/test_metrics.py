"""The metric definitions of docs/metrics.md against hand-computed answers."""

import numpy as np
import pytest

from privacysf.metrics import SegmentationMetric, segmentation_scores


def squares(shift: int):
    truth = np.zeros((1, 20, 20), int)
    pred = np.zeros((1, 20, 20), int)
    truth[0, 5:10, 5:10] = 1
    pred[0, 5 + shift : 10 + shift, 5:10] = 1
    return pred, truth


def test_shifted_squares_known_distances():
    # 5x5 squares, the prediction two rows lower: overlap 3x5 = 15 pixels.
    pred, truth = squares(2)
    s = segmentation_scores(pred, truth, 2, np.array([[1.0, 1.0]]))
    assert s.dice[0, 0] == pytest.approx(2 * 15 / 50)
    assert s.iou[0, 0] == pytest.approx(15 / 35)
    assert s.hd95[0, 0] == pytest.approx(2.0)  # the top edge is 2 rows from the other border
    assert s.assd[0, 0] == pytest.approx(1.0)  # 16 border pixels each side, summed distance 16
    # 2 mm per row: distances along rows double, those along columns do not. Per side, border
    # distances sum to 5 x 4 (top row) + (0+1+2+1+0) (bottom row) + 2 x (2+0+0) (sides) = 28 over 16.
    s2 = segmentation_scores(pred, truth, 2, np.array([[2.0, 1.0]]))
    assert s2.hd95[0, 0] == pytest.approx(4.0)
    assert s2.assd[0, 0] == pytest.approx(28 / 16)


def test_identical_masks_are_perfect():
    _, truth = squares(0)
    s = segmentation_scores(truth, truth, 2)
    assert (s.dice[0, 0], s.iou[0, 0], s.hd95[0, 0], s.assd[0, 0]) == (1.0, 1.0, 0.0, 0.0)


def test_empty_mask_rule():
    pred = np.zeros((3, 10, 20), int)
    truth = np.zeros((3, 10, 20), int)
    truth[1, 2:4, 2:4] = 1  # only truth has the structure
    pred[2, 2:4, 2:4] = 1  # only the prediction has it
    spacing = np.array([[1.0, 1.0], [0.5, 2.0], [1.0, 1.0]])
    s = segmentation_scores(pred, truth, 2, spacing)
    np.testing.assert_allclose(s.dice[:, 0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(s.iou[:, 0], [1.0, 0.0, 0.0])
    diag = [0.0, np.hypot(10 * 0.5, 20 * 2.0), np.hypot(10, 20)]
    np.testing.assert_allclose(s.hd95[:, 0], diag)
    np.testing.assert_allclose(s.assd[:, 0], diag)
    assert not np.isnan(s.hd95).any()


def test_per_class_and_cumulative_summary():
    truth = np.zeros((2, 12, 12), int)
    truth[:, 2:6, 2:6] = 1
    truth[:, 7:10, 7:10] = 2
    pred = truth.copy()
    pred[1, 7:10, 7:10] = 0  # second image misses class 2 entirely
    metric = SegmentationMetric(3, ["background", "a", "b"])
    metric.update(pred[:1], truth[:1])
    metric.update(pred[1:], truth[1:])
    summary = metric.aggregate()
    assert summary["n_images"] == 2
    assert summary["per_class"]["a"]["dice"]["mean"] == 1.0
    assert summary["per_class"]["b"]["dice"]["mean"] == 0.5
    assert summary["mean"]["dice"]["mean"] == pytest.approx(0.75)
    assert summary["per_class"]["b"]["hd95"]["mean"] == pytest.approx(np.hypot(12, 12) / 2)


def test_over_cases_weighs_each_case_once():
    truth = np.zeros((3, 10, 10), int)
    truth[:, 2:6, 2:6] = 1
    pred = truth.copy()
    pred[2] = 0  # case "b" (one slice) is missed; case "a" (two slices) is perfect
    from privacysf.metrics import summarize

    summary = summarize(segmentation_scores(pred, truth, 2), ["background", "x"], ["a", "a", "b"])
    assert summary["mean"]["dice"]["mean"] == pytest.approx(2 / 3)  # over slices
    assert summary["over_cases"]["n_cases"] == 2
    assert summary["over_cases"]["dice"]["mean"] == pytest.approx(0.5)  # over cases
    assert summary["over_cases"]["dice"]["std"] == pytest.approx(0.5)
