"""The mask codec's batches: a fixed number of reshaped label-map draws per epoch, whatever the data."""

from contextlib import nullcontext

import numpy as np
import torch
from monai.data import get_track_meta

from privacysf.center.codecs import build_image_encoder, codec_training, token_grid, train_mask_codec
from privacysf.center.pipeline import Center, mask_ceiling
from privacysf.common.training import epoch_order, out_of_patience
from privacysf.config import CodecConfig, ExperimentConfig, TrainConfig
from privacysf.data.loader import (
    augmentation,
    augmented_views,
    class_balanced_weights,
    mask_batches,
    paste_shapes,
    shape_augmentation,
    slice_batches,
    untracked,
)
from privacysf.data.prepare import prepare
from privacysf.data.preprocess import SliceSet

CPU = torch.device("cpu")


def _masks() -> np.ndarray:
    """Three 32² label maps: an organ (1) with a small lesion (2) on two of them."""
    masks = np.zeros((3, 32, 32), np.int64)
    masks[:, 6:22, 8:26] = 1
    masks[0, 10:14, 12:15] = 2
    masks[2, 15:19, 18:21] = 2
    return masks


def _draws(masks, batch_size, steps, augment, seed=0, balance=True, paste=0.0):
    train = TrainConfig(batch_size=batch_size, augment=augment, seed=seed)
    codec = CodecConfig(mask_steps=steps, balance_classes=balance, paste_shapes=paste)
    return mask_batches(masks, 3, train, codec, CPU)


def test_each_epoch_holds_the_configured_steps_of_reshaped_labels_and_is_seeded():
    masks = _masks()
    batches = _draws(masks, batch_size=4, steps=5, augment=True)
    epoch = list(batches(0))
    assert len(epoch) == 5 and all(b.shape == (4, 32, 32) and b.dtype == torch.long for b in epoch)
    drawn = torch.cat(epoch).numpy()
    assert set(np.unique(drawn)) <= {0, 1, 2}  # nearest neighbour: labels stay labels
    reshaped = [m for m in drawn if not any(np.array_equal(m, original) for original in masks)]
    assert len(reshaped) >= len(drawn) // 2
    assert any((m == 2).any() for m in reshaped)  # the lesion survives reshaping
    again = _draws(masks, batch_size=4, steps=5, augment=True)
    np.testing.assert_array_equal(torch.cat(list(again(0))).numpy(), drawn)
    assert not np.array_equal(torch.cat(list(batches(1))).numpy(), drawn)


def test_without_augmentation_every_draw_is_a_training_mask_even_with_shapes_asked_for():
    masks = _masks()
    drawn = torch.cat(list(_draws(masks, 4, 6, False, paste=1.0)(0))).numpy()
    assert len(drawn) == 24
    assert all(any(np.array_equal(m, original) for original in masks) for m in drawn)


def test_balanced_draws_show_a_rare_class_as_often_as_a_common_one():
    """A lesion on 2 of 40 slices: uniform draws show it on 5 % of maps, balanced draws on about a
    third (organ, lesion and empty slices each get a third of the draws)."""
    masks = np.zeros((40, 16, 16), np.int64)
    masks[:30, 2:12, 2:12] = 1
    masks[:2, 4:7, 4:7] = 2
    weights = class_balanced_weights(masks)
    np.testing.assert_allclose(weights.sum(), 1.0)
    assert weights[0] > 10 * weights[10] > 0 and weights[35] > weights[10]

    def lesion_share(balance: bool) -> float:
        drawn = torch.cat(list(_draws(masks, 8, 50, False, balance=balance)(0))).numpy()
        return float((drawn == 2).any(axis=(1, 2)).mean())

    assert lesion_share(False) < 0.12 and 0.25 < lesion_share(True) < 0.45


