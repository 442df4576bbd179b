"""Each server augmentation keeps image and mask codes of a pair aligned, token for token."""

import numpy as np
import pytest
import torch

from privacysf.center.keys import CenterKey, KeyedTransform
from privacysf.config import AugmentConfig, KeyConfig
from privacysf.server.augment import augment_pairs, pipeline

GRID = (4, 6)


def aligned_pairs(n=16, channels=3):
    """Mask code = a fixed per-token function of the image code, so misalignment is visible."""
    x = torch.randn(n, GRID[0] * GRID[1], channels)
    return x, 2.0 * x[..., :2] + 1.0


@pytest.mark.parametrize("name", ["reverse", "flip", "shift", "splice", "cutmix", "mixup"])
def test_paired_transforms_keep_alignment(name):
    x, y = aligned_pairs()
    steps = pipeline(AugmentConfig(**{name: 1.0}))
    assert [s[0] for s in steps] == [name]
    new_x, new_y = augment_pairs(x, y, GRID, steps, torch.Generator().manual_seed(0))
    assert not torch.allclose(new_x, x)  # the transform did something
    torch.testing.assert_close(new_y, 2.0 * new_x[..., :2] + 1.0)


def test_reverse_is_a_half_turn_of_the_grid():
    x, y = aligned_pairs(n=1)
    rev_x, _ = augment_pairs(x, y, GRID, pipeline(AugmentConfig(reverse=1.0)), torch.Generator())
    grid = x.reshape(1, *GRID, -1)
    torch.testing.assert_close(rev_x.reshape(1, *GRID, -1), grid.flip(1).flip(2))  # 180° turn


@pytest.mark.parametrize("name", ["token_dropout", "span_mask", "noise"])
def test_input_only_transforms_leave_targets(name):
    x, y = aligned_pairs()
    new_x, new_y = augment_pairs(
        x, y, GRID, pipeline(AugmentConfig(**{name: 1.0})), torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(new_y, y)
    assert not torch.allclose(new_x, x)


def test_probability_zero_is_identity_and_probability_selects_a_subset():
    x, y = aligned_pairs(n=64)
    assert pipeline(AugmentConfig()) == []
    new_x, _ = augment_pairs(
        x, y, GRID, pipeline(AugmentConfig(reverse=0.5)), torch.Generator().manual_seed(1)
    )
    changed = (new_x != x).flatten(1).any(1).float().mean().item()
    assert 0.25 < changed < 0.75
    assert np.isfinite(new_x.numpy()).all()


def test_flip_is_a_grid_flip_of_both_codes():
    x, y = aligned_pairs(n=1)
    new_x, new_y = augment_pairs(
        x, y, GRID, pipeline(AugmentConfig(flip=1.0)), torch.Generator().manual_seed(0)
    )
    grid = x.reshape(1, *GRID, -1)
    flipped = new_x.reshape(1, *GRID, -1)
    assert torch.equal(flipped, grid.flip(1)) or torch.equal(flipped, grid.flip(2))
    torch.testing.assert_close(new_y, 2.0 * new_x[..., :2] + 1.0)


def test_cutmix_pastes_one_box_of_another_pair_into_both_codes():
    """Every changed token lies in one rectangle of the grid, and holds the same token of one partner."""
    x, y = aligned_pairs(n=8)
    new_x, new_y = augment_pairs(
        x, y, GRID, pipeline(AugmentConfig(cutmix=1.0)), torch.Generator().manual_seed(3)
    )
    changed = (new_x != x).any(-1).reshape(8, *GRID)
    rows, cols = changed.any(0).any(1).nonzero().flatten(), changed.any(0).any(0).nonzero().flatten()
    box = torch.zeros(GRID, dtype=torch.bool)
    box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
    assert changed.any() and (changed.any(0) == box).all()  # one solid box, the same for every pair
    for i in range(8):
        if changed[i].any():
            source = [j for j in range(8) if torch.equal(new_x[i][box.flatten()], x[j][box.flatten()])]
            assert len(source) == 1 and source[0] != i
    torch.testing.assert_close(new_y, 2.0 * new_x[..., :2] + 1.0)


def test_span_mask_zeroes_one_contiguous_span_of_the_input():
    x, y = aligned_pairs(n=4)
    new_x, new_y = augment_pairs(
        x, y, GRID, pipeline(AugmentConfig(span_mask=1.0)), torch.Generator().manual_seed(0)
    )
    zeroed = (new_x == 0).all(-1)[0].nonzero().flatten()
    assert len(zeroed) >= 2 and (zeroed.diff() == 1).all()  # one run of tokens in scan order
    torch.testing.assert_close(new_x[:, zeroed.max() + 1 :], x[:, zeroed.max() + 1 :])


@pytest.mark.parametrize("name", ["flip", "shift", "splice", "cutmix", "mixup", "span_mask"])
def test_a_keys_channel_mixing_commutes_with_the_augmentation(name):
    """Augmenting keyed codes is keying augmented codes: the server may augment under a mixing key."""
    x, y = aligned_pairs(n=6, channels=4)
    key = KeyedTransform(CenterKey(bytes(32)), KeyConfig(enabled=True), x.shape[1], {"image": 4, "mask": 2})

    def keyed(t, kind):
        return torch.from_numpy(key.forward(t.numpy(), kind))

    steps = pipeline(AugmentConfig(**{name: 1.0}))
    plain_x, plain_y = augment_pairs(x, y, GRID, steps, torch.Generator().manual_seed(5))
    mixed_x, mixed_y = augment_pairs(
        keyed(x, "image"), keyed(y, "mask"), GRID, steps, torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(mixed_x, keyed(plain_x, "image"), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mixed_y, keyed(plain_y, "mask"), atol=1e-5, rtol=1e-4)
