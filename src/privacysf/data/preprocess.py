"""From cases to a stack of normalised, resized 2-D slices (with spacing in mm kept per slice)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import Resize, SpatialPad

from privacysf.data.cases import Case
from privacysf.errors import ConfigError

NORMALIZATIONS = ("mr", "ct", "minmax")


@dataclass
class SliceSet:
    """2-D slices ready for a network.

    ``images`` is (N, 1, S, S) float32, ``masks`` is (N, S, S) int64, ``spacing`` is (N, 2) mm per pixel
    after resizing, so surface distances stay in millimetres. ``slice_spacing`` is (N,) mm between
    neighbouring slices of the case along the slicing axis, so a case's slices restacked into a volume
    (3-D metrics) keep millimetre distances through the plane too.
    """

    images: np.ndarray
    masks: np.ndarray
    spacing: np.ndarray
    case_ids: list[str]
    slice_index: np.ndarray
    slice_spacing: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, keep: np.ndarray) -> SliceSet:
        """Slices selected by a boolean mask or an index array."""
        index = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
        return SliceSet(
            self.images[index],
            self.masks[index],
            self.spacing[index],
            [self.case_ids[i] for i in index],
            self.slice_index[index],
            self.slice_spacing[index],
        )

    @staticmethod
    def concatenate(parts: list[SliceSet], size: int) -> SliceSet:
        if not parts:
            return SliceSet(
                np.zeros((0, 1, size, size), np.float32),
                np.zeros((0, size, size), np.int64),
                np.zeros((0, 2), np.float32),
                [],
                np.zeros(0, np.int64),
                np.zeros(0, np.float32),
            )
        return SliceSet(
            np.concatenate([p.images for p in parts]),
            np.concatenate([p.masks for p in parts]),
            np.concatenate([p.spacing for p in parts]),
            [c for p in parts for c in p.case_ids],
            np.concatenate([p.slice_index for p in parts]),
            np.concatenate([p.slice_spacing for p in parts]),
        )


def normalize(image: np.ndarray, method: str, ct_window: tuple[float, float]) -> np.ndarray:
    """Intensity normalisation of one whole case (so slices of a case share one scale)."""
    image = image.astype(np.float32)
    if method == "ct":
        low, high = ct_window
        return (np.clip(image, low, high) - low) / (high - low)
    if method not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {method!r}; use one of {NORMALIZATIONS} or auto")
    values = image[image > image.min()] if np.any(image > image.min()) else image.ravel()
    low, high = np.percentile(values, (0.5, 99.5))
    clipped = np.clip(image, low, high)
    if method == "minmax":
        return (clipped - low) / max(high - low, 1e-6)
    return (clipped - clipped.mean()) / max(float(clipped.std()), 1e-6)


def restore_slices(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Undo :func:`slice_case`'s pad-and-resize for (S, size, size) label maps -> (S, *shape)."""
    side = max(shape)
    resized = Resize((side, side), mode="nearest")(torch.from_numpy(labels).float())
    top, left = (side - shape[0]) // 2, (side - shape[1]) // 2  # SpatialPad pads symmetrically
    return np.asarray(resized)[:, top : top + shape[0], left : left + shape[1]].astype(np.int64)


def slice_case(case: Case, axis: int, size: int, method: str, ct_window, drop_empty: bool) -> SliceSet:
    """Slice one case along ``axis``, pad each slice to a square (keeping aspect) and resize to ``size``."""
    if axis not in (0, 1, 2):
        raise ConfigError(f"data.axis must be 0, 1 or 2, got {axis}")
    image = np.moveaxis(normalize(case.image, method, ct_window), axis, 0)
    mask = np.moveaxis(case.mask, axis, 0)
    spacing_2d = [s for i, s in enumerate(case.spacing) if i != axis]
    index = np.arange(image.shape[0])
    if drop_empty:
        keep = mask.reshape(len(mask), -1).any(axis=1)
        image, mask, index = image[keep], mask[keep], index[keep]
    if not len(index):  # a case with no labelled slice contributes nothing
        return SliceSet.concatenate([], size)
    side = max(image.shape[1:])
    background = float(image.min())
    # Slices go through MONAI as channels of one 2-D tensor: one call resizes the whole stack.
    image_t = SpatialPad((side, side), value=background)(torch.from_numpy(np.ascontiguousarray(image)))
    mask_t = SpatialPad((side, side))(torch.from_numpy(np.ascontiguousarray(mask)).float())
    image_t = Resize((size, size), mode="bilinear", anti_aliasing=side > size)(image_t)
    mask_t = Resize((size, size), mode="nearest")(mask_t)
    scale = side / size
    spacing = np.tile(np.asarray(spacing_2d, np.float32) * scale, (len(index), 1))
    return SliceSet(
        images=np.asarray(image_t, dtype=np.float32)[:, None],
        masks=np.asarray(mask_t).astype(np.int64),
        spacing=spacing,
        case_ids=[case.case_id] * len(index),
        slice_index=index.astype(np.int64),
        slice_spacing=np.full(len(index), case.spacing[axis], np.float32),
    )
