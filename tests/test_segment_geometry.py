"""``privacysf segment`` writes its mask in the input's own geometry, voxel for voxel.

A stand-in segmenter (labels read off the intensities of the reoriented volume) replaces the trained
network, so any flip, permutation or shift between the written mask and its input shows up as labels
off the truth's voxels, without training anything.
"""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import write_dicom_series

from privacysf.data.readers import read_volume
from privacysf.workflows import segment

# where each file axis points (nibabel codes): RPS (y flipped, as in issue 16) and ASL (permuted, one flip)
ORIENTATIONS = {
    "RPS": np.array([[0.7, 0, 0, -31.0], [0, -1.3, 0, 12.5], [0, 0, 2.5, -40.0], [0, 0, 0, 1]]),
    "ASL": np.array([[0, 0, -2.5, 20.0], [0.7, 0, 0, -30.0], [0, 1.3, 0, 5.0], [0, 0, 0, 1]]),
}


def asymmetric_labels(shape=(7, 5, 6)) -> np.ndarray:
    """An off-centre L of label 1 and one label-2 voxel in a corner: no flip maps it onto itself."""
    labels = np.zeros(shape, np.uint8)
    labels[1:4, 1, 1:3] = 1
    labels[1, 1:4, 1] = 1
    labels[-1, -1, -1] = 2
    return labels


@pytest.fixture
def stand_in_segmenter(monkeypatch):
    """Labels = the intensities, in whatever voxel order segment_file hands the volume over."""
    monkeypatch.setattr(
        segment, "load_segmenter", lambda run, device, server: lambda volume: np.rint(volume.array)
    )


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_nifti_mask_takes_the_input_header(tmp_path, stand_in_segmenter, orientation):
    truth = asymmetric_labels()
    source = nib.Nifti1Image(truth.astype(np.float32), ORIENTATIONS[orientation])
    source.set_qform(ORIENTATIONS[orientation], code=1)  # scanner space, as a scanner writes it
    source.header["cal_max"] = 900  # the image's display window
    nib.save(source, str(tmp_path / "case_0000.nii.gz"))
    out = segment.segment_file(tmp_path, tmp_path / "case_0000.nii.gz", tmp_path / "case.nii.gz")
    mask, image = nib.load(str(out)), nib.load(str(tmp_path / "case_0000.nii.gz"))
    assert mask.shape == image.shape
    assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(image.affine) == tuple(orientation)
    np.testing.assert_array_equal(mask.affine, image.affine)
    for field in ("qform_code", "sform_code", "pixdim", "xyzt_units"):
        np.testing.assert_array_equal(mask.header[field], image.header[field], err_msg=field)
    np.testing.assert_array_equal(mask.header.get_qform(), image.header.get_qform())
    assert mask.get_data_dtype() == np.uint8 and mask.header["cal_max"] == 0
    np.testing.assert_array_equal(np.asarray(mask.dataobj), truth)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_mask_copies_spacing_origin_and_direction(tmp_path, stand_in_segmenter, suffix):
    truth = asymmetric_labels()
    image = sitk.GetImageFromArray(truth.T.astype(np.float32))  # (x, y, z) -> ITK's (z, y, x)
    image.SetSpacing((0.7, 1.3, 2.5))
    image.SetOrigin((-31.0, 12.5, -40.0))
    image.SetDirection((0, 0, -1, 1, 0, 0, 0, -1, 0))  # permuted and flipped, not LPS
    sitk.WriteImage(image, str(tmp_path / f"case_0000{suffix}"))
    out = segment.segment_file(tmp_path, tmp_path / f"case_0000{suffix}", tmp_path / f"case{suffix}")
    mask = sitk.ReadImage(str(out))
    assert mask.GetSize() == image.GetSize()
    assert mask.GetSpacing() == image.GetSpacing()
    assert mask.GetOrigin() == image.GetOrigin()
    assert mask.GetDirection() == image.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask).T, truth)


def test_nifti_input_to_mha_mask_keeps_the_physical_grid(tmp_path, stand_in_segmenter):
    truth = asymmetric_labels()
    nib.save(nib.Nifti1Image(truth.astype(np.float32), ORIENTATIONS["ASL"]), str(tmp_path / "case.nii.gz"))
    out = segment.segment_file(tmp_path, tmp_path / "case.nii.gz", tmp_path / "mask.mha")
    mask = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask).T, truth)  # the NIfTI's voxel order
    np.testing.assert_allclose(read_volume(out).file_affine(), ORIENTATIONS["ASL"], atol=1e-6)


def test_dicom_series_mask_is_a_nifti_in_the_series_geometry(tmp_path, stand_in_segmenter):
    truth = asymmetric_labels()
    folder = write_dicom_series(tmp_path / "series", truth.astype(np.int16) + 10, (0.8, 0.6, 2.5))
    out = segment.segment_file(tmp_path, folder, tmp_path / "mask.nii.gz")
    mask = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(mask.dataobj), truth)  # (columns, rows, slices)
    # DICOM's LPS patient space with identity cosines: in RAS the column and row axes point L and P
    np.testing.assert_allclose(mask.affine, np.diag([-0.8, -0.6, 2.5, 1.0]), atol=1e-6)


def test_a_folder_of_images_gives_one_mask_each_named_like_nnunet(tmp_path, stand_in_segmenter, capsys):
    from privacysf.cli.main import main

    images, first, second = tmp_path / "imagesTs", asymmetric_labels(), asymmetric_labels()[::-1]
    images.mkdir()
    nib.save(nib.Nifti1Image(first.astype(np.float32), ORIENTATIONS["RPS"]), str(images / "a_0000.nii.gz"))
    nib.save(nib.Nifti1Image(second.astype(np.float32), ORIENTATIONS["ASL"]), str(images / "b_0000.nii.gz"))
    nib.save(nib.Nifti1Image(second.astype(np.float32), ORIENTATIONS["ASL"]), str(images / "b_0001.nii.gz"))
    assert main(["segment", str(tmp_path), str(images), str(tmp_path / "predictions")]) == 0
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == ["a.nii.gz", "b.nii.gz"]
    for name, truth, orientation in [("a", first, "RPS"), ("b", second, "ASL")]:
        mask = nib.load(str(tmp_path / "predictions" / f"{name}.nii.gz"))
        np.testing.assert_array_equal(np.asarray(mask.dataobj), truth)
        np.testing.assert_allclose(mask.affine, ORIENTATIONS[orientation], atol=1e-6)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[1/2] a_0000.nii.gz -> ") and lines[1].startswith("[2/2] b_0000.nii.gz -> ")
    assert "skipped 1 file(s) of other channels" in lines[2] and lines[3].startswith("2 masks written")
