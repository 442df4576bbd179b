"""Datasets of one to three cases with a rare small lesion, in nnU-Net layout, through ``prepare``."""

import json
import warnings

import numpy as np
import pytest
from conftest import write_nifti

from privacysf.config import DataConfig
from privacysf.data.prepare import prepare
from privacysf.errors import DataError, DataWarning

LESION = 2
SHAPE = (32, 32, 48)


def write_nnunet(root, lesion_slices: dict[int, range], n_cases: int, organ=range(8, 40), shape=SHAPE):
    """``n_cases`` cases with an organ (label 1) on ``organ`` slices and a 4x4-pixel lesion (label 2)
    on ``lesion_slices[case]`` of the cases listed there."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_cases):
        labels = np.zeros(shape, np.uint8)
        labels[8:24, 8:24, organ.start : organ.stop] = 1
        for z in lesion_slices.get(i, ()):
            labels[12:16, 12:16, z] = LESION
        image = (labels * 50 + rng.normal(0, 5, shape)).astype(np.float32)
        write_nifti(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz", image)
        write_nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", labels)
    spec = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "organ": 1, "lesion": LESION},
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    return str(root)


def prepare_quietly(**settings):
    """``prepare`` with every :class:`DataWarning` raised as an error: these datasets allow full coverage."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        return prepare(DataConfig(size=32, **settings))


def lesion_slices_per_split(data) -> dict[str, int]:
    return {name: int((part.masks == LESION).any(axis=(1, 2)).sum()) for name, part in data.splits().items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_cases", [1, 2])
def test_slab_split_puts_the_lesion_in_every_split(tmp_path, n_cases, seed):
    """A lesion on ten slices of one case reaches train, val and test, on every seed."""
    dataset = write_nnunet(tmp_path / "few", {0: range(20, 30)}, n_cases)
    data = prepare_quietly(dataset=dataset, seed=seed)
    assert data.split["kind"] == "slab"
    assert all(count > 0 for count in lesion_slices_per_split(data).values())
    assert data.split["missing_classes"] == {"train": [], "val": [], "test": []}


def test_slab_split_is_deterministic_in_the_seed(tmp_path):
    dataset = write_nnunet(tmp_path / "few", {0: range(20, 30)}, 2)
    first, again = prepare_quietly(dataset=dataset, seed=4), prepare_quietly(dataset=dataset, seed=4)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(first.splits()[name].slice_index, again.splits()[name].slice_index)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tumour_on_few_slices_of_two_cases_keeps_every_split(tmp_path, seed):
    """The reported failure: foreground on ~10 of 48 slices and the default drop_empty emptied a split."""
    dataset = write_nnunet(tmp_path / "tumour", {0: range(18, 28), 1: range(22, 34)}, 2, organ=range(0))
    data = prepare_quietly(dataset=dataset, seed=seed)
    assert data.split["kind"] == "slab" and data.split["kept_empty_slices"] == []
    for part in data.splits().values():  # drop_empty held: every kept slice shows the tumour
        assert len(part) and (part.masks == LESION).any(axis=(1, 2)).all()
    assert len(data.train) > len(data.val) + len(data.test)  # a cut for coverage still trains on most
    # 22 tumour slices; one cut per case reaches three splits, each cut losing two to guard gaps
    assert sum(len(part) for part in data.splits().values()) >= 22 - 2 * 2


def test_three_cases_with_the_lesion_in_one_warn_and_record_it(tmp_path):
    """A case split cannot share one patient's lesion: the run goes on, says so, and records it."""
    dataset = write_nnunet(tmp_path / "three", {0: range(20, 30)}, 3)
    with pytest.warns(
        DataWarning,
        match="class 'lesion' is absent from the (val and test|train and val|train and test) split",
    ):
        data = prepare(DataConfig(dataset=dataset, size=32))
    assert data.split["kind"] == "case"
    assert sum(names == ["lesion"] for names in data.split["missing_classes"].values()) == 2


def test_lesion_on_two_slices_warns_and_drop_empty_empties_no_split(tmp_path):
    """Two labelled slices cannot cover three slabs: train gets them, val and test keep their
    empty slices rather than vanish, and the warning names the class and both splits."""
    dataset = write_nnunet(tmp_path / "tiny", {0: range(20, 22)}, 1, organ=range(0))
    with pytest.warns(
        DataWarning,
        match=r"'lesion' is absent from the val and test split.*val and test split shows no foreground",
    ):
        data = prepare(DataConfig(dataset=dataset, size=32))
    assert lesion_slices_per_split(data) == {"train": 2, "val": 0, "test": 0}
    assert len(data.val) and len(data.test)
    assert data.split["kept_empty_slices"] == ["val", "test"]
    assert data.split["missing_classes"] == {"train": [], "val": ["lesion"], "test": ["lesion"]}


def test_too_thin_a_volume_names_data_axis_and_that_setting_works(tmp_path):
    shape = (32, 32, 4)
    dataset = write_nnunet(tmp_path / "thin", {}, 1, organ=range(0, 4), shape=shape)
    with pytest.raises(DataError, match=r"data\.axis=2.*set data\.axis to a longer axis"):
        prepare(DataConfig(dataset=dataset, size=32))
    data = prepare_quietly(dataset=dataset, axis=0)  # the advice given: slice along x
    assert all(len(part) for part in data.splits().values())
