"""Mini-batches of raw slices for center-side training, with MONAI augmentation."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    RandAffined,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from privacysf.common.training import epoch_order
from privacysf.config import CodecConfig, TrainConfig, ViewAugmentation
from privacysf.data.preprocess import SliceSet


@contextmanager
def untracked() -> Iterator[None]:
    """Run MONAI transforms on plain tensors, without the metadata their outputs carry by default.

    Training batches need the values only. Without the tracking each transform skips recording its
    affine and operation history on a ``MetaTensor``, with the same values (tested): 96 mask draws
    at 128² reshaped in 75 ms instead of 150, 96 image slices flipped and jittered in 16 ms instead
    of 75 (one thread). MONAI's switch is global, so the previous state is put back on leaving.
    """
    before = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(before)


def _intensity_jitter() -> list:
    """A gain and an offset of up to 10 % each, on half the images: mild and label-preserving."""
    return [
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ]


def augmentation() -> Compose:
    """Flips and mild intensity jitter: label-preserving changes every modality here tolerates."""
    return Compose(
        [
            RandFlipd(keys=("image", "mask"), prob=0.5, spatial_axis=0),
            RandFlipd(keys=("image", "mask"), prob=0.5, spatial_axis=1),
            *_intensity_jitter(),
        ]
    )


def transform_pairs(
    transform: Compose, images: torch.Tensor, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each (1, H, W) image and (H, W) mask through ``transform`` together, one draw per pair,
    untracked: (N, 1, H, W) images and (N, H, W) masks."""
    with untracked():
        items = [transform({"image": images[i], "mask": masks[i][None]}) for i in range(len(images))]
    return (
        torch.stack([torch.as_tensor(item["image"]) for item in items]),
        torch.stack([torch.as_tensor(item["mask"])[0] for item in items]),
    )


def slice_batches(
    slices: SliceSet, train: TrainConfig, device: torch.device, seed_offset: int = 0
) -> Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]:
    """``epoch -> batches`` of (images (B,1,H,W), masks (B,H,W)), reshuffled per epoch from
    ``train.seed + seed_offset``, at least ``train.min_steps`` of them
    (:func:`~privacysf.common.training.epoch_order`), augmented when ``train.augment``."""
    batch_size, augment, seed = train.batch_size, train.augment, train.seed + seed_offset
    transform = augmentation() if augment else None
    if transform is not None:
        transform.set_random_state(seed)
    images = torch.from_numpy(slices.images)
    masks = torch.from_numpy(slices.masks)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index in epoch_order(len(slices), batch_size, train.min_steps, seed + epoch):
            x, y = images[index], masks[index]
            if transform is not None:
                x, y = transform_pairs(transform, x, y)
            yield x.float().to(device), y.long().to(device)

    return batches


def view_augmentation(kind: ViewAugmentation, size: int) -> Compose:
    """The transform of the center's uploaded views (``codec.view_augmentation``) at ``size``² pixels.

    ``flips`` is :func:`augmentation`, what the raw U-Net trains with. ``affine`` turns by up to 15°,
    scales each axis by up to 10 % and shifts by up to 6 % of the side, with the same intensity jitter and
    no flips: an upside-down brain or a liver on the left is no image the center will ever query."""
    if kind == "flips":
        return augmentation()
    return Compose(
        [
            RandAffined(
                keys=("image", "mask"),
                prob=1.0,
                rotate_range=math.radians(15),
                scale_range=(0.1, 0.1),  # one value would scale the first axis alone
                translate_range=(0.06 * size, 0.06 * size),
                mode=("bilinear", "nearest"),
                padding_mode="border",
            ),
            *_intensity_jitter(),
        ]
    )


