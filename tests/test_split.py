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
    labels = split_slabs(np.arange(150), 0.15, 0.2, seed=0)
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
    with pytest.raises(ConfigError, match="2 units are too few"):
        split_cases(["a", "b"], 0.3, 0.3, seed=0)
