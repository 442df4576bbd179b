"""Read one image or mask file (or DICOM series folder) into an array with its voxel spacing.

Each format goes through its field library: nibabel for NIfTI, SimpleITK for NRRD/MHA/MHD, pydicom for
DICOM series, tifffile for TIFF stacks and Pillow for PNG/JPEG/BMP. Every reader returns a
:class:`Volume` whose array is 3-D, so the rest of the pipeline handles 2-D pictures and 3-D scans
the same way: a 2-D picture is a volume of one slice along axis 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privacysf.errors import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
TIFF_SUFFIXES = (".tif", ".tiff")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + TIFF_SUFFIXES + PICTURE_SUFFIXES + DICOM_SUFFIXES


@dataclass
class Volume:
    """A 3-D array with its voxel spacing in mm (or pixels when the format carries none)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    path: Path
    spacing_known: bool = True
    display_rotations: int = 0
    """Quarter turns that show a slice the way radiologists expect (scans: 1; pictures: 0)."""
    stored_dtype: str = "float32"
    """dtype of the values as stored in the file: the size a raw image would have on the wire."""
    affine: np.ndarray | None = None
    """Voxel-to-world (RAS) matrix of the RAS-reoriented array, where the format has one (scans)."""
    orientation: np.ndarray | None = None
    """nibabel orientation transform that took the file's voxel order to ``array``'s RAS order."""

    def in_file_order(self, array: np.ndarray) -> np.ndarray:
        """``array`` (laid out like :attr:`array`) back in the file's voxel order.

        Scans are reoriented to RAS for slicing; a result written next to the input must undo that
        so it lines up with the input (and its labels) voxel for voxel.
        """
        if self.orientation is None:
            return array
        import nibabel as nib

        return nib.orientations.apply_orientation(array, self._back_to_file())

    def file_affine(self) -> np.ndarray:
        """Voxel-to-world (RAS) matrix of the file's own voxel order (pixel spacing where unknown)."""
        if self.affine is None:
            return np.diag([*self.spacing, 1.0])
        if self.orientation is None:
            return self.affine
        import nibabel as nib

        return self.affine @ nib.orientations.inv_ornt_aff(self._back_to_file(), self.array.shape)

    def _back_to_file(self) -> np.ndarray:
        """The orientation transform from RAS voxel order back to the file's."""
        import nibabel as nib

        return nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), self.orientation)


def file_stem(path: Path) -> str:
    """Name without its (possibly double) image suffix: ``case_001.nii.gz`` -> ``case_001``."""
    name = path.name
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_image_entry(path: Path) -> bool:
    """A supported image file, or a folder holding a DICOM series."""
    if path.name.startswith("."):
        return False
    if path.is_dir():
        return any(_is_dicom_file(p) for p in path.iterdir() if p.is_file())
    return path.name.lower().endswith(SUPPORTED_SUFFIXES)


