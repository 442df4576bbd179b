import numpy as np
import pytest

from privacysf.config import DataConfig
from privacysf.data import registry
from privacysf.data.prepare import prepare
from privacysf.errors import DataError

ALWAYS_AVAILABLE = [
    "phantom",
    "icbm152-tissue",
    "icbm152-brain",
    "itk-t1-brain",
    "dsb-nuclei",
    "cells3d-nuclei",
    "totalseg-ct",  # fetched by `make test` (privacysf data fetch)
    "totalseg-mr",
]


@pytest.mark.parametrize("name", ALWAYS_AVAILABLE)
def test_builtin_datasets_load_real_data(name):
    spec = registry.get_builtin(name)
    assert spec.licence and spec.source and spec.how_to_get
    data = prepare(DataConfig(dataset=name, size=32, phantom_cases=12))
    assert data.train.images.shape[1:] == (1, 32, 32)
    labels = np.unique(np.concatenate([p.masks.ravel() for p in data.splits().values()]))
    assert labels.tolist() == list(range(spec.num_classes))
    assert np.isfinite(data.train.images).all()


def test_icbm_tissue_has_grey_and_white_matter():
    data = prepare(DataConfig(dataset="icbm152-tissue", size=64))
    fractions = np.bincount(data.train.masks.ravel(), minlength=3) / data.train.masks.size
    assert fractions[1] > 0.05 and fractions[2] > 0.05  # real tissue maps, not an empty label


def test_colin27_loads_or_says_how_to_install(monkeypatch, tmp_path):
    if (registry.COLIN27_DIR / "ch2.nii.gz").is_file():  # CI installs Debian's mricron-data
        data = prepare(DataConfig(dataset="colin27-brain", size=32))
        assert data.split["kind"] == "slab" and len(data.test) > 0
    monkeypatch.setattr(registry, "COLIN27_DIR", tmp_path)
    with pytest.raises(DataError, match="apt-get install mricron-data"):
        prepare(DataConfig(dataset="colin27-brain"))


def test_unknown_dataset_lists_builtins():
    with pytest.raises(DataError, match="icbm152-tissue"):
        prepare(DataConfig(dataset="no-such-dataset"))


def _all_slices(seed: int) -> np.ndarray:
    """Every slice of every split, in a fixed order: what the phantom drew, whichever split it fell in."""
    data = prepare(DataConfig(dataset="phantom", size=32, phantom_cases=6, seed=seed))
    images = np.concatenate([part.images for part in data.splits().values()])
    return images[np.lexsort(images.reshape(len(images), -1).T)]


def test_phantom_is_seeded():
    """The same seed draws the same phantoms; another seed draws other phantoms, not only another split."""
    np.testing.assert_array_equal(_all_slices(1), _all_slices(1))
    assert not np.array_equal(_all_slices(1), _all_slices(2))


@pytest.mark.parametrize(("seed", "held_out"), [(0, "icbm152"), (1, "itk-t1"), (5, "colin27")])
def test_brain_3subjects_is_split_by_subject_and_the_documented_seeds_hold_out_each_brain(seed, held_out):
    """The privacy benchmark's cross-subject split: one brain per split, never shared between splits."""
    data = prepare(DataConfig(dataset="brain-3subjects", size=32, seed=seed))
    assert data.split["kind"] == "case"
    subjects = {name: set(part.case_ids) for name, part in data.splits().items()}
    assert subjects["test"] == {held_out}
    assert all(len(s) == 1 for s in subjects.values())
    assert set.union(*subjects.values()) == {"icbm152", "colin27", "itk-t1"}
