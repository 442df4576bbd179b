import numpy as np
import pytest

from privacysf.config import DataConfig
from privacysf.data.prepare import prepare
from privacysf.data.split import split_cases, split_slabs
from privacysf.errors import ConfigError


def test_case_split_is_disjoint_complete_and_seeded():
    ids = [f"p{i}" for i in range(20)]
    a = split_cases(ids, 0.15, 0.2, seed=3)
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(ids)
    assert len(a["test"]) == 4 and len(a["val"]) == 3
    assert a == split_cases(ids, 0.15, 0.2, seed=3)
    assert a != split_cases(ids, 0.15, 0.2, seed=4)


def test_slab_split_leaves_guard_gaps_between_splits():
    (labels,) = split_slabs([np.ones((150, 1), bool)], 0.15, 0.2, seed=0)
    kept = labels[labels >= 0]
    assert set(kept) == {0, 1, 2}
    for i in range(len(labels) - 1):  # neighbouring slices never sit in two different splits
        if labels[i] >= 0 and labels[i + 1] >= 0:
            assert labels[i] == labels[i + 1]
    assert (labels == 2).sum() == pytest.approx(0.2 * 150, abs=6)


def test_single_case_dataset_is_split_by_slab_and_says_so():
    data = prepare(DataConfig(dataset="itk-t1-brain", size=32))
    assert data.split["kind"] == "slab" and "slab" in data.split["note"]
    ranges = {name: set(part.slice_index.tolist()) for name, part in data.splits().items()}
    assert not (ranges["train"] & ranges["test"]) and not (ranges["val"] & ranges["test"])


def test_phantom_split_never_shares_a_case():
    data = prepare(DataConfig(dataset="phantom", size=32, phantom_cases=20))
    train, test = set(data.train.case_ids), set(data.test.case_ids)
    assert train and test and not (train & test)


def test_too_few_units_for_the_fractions():
    with pytest.raises(
        ConfigError, match=r"4 units are too few.*lower data\.val_fraction and data\.test_fraction"
    ):
        split_cases(["a", "b", "c", "d"], 0.45, 0.45, seed=0)
    assert len(split_cases(["a", "b", "c", "d"], 0.2, 0.2, seed=0)["train"]) == 2  # the advice works


def test_slab_split_places_a_short_lesion_in_every_split():
    """A class on 9 slices of 60: the plain draw (6 slabs of 10) cannot reach three splits."""
    presence = np.zeros((60, 2), bool)
    presence[:, 0] = True
    presence[30:39, 1] = True
    for seed in range(5):
        (labels,) = split_slabs([presence], 0.15, 0.2, seed)
        assert {0, 1, 2} <= set(labels[presence[:, 1]].tolist())


@pytest.mark.parametrize(
    ("slices", "splits"),
    [
        (3, {0}),  # three slices: guard gaps leave them to one split at most
        (4, {0, 2}),  # four slices: one guard gap inside leaves two splits at most
    ],
)
def test_slab_split_gives_a_class_too_short_for_three_splits_to_train_then_test(slices, splits):
    presence = np.zeros((60, 2), bool)
    presence[:, 0] = True
    presence[30 : 30 + slices, 1] = True
    for seed in range(5):
        (labels,) = split_slabs([presence], 0.15, 0.2, seed)
        assert set(labels[presence[:, 1]].tolist()) - {-1} == splits


def test_slab_split_keeps_every_split_when_foreground_cannot_reach_it():
    """Slabs of a short volume can vanish in guard gaps; a split without foreground still needs slices."""
    presence = np.zeros((10, 1), bool)
    presence[:2, 0] = True
    for seed in range(10):
        (labels,) = split_slabs([presence], 0.15, 0.2, seed)
        assert {0, 1, 2} <= set(labels.tolist())
