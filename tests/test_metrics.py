"""The metric definitions of docs/metrics.md against hand-computed answers."""

import numpy as np
import pytest

from privacysf.data.cases import Case
from privacysf.data.prepare import DatasetInfo, PreparedData
from privacysf.data.preprocess import SliceSet, slice_case
from privacysf.metrics import (
    SegmentationMetric,
    case_volume_scores,
    mean_dice,
    segmentation_scores,
    summarize_cases,
    validation_dice,
)
from privacysf.metrics.evaluation import score_test
from privacysf.workflows.fit_report import scores_section


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


def two_case_test_split():
    """Case "a": a 2x2 lesion on slice 0 and a 4x4 one on slice 1, predicted on slice 0 only.
    Case "b": a 2x2 lesion on slice 2 of 6, missed entirely. Class "cyst" is in neither truth.
    Slices are 2 mm apart, pixels 1 mm; rows are shuffled so a case's slices are not in order."""
    truth = {"a": np.zeros((3, 8, 8), int), "b": np.zeros((6, 8, 8), int)}
    truth["a"][0, 2:4, 2:4] = 1
    truth["a"][1, 2:6, 2:6] = 1
    truth["b"][2, 3:5, 3:5] = 1
    pred = {"a": np.zeros((3, 8, 8), int), "b": np.zeros((6, 8, 8), int)}
    pred["a"][0, 2:4, 2:4] = 1
    rng = np.random.default_rng(0)
    parts = [
        slice_case(Case(c, rng.random(t.shape), t, (2.0, 1.0, 1.0)), 0, 8, "minmax", (0, 1), False)
        for c, t in truth.items()
    ]
    order = rng.permutation(9)
    test = SliceSet.concatenate(parts, 8).subset(order)
    info = DatasetInfo("toy", ["background", "lesion", "cyst"], "minmax", True, 0)
    return np.concatenate([pred["a"], pred["b"]])[order], PreparedData(info, test, test, test)


def test_missed_lesion_slice_rule_foreground_only_and_3d():
    pred, data = two_case_test_split()
    summary = score_test(pred, data)
    # Slices: case a scores lesion Dice 1, 0, 1; case b 1, 1, 0, 1, 1, 1 (empty slices count as 1).
    assert summary["per_class"]["lesion"]["dice"]["mean"] == pytest.approx(7 / 9)
    # Only the three slices holding the lesion: 1, 0, 0.
    fg = summary["foreground_only"]
    assert fg["per_class"]["lesion"]["dice"]["mean"] == pytest.approx(1 / 3)
    assert fg["per_class"]["lesion"]["n"] == 3
    assert fg["mean"]["dice"]["mean"] == pytest.approx(1 / 3)  # the absent cyst does not count
    # 3-D: case a overlaps 4 of 20 true voxels with 4 predicted, 2*4/(20+4); case b none.
    volume = summary["per_case_3d"]
    assert volume["n_cases"] == 2
    assert volume["cases"]["a"]["per_class"]["lesion"]["dice"] == pytest.approx(1 / 3)
    assert volume["cases"]["b"]["per_class"]["lesion"]["dice"] == 0.0
    assert volume["per_class"]["lesion"]["dice"]["mean"] == pytest.approx(1 / 6)
    assert volume["per_class"]["lesion"]["dice"]["std"] == pytest.approx(1 / 6)
    assert volume["foreground_only"]["mean"]["dice"]["mean"] == pytest.approx(1 / 6)
    # A missed lesion's distance is the volume's diagonal, through-plane spacing included.
    assert volume["cases"]["b"]["per_class"]["lesion"]["hd95"] == pytest.approx(np.sqrt(12**2 + 8**2 + 8**2))
    assert [volume["cases"][c]["n_slices"] for c in "ab"] == [3, 6]
    assert volume["cases"]["b"]["present"] == ["lesion"]


def test_absent_class_is_flagged_not_scored_silently():
    pred, data = two_case_test_split()
    summary = score_test(pred, data)
    for scored in (summary, summary["per_case_3d"]):
        assert scored["absent_classes"] == ["cyst"]
        assert scored["per_class"]["cyst"]["absent"] is True
        assert "absent" not in scored["per_class"]["lesion"]
        assert scored["foreground_only"]["per_class"]["cyst"] == {"n": 0, "absent": True}


def test_case_volume_stacks_present_slices_in_order_with_mm_through_plane():
    # One case, slices 0, 1, 5, 6 present (2, 3, 4 dropped), rows out of order. Truth: a 2x2 block on
    # slices 0 and 1; prediction: the same block on slices 5 and 6. Stacked in slice order the
    # volume is 0, 1, 5, 6: every voxel is 1 or 2 slices from the other side (the gap is closed).
    slice_index = np.array([6, 0, 5, 1])
    truth = np.zeros((4, 6, 6), int)
    truth[np.isin(slice_index, [0, 1]), 2:4, 2:4] = 1
    pred = np.zeros((4, 6, 6), int)
    pred[np.isin(slice_index, [5, 6]), 2:4, 2:4] = 1
    spacing = np.full((4, 2), 0.5)
    rows, scores = case_volume_scores(pred, truth, 2, ["c"] * 4, slice_index, spacing, np.full(4, 3.0))
    assert scores.hd95[0, 0] == pytest.approx(2 * 3.0)  # 2 slices of 3 mm
    assert scores.assd[0, 0] == pytest.approx(1.5 * 3.0)  # half the voxels 1 slice away, half 2
    assert scores.dice[0, 0] == 0.0
    summary = summarize_cases(rows, slice_index, scores, ["background", "x"])
    assert summary["cases"]["c"]["contiguous"] is False
    assert summary["cases"]["c"]["n_slices"] == 4


def test_fit_report_shows_3d_and_foreground_only_beside_slice_dice_and_names_absent_classes():
    pred, data = two_case_test_split()
    metrics = {
        "privacysf": {"test": score_test(pred, data)},
        "raw_unet": {"test": score_test(data.test.masks, data)},
    }
    text = scores_section(metrics).text()
    privacysf, unet = (line for line in text.splitlines() if line.startswith(("| Privacy-SF", "| raw U-Net")))
    # slice Dice (empty rule), foreground only, then 3-D per case: a missed lesion shows in the last two
    assert "| 0.889 ± " in privacysf and "| 0.333 ± 0.471 |" in privacysf and "| 0.167 ± 0.167 |" in privacysf
    assert privacysf.count("1.000 ± 0.000") == 0 and unet.count("1.000 ± 0.000") == 3
    assert "Absent from the test split: cyst." in text


def test_validation_dice_gives_predicting_nothing_zero_where_the_per_slice_mean_gives_it_most():
    """A lesion on 2 of 10 slices: predicting nothing scores 0.8 slice by slice (8 empty slices
    scored 1), 0 summed over the split; finding it with one false alarm elsewhere scores high."""
    truth = np.zeros((10, 8, 8), int)
    truth[:2, 2:5, 2:5] = 1
    nothing = np.zeros_like(truth)
    assert mean_dice(nothing, truth, 2) == pytest.approx(0.8)
    assert validation_dice(nothing, truth, 2) == 0.0
    found = truth.copy()
    found[7, 0, 0] = 1  # one false-alarm pixel on an empty slice
    assert validation_dice(found, truth, 2) == pytest.approx(36 / 37)
    assert validation_dice(found, truth, 2) > validation_dice(nothing, truth, 2)
    # a class absent from the split is left out; a split with no foreground counts false alarms
    assert validation_dice(found, truth, 3) == pytest.approx(36 / 37)
    assert validation_dice(found[5:], truth[5:], 2) == pytest.approx(0.8)
