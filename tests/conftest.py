"""Small files in every supported format, written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image


def ball_volume(shape=(24, 20, 12), radius=6.0, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy bright ball (label 1) with a brighter core (label 2): image and labels, (x, y, z)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) - s / 2 for s in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    labels = (r < radius).astype(np.int16) + (r < radius / 2).astype(np.int16)
    image = (labels * 100 + rng.normal(0, 5, shape)).astype(np.float32)
    return image, labels


def write_nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.5, 2.0)) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return path


def write_itk(path: Path, array: np.ndarray, spacing=(1.0, 1.5, 2.0)) -> Path:
    image = sitk.GetImageFromArray(np.transpose(array, (2, 1, 0)))  # (x,y,z) -> ITK's (z,y,x)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def write_dicom_series(folder: Path, array: np.ndarray, spacing=(0.8, 0.6, 2.5)) -> Path:
    """One CT-like series: one file per z slice, positions along z, shuffled file names."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    for z in range(array.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.Modality = "CT"
        plane = array[:, :, z].T.astype(np.int16)  # (x, y) -> rows=y, cols=x
        ds.Rows, ds.Columns = plane.shape
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (y), column spacing (x)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, z * spacing[2]]
        ds.InstanceNumber = z + 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -10
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = plane.tobytes()
        ds.save_as(folder / f"slice_{(z * 7) % array.shape[2]:03d}_{z}.dcm", enforce_file_format=True)
    return folder


def write_png(path: Path, array2d: np.ndarray) -> Path:
    Image.fromarray(array2d.astype(np.uint8)).save(path)
    return path


def write_plain_pair(
    root: Path, name: str, image: np.ndarray, labels: np.ndarray, mask_spacing=(1.0, 1.5, 2.0)
):
    """A plain-layout folder (images/, masks/) holding one NIfTI pair."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    write_nifti(root / "images" / f"{name}.nii.gz", image)
    write_nifti(root / "masks" / f"{name}.nii.gz", labels, mask_spacing)
    return root


@pytest.fixture(autouse=True)
def two_torch_threads():
    """Every test starts on two torch threads, whatever the test before it set (``train.threads``
    sets torch's process-wide count and nothing resets it). Float sums depend on the thread count, so
    without this a near tie in a tiny run could fall either way depending on the order of the suite."""
    torch.set_num_threads(2)


@pytest.fixture
def volume_pair():
    return ball_volume()


from pgkit import postgres_server, postgres_url  # noqa: E402, F401  (fixtures of the PostgreSQL tests)