def test_pasted_shapes_add_every_class_in_sizes_down_to_a_few_pixels():
    masks = np.zeros((200, 64, 64), np.int64)
    pasted = paste_shapes(masks, 4, 0.5, np.random.default_rng(0))
    changed = pasted.reshape(200, -1).any(axis=1)
    assert 0.4 < changed.mean() < 0.6  # the share asked for, and only there
    assert set(np.unique(pasted)) == {0, 1, 2, 3}
    areas = [int((m == k).sum()) for m in pasted for k in (1, 2, 3) if (m == k).any()]
    assert min(areas) < 30 and max(areas) > 150
    np.testing.assert_array_equal(masks, 0)  # the drawn maps themselves are left alone


def test_a_few_slice_set_gets_a_codec_that_keeps_its_masks():
    """Four training slices give one step an epoch in single passes; drawn steps give the codec what
    it needs to learn (the totalseg-mr case of ``codec.mask_steps``)."""
    settings = ["data.dataset=phantom", "data.size=64", "data.phantom_cases=24", "train.epochs=6"]
    settings += ["train.progress=false", "train.threads=2", "codec.width=8"]
    cfg = ExperimentConfig().override(settings)
    data = prepare(cfg.data)
    few = data.train.subset(np.arange(4))
    ceilings = {}
    for steps in (0, 16):
        run = cfg.override([f"codec.mask_steps={steps}"])
        torch.manual_seed(0)
        codec, _ = train_mask_codec(run, few, data.val, data.info.num_classes, CPU, None)
        center = Center(run, codec, build_image_encoder(run.codec), token_grid(64, run.codec), CPU)
        ceilings[steps] = mask_ceiling(center, data.test.masks, data.info.num_classes, "int8")
    assert ceilings[16] > ceilings[0] + 0.1, ceilings


def test_a_small_set_gets_min_steps_an_epoch_and_a_large_one_keeps_its_single_pass():
    few = epoch_order(16, 8, 12, seed=3)
    assert len(few) == 12 and all(len(b) == 8 for b in few)
    np.testing.assert_array_equal(np.bincount(np.concatenate(few)), 6)  # each slice 6 times
    many = epoch_order(200, 8, 12, seed=3)
    assert len(many) == 25
    np.testing.assert_array_equal(np.concatenate(many), np.random.default_rng(3).permutation(200))


def test_the_mask_codec_trains_its_own_epochs_at_most_train_epochs():
    """Fails if ``codec.mask_epochs`` stops reaching the codec's training loop, or stops being capped
    by ``train.epochs`` (a federated round's local epochs are set there)."""
    settings = ["data.dataset=phantom", "data.size=32", "data.phantom_cases=6", "train.epochs=3"]
    settings += ["train.progress=false", "train.patience=5", "codec.width=4", "codec.mask_steps=1"]
    cfg = ExperimentConfig().override(settings)
    data = prepare(cfg.data)
    k = data.info.num_classes
    for mask_epochs, trained in ((None, 3), (2, 2), (9, 3)):
        run = cfg.override([f"codec.mask_epochs={'null' if mask_epochs is None else mask_epochs}"])
        _, result = train_mask_codec(run, data.train, data.val, k, CPU, None)
        assert result.epochs_trained == trained, mask_epochs


def _twice(transform, items: list[dict]) -> tuple[list[dict], list[dict]]:
    """``transform`` applied to ``items`` with MONAI's tracking on, then off, from the same seed."""
    outputs = []
    for context in (nullcontext, untracked):
        transform.set_random_state(3)
        with context():
            outputs.append([transform(dict(item)) for item in items])
    return outputs[0], outputs[1]


def test_augmented_batches_are_plain_tensors_with_the_values_tracked_transforms_give():
    """Fails if the loader's transforms run with MONAI's metadata tracking again (slower, and the
    batches come out as ``MetaTensor``) or if ``untracked`` leaves the global switch off."""
    masks = _masks()
    images = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
    slices = SliceSet(images, masks, np.ones((3, 2)), ["a", "b", "c"], np.arange(3), np.ones(3))
    train = TrainConfig(batch_size=2, augment=True, min_steps=2)
    drawn = list(_draws(masks, batch_size=2, steps=3, augment=True)(0))
    passed = [t for batch in slice_batches(slices, train, CPU)(0) for t in batch]
    assert all(type(t) is torch.Tensor for t in drawn + passed)
    assert get_track_meta()  # put back on leaving
    items = [
        {"image": torch.from_numpy(x), "mask": torch.from_numpy(m[None])}
        for x, m in zip(images, masks, strict=True)
    ]
    for transform, keys in ((shape_augmentation(), ["mask"]), (augmentation(), ["image", "mask"])):
        tracked, plain = _twice(transform, [{k: item[k] for k in keys} for item in items])
        assert {type(item[k]).__name__ for item in tracked for k in keys} == {"MetaTensor"}
        assert all(
            torch.equal(a[k].as_tensor(), b[k]) for a, b in zip(tracked, plain, strict=True) for k in keys
        )


