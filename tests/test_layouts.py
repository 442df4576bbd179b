import json

import numpy as np
import pytest
from conftest import ball_volume, write_itk, write_nifti, write_plain_pair, write_png

from privacysf.config import DataConfig
from privacysf.data.layouts import read_folder
from privacysf.data.prepare import prepare
from privacysf.errors import DataError


def make_msd(root, n=4, style="msd"):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n):
        image, labels = ball_volume(seed=i)
        name = f"case_{i:03d}"
        image_name = f"{name}_0000.nii.gz" if style == "nnunet" else f"{name}.nii.gz"
        write_nifti(root / "imagesTr" / image_name, image)
        write_nifti(root / "labelsTr" / f"{name}.nii.gz", labels.astype(np.uint8))
        training.append({"image": f"./imagesTr/{image_name}", "label": f"./labelsTr/{name}.nii.gz"})
    if style == "nnunet":
        (root / "imagesTr" / "case_000_0001.nii.gz").write_bytes(
            (root / "imagesTr" / "case_000_0000.nii.gz").read_bytes()
        )  # a second input channel, ignored
        spec = {
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, "body": 1, "core": 2},
            "numTraining": n,
            "file_ending": ".nii.gz",
        }
    else:
        spec = {
            "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "body", "2": "core"},
            "training": training,
        }
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


@pytest.mark.parametrize("style", ["msd", "nnunet"])
def test_msd_and_nnunet_layouts(tmp_path, style):
    root = make_msd(tmp_path / "Task01", style=style)
    cases, meta = read_folder(root, "auto", None)
    assert meta["layout"] == "msd" and meta["num_classes"] == 3
    assert meta["class_names"] == ["background", "body", "core"]
    assert sorted(c.case_id for c in cases) == [f"case_{i:03d}" for i in range(4)]
    assert cases[0].spacing == (1.0, 1.5, 2.0)
    assert set(np.unique(cases[0].mask)) == {0, 1, 2}


def test_plain_layout_with_mixed_formats(tmp_path):
    root = tmp_path / "plain"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    image, labels = ball_volume()
    write_itk(root / "images" / "a.mha", image)
    write_nifti(root / "masks" / "a.nii.gz", labels.astype(np.uint8))
    write_png(root / "images" / "b.png", (image[:, :, 6] / 3).clip(0, 255))
    write_png(root / "masks" / "b.png", labels[:, :, 6])
    cases, meta = read_folder(root, "auto", None)
    assert meta["layout"] == "plain"
    assert [c.case_id for c in cases] == ["a", "b"]
    assert cases[1].image.shape == (24, 20, 1)


def test_prepare_folder_splits_by_case(tmp_path):
    root = make_msd(tmp_path / "Task02", n=6)
    data = prepare(DataConfig(dataset=str(root), size=32, val_fraction=0.2, test_fraction=0.2))
    assert data.split["kind"] == "case"
    ids = {name: set(part.case_ids) for name, part in data.splits().items()}
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["val"])
    assert not (ids["val"] & ids["test"])
    assert data.train.images.shape[1:] == (1, 32, 32)
    # 24 x 20 slices are padded to 24 x 24, then resized to 32: 0.75 mm per pixel along x
    np.testing.assert_allclose(data.train.spacing[0], [1.0 * 24 / 32, 1.5 * 24 / 32])


def _plain(root, image, labels, mask_spacing=(1.0, 1.5, 2.0)):
    return write_plain_pair(root, "x", image, labels, mask_spacing)


def test_shape_mismatch_names_both_files(tmp_path):
    image, labels = ball_volume()
    root = _plain(tmp_path / "d", image, labels[:, :, :10].astype(np.uint8))
    with pytest.raises(DataError, match=r"x\.nii\.gz.*shape.*same voxel grid"):
        read_folder(root, "auto", None)


def test_spacing_mismatch(tmp_path):
    image, labels = ball_volume()
    root = _plain(tmp_path / "d", image, labels.astype(np.uint8), mask_spacing=(2.0, 2.0, 2.0))
    with pytest.raises(DataError, match="spacing.*resample"):
        read_folder(root, "auto", None)


def test_unexpected_and_fractional_labels(tmp_path):
    image, labels = ball_volume()
    root = _plain(tmp_path / "d", image, (labels * 3).astype(np.uint8))
    with pytest.raises(DataError, match=r"labels \[3, 6\].*3 classes"):
        read_folder(root, "auto", 3)
    root2 = _plain(tmp_path / "e", image, labels.astype(np.float32) * 0.5)
    with pytest.raises(DataError, match="non-integer"):
        read_folder(root2, "auto", None)


def test_case_without_labelled_slice_is_kept_out_of_training(tmp_path):
    root = make_msd(tmp_path / "Task03", n=8)
    write_nifti(root / "labelsTr" / "case_000.nii.gz", np.zeros((24, 20, 12), np.uint8))
    data = prepare(DataConfig(dataset=str(root), size=32, val_fraction=0.2, test_fraction=0.2))
    assert "case_000" not in set(data.train.case_ids) | set(data.val.case_ids) | set(data.test.case_ids)


def test_label_gaps_and_broken_dataset_json(tmp_path):
    image, labels = ball_volume()
    root = _plain(tmp_path / "d", image, (labels > 0).astype(np.uint8) * 255)
    with pytest.raises(DataError, match=r"labels \[0, 255\].*255 -> 1"):
        prepare(DataConfig(dataset=str(root), size=32))
    msd = make_msd(tmp_path / "Task04", n=3)
    (msd / "dataset.json").write_text('{"labels": {"background": 0, "tumour": [1, 2]}}')
    with pytest.raises(DataError, match="unexpected structure"):
        read_folder(msd, "auto", None)
    (msd / "dataset.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="JSON object"):
        read_folder(msd, "auto", None)


def test_empty_and_unmatched_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="neither an MSD"):
        read_folder(empty, "auto", None)
    (empty / "images").mkdir()
    (empty / "masks").mkdir()
    with pytest.raises(DataError, match="no image/mask pairs"):
        read_folder(empty, "auto", None)
    write_png(empty / "images" / "lonely.png", np.zeros((8, 8)))
    with pytest.raises(DataError, match="lonely.png"):
        read_folder(empty, "auto", None)
    with pytest.raises(DataError, match="does not exist"):
        read_folder(tmp_path / "nowhere", "auto", None)
