"""Each server augmentation keeps image and mask codes of a pair aligned, token for token."""

import numpy as np
import pytest
import torch

from privacysf.config import AugmentConfig
from privacysf.server.augment import augment_pairs, pipeline

GRID = (4, 6)


def aligned_pairs(n=16, channels=3):
    """Mask code = a fixed per-token function of the image code, so misalignment is visible."""
    x = torch.randn(n, GRID[0] * GRID[1], channels)
    return x, 2.0 * x[..., :2] + 1.0


@pytest.mark.parametrize("name", ["reverse", "flip", "shift", "splice", "mixup"])
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


@pytest.mark.parametrize("name", ["token_dropout", "noise"])
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