def test_the_mask_codec_is_never_stopped_early():
    """With ``train.patience=1``, every other network stops after one epoch without a better score;
    the mask codec's training settings let no epoch of its schedule (``codec.mask_epochs`` or
    ``train.epochs``) end it. Fails if ``codec_training`` stops overriding the patience."""
    cfg = ExperimentConfig().override(["train.epochs=6", "train.patience=1"])
    for mask_epochs, epochs in ((None, 6), (4, 4)):
        run = cfg.override([f"codec.mask_epochs={'null' if mask_epochs is None else mask_epochs}"])
        training = codec_training(run)
        assert training.epochs == epochs
        stops = [
            (e, best)
            for best in range(1, epochs)
            for e in range(best, epochs)
            if out_of_patience(e, best, training.patience)
        ]
        assert not stops, stops
        assert out_of_patience(2, 1, run.train.patience)  # the others' rule would have stopped it


def test_uploaded_views_transform_each_image_with_its_own_mask():
    """Each extra view is its slice flipped the same way in image and mask (with a gain and an offset
    on the intensities alone), the slices themselves come first, and a seed draws the same views.
    Fails if the image and the mask are flipped apart (``RandFlipd(keys="image", ...)``)."""
    rng = np.random.default_rng(1)
    images = rng.standard_normal((4, 1, 24, 24)).astype(np.float32)
    masks = rng.integers(0, 3, (4, 24, 24))
    views, labels = augmented_views(images, masks, 3, seed=5)
    assert views.shape == (12, 1, 24, 24) and labels.shape == (12, 24, 24)
    assert views.dtype == images.dtype and labels.dtype == masks.dtype
    assert np.array_equal(views[:4], images) and np.array_equal(labels[:4], masks)
    flips = [lambda a: a, lambda a: a[..., ::-1, :], lambda a: a[..., ::-1], lambda a: a[..., ::-1, ::-1]]
    for view, label, image, mask in zip(
        views[4:], labels[4:], np.tile(images, (2, 1, 1, 1)), np.tile(masks, (2, 1, 1)), strict=True
    ):
        [flip] = [f for f in flips if np.array_equal(label, f(mask))]
        assert np.corrcoef(view.ravel(), flip(image).ravel())[0, 1] > 0.999
    assert not np.array_equal(labels[4:8], masks)  # some view is flipped
    again, _ = augmented_views(images, masks, 3, seed=5)
    assert np.array_equal(again, views)
    assert augmented_views(images, masks, 1, seed=5)[0] is images


def test_affine_views_keep_each_image_on_its_own_mask():
    """The ``affine`` views turn, scale and shift image and mask with one draw: an image drawn as its
    own mask stays on it (correlation near 1). Fails if the mask is left out of the affine
    (``RandAffined(keys="image", ...)``)."""
    rng = np.random.default_rng(2)
    masks = np.zeros((3, 32, 32), np.int64)
    for i, (top, left) in enumerate([(4, 6), (12, 3), (9, 15)]):
        masks[i, top : top + 12, left : left + 9] = 1
        masks[i, top + 3 : top + 7, left + 2 : left + 5] = 2
    images = (masks[:, None] + 0.05 * rng.standard_normal((3, 1, 32, 32))).astype(np.float32)
    views, labels = augmented_views(images, masks, 4, seed=3, kind="affine")
    assert not np.array_equal(labels[3:6], masks)
    for view, label in zip(views[3:], labels[3:], strict=True):
        assert np.corrcoef(view.ravel(), label.ravel())[0, 1] > 0.9