def augmented_views(
    images: np.ndarray, masks: np.ndarray, views: int, seed: int, kind: ViewAugmentation = "flips"
) -> tuple[np.ndarray, np.ndarray]:
    """The slices followed by ``views - 1`` copies of each through :func:`view_augmentation`, drawn
    once from ``seed``: (views·N, 1, S, S) images and (views·N, S, S) masks.

    Why: the server never sees an image, so it cannot augment the way a U-Net does, and a transformed
    code is not the code of a transformed image unless the encoders make it so. The center can: it
    encodes augmented slices itself, so every extra pair it uploads is a true pair, under any key.
    """
    if views == 1:
        return images, masks
    transform = view_augmentation(kind, images.shape[-1])
    transform.set_random_state(seed)
    x, y = torch.from_numpy(images), torch.from_numpy(masks)
    all_images, all_masks = [images], [masks]
    for _ in range(views - 1):
        image_views, mask_views = transform_pairs(transform, x, y)
        all_images.append(image_views.numpy().astype(images.dtype))
        all_masks.append(mask_views.numpy().astype(masks.dtype))
    return np.concatenate(all_images), np.concatenate(all_masks)


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


def class_balanced_weights(masks: np.ndarray) -> np.ndarray:
    """Draw probability of each label map such that every class, and "no foreground", is drawn about
    equally often: each slice gets 1 / (slices holding the class) for each class it holds.

    Uniform draws show a class in proportion to the slices holding it, so a lesion on 3 of 60 slices
    is 5 % of what the codec learns from and its code can be spent on the large organs instead.
    """
    flat = masks.reshape(len(masks), -1)
    num_classes = int(flat.max()) + 1
    present = np.zeros((len(masks), num_classes), bool)
    for k in range(1, num_classes):
        present[:, k] = (flat == k).any(axis=1)
    present[:, 0] = ~present[:, 1:].any(axis=1)
    held = present.sum(axis=0)
    weights = (present / np.maximum(held, 1)).sum(axis=1)
    return weights / weights.sum()


def paste_shapes(masks: np.ndarray, num_classes: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """``masks`` with 1-3 random ellipses of random foreground classes painted over a ``share`` of them.

    The mask codec only has to code label maps, not match an image, so shapes of every class, of every
    size from a few pixels up and in every place, teach it what a few training slices cannot: a small
    structure of a class it has seen only large, or only in one place, still gets a code.
    """
    out = masks.copy()
    size = masks.shape[-1]
    rows, cols = np.mgrid[: masks.shape[-2], :size]
    for i in np.flatnonzero(rng.random(len(out)) < share):
        for _ in range(rng.integers(1, 4)):
            centre = rng.uniform(0, size, 2)
            radii = rng.uniform(1.5, 0.15 * size, 2)
            angle = rng.uniform(0, np.pi)
            dy, dx = rows - centre[0], cols - centre[1]
            u = (dy * np.cos(angle) + dx * np.sin(angle)) / radii[0]
            v = (-dy * np.sin(angle) + dx * np.cos(angle)) / radii[1]
            out[i][u**2 + v**2 <= 1] = rng.integers(1, num_classes)
    return out


def mask_batches(
    masks: np.ndarray, num_classes: int, train: TrainConfig, codec: CodecConfig, device: torch.device
) -> Callable[[int], Iterator[torch.Tensor]]:
    """``epoch -> codec.mask_steps`` batches of (B, H, W) label maps drawn with replacement from
    ``masks`` (:func:`class_balanced_weights` when ``codec.balance_classes``, else uniformly), each
    reshaped by :func:`shape_augmentation` and given :func:`paste_shapes` when ``train.augment``: an
    epoch as long as the codec needs, whatever the number of training slices."""
    transform = shape_augmentation() if train.augment else None
    if transform is not None:
        transform.set_random_state(train.seed)
    labels = torch.from_numpy(masks)
    weights = class_balanced_weights(masks) if codec.balance_classes else None
    share = codec.paste_shapes if train.augment and num_classes > 1 else 0.0

    def batches(epoch: int) -> Iterator[torch.Tensor]:
        rng = np.random.default_rng([train.seed, epoch])
        draws = rng.choice(len(labels), size=(codec.mask_steps, train.batch_size), p=weights)
        for index in draws:
            y = labels[index]
            if transform is not None:
                with untracked():
                    y = torch.stack([torch.as_tensor(transform({"mask": m[None]})["mask"])[0] for m in y])
            if share:
                y = torch.from_numpy(paste_shapes(y.long().numpy(), num_classes, share, rng))
            yield y.long().to(device)

    return batches


def batched(array: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(array), batch_size):
        yield array[start : start + batch_size]
