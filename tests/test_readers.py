import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from conftest import write_dicom_series, write_itk, write_nifti, write_png

from privacysf.data.readers import is_image_entry, read_volume
from privacysf.data.registry import vendored
from privacysf.errors import DataError


def test_nifti_keeps_array_and_spacing(tmp_path, volume_pair):
    image, _ = volume_pair
    vol = read_volume(write_nifti(tmp_path / "a.nii.gz", image, (1.0, 1.5, 2.0)))
    np.testing.assert_allclose(vol.array, image, atol=1e-4)
    assert vol.spacing == (1.0, 1.5, 2.0)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_formats_are_put_in_ras_order(tmp_path, volume_pair, suffix):
    image, _ = volume_pair
    # written with ITK's identity direction: index axes run towards left and posterior (LPS)
    vol = read_volume(write_itk(tmp_path / f"a{suffix}", image, (1.0, 1.5, 2.0)))
    np.testing.assert_allclose(vol.array, image[::-1, ::-1, :], atol=1e-4)
    assert vol.spacing == pytest.approx((1.0, 1.5, 2.0))


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_same_scan_in_two_formats_lines_up_voxel_for_voxel(tmp_path, volume_pair, suffix):
    image, _ = volume_pair
    nifti = write_nifti(tmp_path / "scan.nii.gz", image, (1.0, 1.5, 2.0))
    sitk.WriteImage(sitk.ReadImage(str(nifti)), str(tmp_path / f"scan{suffix}"))  # same physical space
    a, b = read_volume(nifti), read_volume(tmp_path / f"scan{suffix}")
    np.testing.assert_allclose(a.array, b.array, atol=1e-4)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)


def test_dicom_series_sorted_by_position_with_rescale(tmp_path, volume_pair):
    image, _ = volume_pair
    folder = write_dicom_series(tmp_path / "series", np.rint(image), (0.8, 0.6, 2.5))
    vol = read_volume(folder)
    # columns run towards the patient's left, rows towards posterior (LPS): RAS order flips both
    np.testing.assert_allclose(vol.array, (np.rint(image).astype(np.int16) - 10)[::-1, ::-1, :])
    assert vol.spacing == pytest.approx((0.8, 0.6, 2.5))
    assert read_volume(next(folder.iterdir())).array.shape == image.shape  # a file names its series


def test_dicom_files_named_by_their_uid_are_found_by_their_preamble(tmp_path, volume_pair):
    """Exports often name each file after its SOP instance UID (``CT.1.3.12...``): a dotted name."""
    image, _ = volume_pair
    folder = write_dicom_series(tmp_path / "series", np.rint(image))
    for number, path in enumerate(sorted(folder.iterdir())):
        path.rename(folder / f"CT.1.3.12.2.1107.5.1.4.{number}")
    (folder / "notes.json").write_text("{}")  # a named non-DICOM file beside them is not read
    assert is_image_entry(folder)
    assert read_volume(folder).array.shape == image.shape


def test_png_and_tiff_pictures(tmp_path):
    picture = (np.arange(30 * 40).reshape(30, 40) % 256).astype(np.uint8)
    png = read_volume(write_png(tmp_path / "p.png", picture))
    assert png.array.shape == (30, 40, 1) and not png.spacing_known
    np.testing.assert_array_equal(png.array[..., 0], picture)
    stack = np.stack([picture, picture + 1])  # (z, y, x)
    tifffile.imwrite(tmp_path / "s.tif", stack)
    tif = read_volume(tmp_path / "s.tif")
    assert tif.array.shape == (30, 40, 2)
    np.testing.assert_array_equal(tif.array[..., 1], picture + 1)


def test_real_fixtures_read():
    t1 = read_volume(vendored("KmeansTest_T1UCharRaw.nii.gz"))
    assert t1.array.shape == (128, 62, 128) and t1.spacing_known  # coronal scan, RAS-reoriented
    assert sorted(t1.spacing) == [2.0, 2.0, 3.0]
    nuclei = read_volume(vendored("dsb_img2d.tif"))
    assert nuclei.array.shape == (512, 512, 1) and nuclei.array.max() > 100


def test_unreadable_and_unsupported_files_name_the_file(tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti at all")
    with pytest.raises(DataError, match="broken.nii.gz"):
        read_volume(broken)
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        read_volume(other)
    with pytest.raises(DataError, match="does not exist"):
        read_volume(tmp_path / "missing.nii")
