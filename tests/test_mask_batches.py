"""The mask codec's batches: a fixed number of reshaped label-map draws per epoch, whatever the data."""

import numpy as np
import torch

from privacysf.center.codecs import build_image_encoder, token_grid, train_mask_codec
from privacysf.center.pipeline import Center, mask_ceiling
from privacysf.config import ExperimentConfig
from privacysf.data.loader import mask_batches
from privacysf.data.prepare import prepare

CPU = torch.device("cpu")


def _masks() -> np.ndarray:
    """Three 32² label maps: an organ (1) with a small lesion (2) on two of them."""
    masks = np.zeros((3, 32, 32), np.int64)
    masks[:, 6:22, 8:26] = 1
    masks[0, 10:14, 12:15] = 2
    masks[2, 15:19, 18:21] = 2
    return masks


def test_each_epoch_holds_the_configured_steps_of_reshaped_labels_and_is_seeded():
    masks = _masks()
    batches = mask_batches(masks, batch_size=4, steps=5, augment=True, seed=0, device=CPU)
    epoch = list(batches(0))
    assert len(epoch) == 5 and all(b.shape == (4, 32, 32) and b.dtype == torch.long for b in epoch)
    drawn = torch.cat(epoch).numpy()
    assert set(np.unique(drawn)) <= {0, 1, 2}  # nearest neighbour: labels stay labels
    reshaped = [m for m in drawn if not any(np.array_equal(m, original) for original in masks)]
    assert len(reshaped) >= len(drawn) // 2
    assert any((m == 2).any() for m in reshaped)  # the lesion survives reshaping
    again = mask_batches(masks, batch_size=4, steps=5, augment=True, seed=0, device=CPU)
    np.testing.assert_array_equal(torch.cat(list(again(0))).numpy(), drawn)
    assert not np.array_equal(torch.cat(list(batches(1))).numpy(), drawn)


def test_without_augmentation_every_draw_is_a_training_mask():
    masks = _masks()
    drawn = torch.cat(list(mask_batches(masks, 4, 6, False, 0, CPU)(0))).numpy()
    assert len(drawn) == 24
    assert all(any(np.array_equal(m, original) for original in masks) for m in drawn)


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
