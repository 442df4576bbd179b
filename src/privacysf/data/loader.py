"""Mini-batches of raw slices for center-side training, with MONAI augmentation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAffined,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from privacysf.data.preprocess import SliceSet


def augmentation() -> Compose:
    """Flips and mild intensity jitter: label-preserving changes every modality here tolerates."""
    return Compose(
        [
            RandFlipd(keys=("image", "mask"), prob=0.5, spatial_axis=0),
            RandFlipd(keys=("image", "mask"), prob=0.5, spatial_axis=1),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
        ]
    )


def slice_batches(
    slices: SliceSet, batch_size: int, augment: bool, seed: int, device: torch.device
) -> Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]:
    """``epoch -> batches`` of (images (B,1,H,W), masks (B,H,W)), reshuffled per epoch from ``seed``."""
    transform = augmentation() if augment else None
    if transform is not None:
        transform.set_random_state(seed)
    images = torch.from_numpy(slices.images)
    masks = torch.from_numpy(slices.masks)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = np.random.default_rng(seed + epoch).permutation(len(slices))
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            x, y = images[index], masks[index]
            if transform is not None:
                items = [transform({"image": x[i], "mask": y[i][None]}) for i in range(len(index))]
                x = torch.stack([torch.as_tensor(item["image"]) for item in items])
                y = torch.stack([torch.as_tensor(item["mask"])[0] for item in items])
            yield x.float().to(device), y.long().to(device)

    return batches


def shape_augmentation() -> Compose:
    """Flips, right-angle turns and a random rotation, scaling and shift of label maps alone (nearest
    neighbour, so labels stay labels): shapes for a codec that never sees the image."""
    return Compose(
        [
            RandFlipd(keys="mask", prob=0.5, spatial_axis=0),
            RandFlipd(keys="mask", prob=0.5, spatial_axis=1),
            RandRotate90d(keys="mask", prob=0.5),
            RandAffined(
                keys="mask",
                prob=0.8,
                rotate_range=0.5,
                scale_range=0.25,
                translate_range=(12, 12),
                mode="nearest",
                padding_mode="zeros",
            ),
        ]
    )


def mask_batches(
    masks: np.ndarray, batch_size: int, steps: int, augment: bool, seed: int, device: torch.device
) -> Callable[[int], Iterator[torch.Tensor]]:
    """``epoch -> steps`` batches of (B, H, W) label maps drawn with replacement from ``masks``, each
    reshaped by :func:`shape_augmentation` when ``augment``: an epoch as long as the codec needs,
    whatever the number of training slices."""
    transform = shape_augmentation() if augment else None
    if transform is not None:
        transform.set_random_state(seed)
    labels = torch.from_numpy(masks)

    def batches(epoch: int) -> Iterator[torch.Tensor]:
        draws = np.random.default_rng([seed, epoch]).integers(len(labels), size=(steps, batch_size))
        for index in draws:
            y = labels[index]
            if transform is not None:
                y = torch.stack([torch.as_tensor(transform({"mask": m[None]})["mask"])[0] for m in y])
            yield y.long().to(device)

    return batches


def batched(array: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(array), batch_size):
        yield array[start : start + batch_size]
