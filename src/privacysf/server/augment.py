"""Augmentation of code pairs on the server, which can no longer augment images.

Every transform acts on the image code and the mask code of a pair together, so the pair stays a
valid example, except ``token_dropout``, ``span_mask`` and ``noise``, which perturb only the input.
Reorderings and cuts (reverse, flip, shift, splice, cutmix) are only valid to the extent the
center's encoders commute with them; that is why each is an option measured in the ablation rather
than on by default. A key's channel mixing (without its permutation) changes none of this: it is one
linear map applied to every token, so it commutes with moving, cutting, zeroing and mixing tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from privacysf.config import AugmentConfig

DROPOUT_RATE = 0.1
NOISE_STD = 0.05


def _grid(t: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    return t.reshape(len(t), grid[0], grid[1], t.shape[-1])


def reverse(x, y, grid, g):
    return x.flip(1), y.flip(1)


def flip(x, y, grid, g):
    dim = 1 + int(torch.randint(2, (1,), generator=g))
    return _grid(x, grid).flip(dim).reshape(x.shape), _grid(y, grid).flip(dim).reshape(y.shape)


def make_shift(max_shift: int):
    def shift(x, y, grid, g):
        dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=g))
        roll = lambda t: _grid(t, grid).roll((dy, dx), dims=(1, 2)).reshape(t.shape)  # noqa: E731
        return roll(x), roll(y)

    return shift


def _from_partner(x, y, tokens: torch.Tensor, g):
    """Both codes with the chosen ``tokens`` (a bool mask over the L tokens) taken from one other pair
    of the batch: the cut that ``splice`` and ``cutmix`` share, so mask codes are cut where images are."""
    partner = torch.randperm(len(x), generator=g)
    keep = ~tokens.to(x.device)[None, :, None]
    return torch.where(keep, x, x[partner]), torch.where(keep, y, y[partner])


def splice(x, y, grid, g):
    length = x.shape[1]
    size = int(torch.randint(length // 8, length // 2 + 1, (1,), generator=g))
    start = int(torch.randint(0, length - size + 1, (1,), generator=g))
    tokens = torch.zeros(length, dtype=torch.bool)
    tokens[start : start + size] = True
    return _from_partner(x, y, tokens, g)


def cutmix(x, y, grid, g):
    """Paste a box of tokens (a quarter to a half of each side) from another pair into both codes: the
    2-D cut of ``splice``, so a pasted region stays a region of the image, not a band of rows."""
    h, w = grid
    size_h = int(torch.randint(max(1, h // 4), max(1, h // 2) + 1, (1,), generator=g))
    size_w = int(torch.randint(max(1, w // 4), max(1, w // 2) + 1, (1,), generator=g))
    top = int(torch.randint(0, h - size_h + 1, (1,), generator=g))
    left = int(torch.randint(0, w - size_w + 1, (1,), generator=g))
    tokens = torch.zeros(grid, dtype=torch.bool)
    tokens[top : top + size_h, left : left + size_w] = True
    return _from_partner(x, y, tokens.flatten(), g)


def make_mixup(alpha: float):
    def mixup(x, y, grid, g):
        seed = int(torch.randint(2**31 - 1, (1,), generator=g))
        weight = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, (len(x), 1, 1)))
        weight = weight.to(x.device, x.dtype)
        partner = torch.randperm(len(x), generator=g)
        return weight * x + (1 - weight) * x[partner], weight * y + (1 - weight) * y[partner]

    return mixup


def token_dropout(x, y, grid, g):
    keep = (torch.rand(x.shape[:2], generator=g) >= DROPOUT_RATE).to(x.device, x.dtype)
    return x * keep[..., None], y


def span_mask(x, y, grid, g):
    """Zero one contiguous span of a tenth to a quarter of the input's tokens (image code only), the
    span masking of sequence models; under a secret permutation the span is scattered tokens."""
    length = x.shape[1]
    size = int(torch.randint(max(1, length // 10), max(1, length // 4) + 1, (1,), generator=g))
    start = int(torch.randint(0, length - size + 1, (1,), generator=g))
    x = x.clone()
    x[:, start : start + size] = 0
    return x, y


def noise(x, y, grid, g):
    return x + NOISE_STD * torch.randn(x.shape, generator=g).to(x.device), y


def pipeline(cfg: AugmentConfig) -> list[tuple[str, float, object]]:
    """The enabled transforms in a fixed order, each with its probability."""
    steps = [
        ("reverse", cfg.reverse, reverse),
        ("flip", cfg.flip, flip),
        ("shift", cfg.shift, make_shift(cfg.max_shift)),
        ("splice", cfg.splice, splice),
        ("cutmix", cfg.cutmix, cutmix),
        ("mixup", cfg.mixup, make_mixup(cfg.mixup_alpha)),
        ("token_dropout", cfg.token_dropout, token_dropout),
        ("span_mask", cfg.span_mask, span_mask),
        ("noise", cfg.noise, noise),
    ]
    return [(name, p, fn) for name, p, fn in steps if p > 0]


def augment_pairs(
    x: torch.Tensor, y: torch.Tensor, grid: tuple[int, int], steps, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply each enabled transform to a random subset (its probability) of the batch's pairs."""
    for _, probability, transform in steps:
        chosen = torch.rand(len(x), generator=g) < probability
        if chosen.any():
            index = chosen.nonzero().flatten().to(x.device)
            new_x, new_y = transform(x[index], y[index], grid, g)
            x, y = x.index_copy(0, index, new_x), y.index_copy(0, index, new_y)
    return x, y
