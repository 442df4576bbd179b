"""tools/make_user_sets.py: the nnU-Net stand-ins for a new user's data, read back as a user would."""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from privacysf.config import DataConfig
from privacysf.data import totalseg
from privacysf.data.prepare import load_cases
from privacysf.data.readers import read_volume

TOOL = Path(__file__).resolve().parents[1] / "tools" / "make_user_sets.py"


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sets")
    argv = sys.argv
    sys.argv = [str(TOOL), str(out)]
    try:
        runpy.run_path(str(TOOL), run_name="__main__")
    finally:
        sys.argv = argv
    return out


def test_lesions_are_dark_in_the_scan_exactly_where_the_label_says(sets):
    """Image and label agree: the written CT differs from the source scan by the lesion contrast on
    the lesion voxels and nowhere else, and each lesion lies in the liver."""
    folder = sets / "Dataset501_CTLiverLesion"
    written = read_volume(folder / "imagesTr" / "ctnifti_0000.nii.gz").array
    lesion = read_volume(folder / "labelsTr" / "ctnifti.nii.gz").array == 1
    source = totalseg.data_dir()
    original = read_volume(source / "example_ct.nii.gz").array
    organs = np.rint(read_volume(source / "example_seg_fast_force_split.nii.gz").array)
    assert 200 < lesion.sum() < 20_000
    np.testing.assert_allclose(written[lesion] - original[lesion], -45, atol=0.5)
    np.testing.assert_array_equal(written[~lesion], original[~lesion])
    liver = json.loads((source / totalseg.CLASS_MAP_FILE).read_text())["total"]
    liver_index = int(next(i for i, name in liver.items() if name == "liver"))
    assert (organs[lesion] == liver_index).all()


def test_the_sets_read_as_ct_or_mr_with_their_classes_from_dataset_json(sets):
    cases, info = load_cases(DataConfig(dataset=str(sets / "Dataset502_CTAbdomen9")))
    assert info.normalization == "ct" and len(info.class_names) == 10
    assert sorted(c.case_id for c in cases) == ["ctdicom", "ctnifti"]
    held = set().union(*(np.unique(c.mask).tolist() for c in cases))
    assert held == set(range(10))  # every one of the nine organs is in some scan
    (mr,), mr_info = load_cases(DataConfig(dataset=str(sets / "Dataset503_MRAbdomen9")))
    assert mr_info.normalization == "mr" and len(np.unique(mr.mask)) == 10