def read_volume(path: str | Path) -> Volume:
    """Read ``path`` (a file, or a folder holding one DICOM series) as a 3-D :class:`Volume`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; check the path")
    name = path.name.lower()
    try:
        if path.is_dir():
            return _read_dicom_series(path)
        if name.endswith(NIFTI_SUFFIXES):
            return _read_nifti(path)
        if name.endswith(ITK_SUFFIXES):
            return _read_itk(path)
        if name.endswith(TIFF_SUFFIXES):
            return _read_tiff(path)
        if name.endswith(PICTURE_SUFFIXES):
            return _read_picture(path)
        if name.endswith(DICOM_SUFFIXES):
            return _read_dicom_series(path.parent)
    except DataError:
        raise
    except Exception as exc:  # a library failed on a corrupt file: name the file, keep the cause
        raise DataError(
            f"cannot read {path}: {type(exc).__name__}: {exc}. Is the file complete and in the "
            "format its name says?"
        ) from None
    raise DataError(
        f"{path}: unsupported file type; supported are {', '.join(SUPPORTED_SUFFIXES)} "
        "and folders holding a DICOM series"
    )


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def scan_volume(array: np.ndarray, affine_ras: np.ndarray, path: Path, stored_dtype: str) -> Volume:
    """Reorder (and flip) a scan's axes so the array is in RAS voxel order, as nibabel's canonical."""
    import nibabel as nib

    array = _as_3d(array, path)
    orientation = nib.orientations.io_orientation(affine_ras)
    affine = affine_ras @ nib.orientations.inv_ornt_aff(orientation, array.shape)  # the file's shape
    array = nib.orientations.apply_orientation(array, orientation)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return Volume(
        np.ascontiguousarray(array),
        _pad_spacing(spacing),
        path,
        display_rotations=1,
        stored_dtype=stored_dtype,
        affine=affine,
        orientation=orientation,
    )


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    image = nib.load(str(path))
    assert isinstance(image, nib.spatialimages.SpatialImage)  # what nib.load returns for a volume
    array = np.asarray(image.dataobj)
    if array.ndim == 4:  # multi-channel (e.g. MSD multi-sequence): use the first channel
        array = array[..., 0]
    return scan_volume(array, image.affine, path, str(image.get_data_dtype()))


def _read_itk(path: Path) -> Volume:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() > 1:
        image = sitk.VectorIndexSelectionCast(image, 0)
    array = sitk.GetArrayFromImage(image)  # (z, y, x)
    array = np.transpose(array, tuple(reversed(range(array.ndim))))  # -> (x, y, z)
    dims = image.GetDimension()
    lps = np.eye(4)  # ITK's world space is LPS
    lps[:dims, :dims] = np.reshape(image.GetDirection(), (dims, dims)) * np.asarray(image.GetSpacing())
    lps[:dims, 3] = image.GetOrigin()
    return scan_volume(array, LPS_TO_RAS @ lps, path, str(array.dtype))


def _read_tiff(path: Path) -> Volume:
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        array = tif.asarray()
        first = tif.pages[0]  # always a full page (frames only follow it)
        rgb = isinstance(first, tifffile.TiffPage) and first.photometric == tifffile.PHOTOMETRIC.RGB
    stored = str(array.dtype)
    if rgb:
        array = array[..., :3].mean(axis=-1)
    if array.ndim == 3:  # a stack (z, y, x) -> (y, x, z): slices stay pictures along axis 2
        array = np.moveaxis(array, 0, -1)
    return Volume(_as_3d(array, path), (1.0, 1.0, 1.0), path, spacing_known=False, stored_dtype=stored)


def _read_picture(path: Path) -> Volume:
    from PIL import Image

    with Image.open(path) as opened:
        picture = opened.convert("L") if opened.mode in {"RGB", "RGBA"} else opened
        array = np.asarray(picture)
    return Volume(
        _as_3d(array, path), (1.0, 1.0, 1.0), path, spacing_known=False, stored_dtype=str(array.dtype)
    )


def _is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file, or one whose preamble says DICOM whatever its name.

    Scanners and PACS exports often name files after their SOP instance UID
    (``CT.1.3.12.2.1107...``), so a dotted name is no sign of another format.
    """
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.name.lower().endswith(SUPPORTED_SUFFIXES):
        return False
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def _read_dicom_series(folder: Path) -> Volume:
    import pydicom

    files = sorted(p for p in folder.iterdir() if p.is_file() and _is_dicom_file(p))
    if not files:
        raise DataError(f"{folder} holds no DICOM files (*.dcm or files with a DICM preamble)")
    slices = [pydicom.dcmread(str(p)) for p in files]
    series = {str(getattr(s, "SeriesInstanceUID", "")) for s in slices}
    if len(series) > 1:
        raise DataError(f"{folder} mixes {len(series)} DICOM series; put each series in its own folder")
    normal = _slice_normal(slices[0])
    slices.sort(
        key=lambda s: (
            float(np.dot(normal, [float(v) for v in s.ImagePositionPatient]))
            if "ImagePositionPatient" in s
            else int(getattr(s, "InstanceNumber", 0))
        )
    )
    stored = str(slices[0].pixel_array.dtype)
    planes = []
    for s in slices:
        plane = s.pixel_array.astype(np.float32)
        plane = plane * float(getattr(s, "RescaleSlope", 1.0)) + float(getattr(s, "RescaleIntercept", 0.0))
        planes.append(plane)
    shapes = {p.shape for p in planes}
    if len(shapes) > 1:
        raise DataError(f"{folder}: DICOM slices have different sizes {sorted(shapes)}")
    array = np.transpose(np.stack(planes, axis=-1), (1, 0, 2))  # (cols, rows, slices)
    row_spacing, col_spacing = (float(v) for v in getattr(slices[0], "PixelSpacing", (1.0, 1.0)))
    if len(slices) > 1 and "ImagePositionPatient" in slices[0]:
        positions = [float(np.dot(normal, [float(v) for v in s.ImagePositionPatient])) for s in slices]
        z_spacing = float(np.median(np.diff(positions))) or 1.0
    else:
        z_spacing = float(getattr(slices[0], "SliceThickness", 1.0) or 1.0)
    cosines = _orientation(slices[0])
    lps = np.eye(4)  # DICOM patient space is LPS; columns: along a row, down a column, across slices
    lps[:3, 0] = cosines[:3] * col_spacing
    lps[:3, 1] = cosines[3:] * row_spacing
    lps[:3, 2] = normal * z_spacing
    lps[:3, 3] = [float(v) for v in getattr(slices[0], "ImagePositionPatient", (0, 0, 0))]
    return scan_volume(array, LPS_TO_RAS @ lps, folder, stored)


def _orientation(dataset) -> np.ndarray:
    return np.array([float(v) for v in getattr(dataset, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0])])


def _slice_normal(dataset) -> np.ndarray:
    cosines = _orientation(dataset)
    return np.cross(cosines[:3], cosines[3:])


def _as_3d(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 2:
        return array[..., None]
    if array.ndim == 3:
        return array
    raise DataError(f"{path}: expected a 2-D or 3-D image, got an array of shape {array.shape}")


def _pad_spacing(spacing: tuple[float, ...]) -> tuple[float, float, float]:
    padded = tuple(spacing) + (1.0,) * (3 - len(spacing))
    return tuple(float(s) if s > 0 else 1.0 for s in padded[:3])  # type: ignore[return-value]
