"""Cases (one patient's image and mask) and the checks that make them safe to train on."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from privacysf.data.readers import Volume, read_volume
from privacysf.errors import DataError


@dataclass
class Case:
    """One patient (or one single-subject template): an image volume and its integer label map.

    Splits are made over cases, never over slices of one case, so that no patient appears in both
    training and test data.
    """

    case_id: str
    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]
    spacing_known: bool = True
    display_rotations: int = 0
    sources: dict[str, str] = field(default_factory=dict)
    stored_dtype: str = "float32"


def as_label_map(volume: Volume, num_classes: int | None) -> np.ndarray:
    """Integer label map of a mask volume, rejecting fractional values and labels out of range."""
    array = volume.array
    if not np.all(np.isfinite(array)):
        raise DataError(f"mask {volume.path} contains NaN or infinite values; it must hold labels")
    labels = np.rint(array)
    if not np.allclose(labels, array):
        raise DataError(
            f"mask {volume.path} holds non-integer values (e.g. {array[labels != array].flat[0]}); "
            "masks must be label maps (0 = background, 1..K-1 = classes)"
        )
    labels = labels.astype(np.int64)
    found = np.unique(labels)
    if found.min() < 0:
        raise DataError(f"mask {volume.path} has negative labels {found[found < 0].tolist()}")
    if num_classes is not None and found.max() >= num_classes:
        raise DataError(
            f"mask {volume.path} has labels {found[found >= num_classes].tolist()} but the dataset "
            f"declares {num_classes} classes (0..{num_classes - 1}); fix the mask or set "
            "data.num_classes"
        )
    return labels


def case_from_files(case_id: str, image_path, mask_path, num_classes: int | None) -> Case:
    """Read an image/mask pair and check they describe the same grid."""
    image = read_volume(image_path)
    mask = read_volume(mask_path)
    return case_from_volumes(case_id, image, mask, num_classes)


def case_from_volumes(case_id: str, image: Volume, mask: Volume, num_classes: int | None) -> Case:
    if image.array.shape != mask.array.shape:
        raise DataError(
            f"case {case_id!r}: image {image.path} has shape {image.array.shape} but mask "
            f"{mask.path} has shape {mask.array.shape}; they must be on the same voxel grid"
        )
    if (
        image.spacing_known
        and mask.spacing_known
        and not np.allclose(image.spacing, mask.spacing, rtol=1e-3, atol=1e-4)
    ):
        raise DataError(
            f"case {case_id!r}: image {image.path} has spacing {image.spacing} mm but mask "
            f"{mask.path} has {mask.spacing} mm; resample the mask onto the image grid"
        )
    image_array = image.array.astype(np.float32)
    if not np.all(np.isfinite(image_array)):
        raise DataError(f"image {image.path} contains NaN or infinite values")
    return Case(
        case_id=case_id,
        image=image_array,
        mask=as_label_map(mask, num_classes),
        spacing=image.spacing,
        spacing_known=image.spacing_known,
        display_rotations=image.display_rotations,
        sources={"image": str(image.path), "mask": str(mask.path)},
        stored_dtype=image.stored_dtype,
    )
