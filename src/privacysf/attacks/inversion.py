"""Model inversion: an attacker decoder trained on k leaked (image, code) or (mask, code) pairs.

The attacker is the server holding a few pairs that leaked from a center (a stolen export, a
colluding insider). It trains a decoder of the same family the centers use, from codes exactly as
they arrive on the wire, and reconstructs held-out codes it never had pairs for. Its decoder is
scored at several training lengths (a curve), because a figure at one short budget can understate it.

Against a keyed token permutation the attacker first puts the tokens back on the grid
(:mod:`privacysf.attacks.token_order` and :mod:`privacysf.attacks.jigsaw` hold the recoveries;
:func:`recover_order` here is the simplest, from token norms alone). Channel mixing needs no special
step: the decoder's first 1×1 convolution absorbs any fixed linear map of the channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from privacysf.attacks.encoded import pool_to_grid, token_norm_maps
from privacysf.attacks.measures import correlation_matrix
from privacysf.common.torchutil import apply_in_batches
from privacysf.exchange import tokens_to_grid
from privacysf.nets.conv import ConvDecoder


@dataclass
class DecoderRecipe:
    """How the attacker trains its decoder: the center's decoder family and optimiser settings."""

    width: int
    downsample: int
    steps: int
    lr: float
    norm: str
    """The centers' ``codec.norm``: the attacker builds the decoder family the centers use."""
    batch_size: int = 8
    seed: int = 0


def recover_order(tokens: np.ndarray, targets: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Estimate where each received token sits on the grid from leaked pairs.

    ``targets`` are (k, 1, H, W) images or one-hot foreground fractions. Returns ``order`` with
    ``tokens[:, order]`` in estimated raster order. Both signs of the norm/intensity relation are
    tried and the stronger assignment is kept.
    """
    norms = token_norm_maps(tokens, grid).reshape(len(tokens), -1).T  # (L, k)
    cells = pool_to_grid(targets, grid).reshape(len(targets), -1).T  # (L, k)
    corr = correlation_matrix(norms, cells)  # token j vs grid cell p, across the k pairs
    best_total, best_order = -np.inf, np.arange(corr.shape[0])
    for sign in (1.0, -1.0):
        rows, cols = linear_sum_assignment(-sign * corr)
        total = float((sign * corr[rows, cols]).sum())
        if total > best_total:
            order = np.empty_like(rows)
            order[cols] = rows
            best_total, best_order = total, order
    return best_order


def train_decoder(
    tokens: np.ndarray,
    targets: np.ndarray,
    grid: tuple[int, int],
    out_channels: int,
    recipe: DecoderRecipe,
    device: torch.device,
    checkpoints: Sequence[int] = (),
    on_checkpoint: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Fit a ConvDecoder from codes to images (MSE, ``out_channels`` = 1) or to labels (cross-entropy).

    ``on_checkpoint(step, decoder)`` is called (decoder in eval mode) after each step count in
    ``checkpoints``; training then goes on, so one run gives the whole curve.
    """
    g = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    decoder = ConvDecoder(tokens.shape[-1], out_channels, recipe.width, recipe.downsample, recipe.norm).to(
        device
    )
    optimiser = torch.optim.Adam(decoder.parameters(), lr=recipe.lr)
    codes = tokens_to_grid(torch.from_numpy(tokens), grid)
    goal = torch.from_numpy(targets)
    decoder.train()
    for step in range(1, recipe.steps + 1):
        pick = torch.randint(len(codes), (min(recipe.batch_size, len(codes)),), generator=g)
        out = decoder(codes[pick].to(device))
        goal_batch = goal[pick].to(device)
        if out_channels == 1:
            loss = nn.functional.mse_loss(out, goal_batch)
        else:
            loss = nn.functional.cross_entropy(out, goal_batch.long())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if on_checkpoint is not None and step in checkpoints:
            on_checkpoint(step, decoder.eval())
            decoder.train()
    return decoder.eval()


def decode_with(decoder: nn.Module, tokens: np.ndarray, grid: tuple[int, int], device) -> np.ndarray:
    """Apply an attacker decoder to (N, L, C) tokens: images (N, 1, H, W) or label maps (N, H, W)."""
    out = apply_in_batches(lambda t: decoder(tokens_to_grid(t, grid)), tokens, device).numpy()
    return out if out.shape[1] == 1 else out.argmax(axis=1)


def foreground_fraction(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) labels -> (N, 1, H, W) 0/1 foreground, the mask's analogue of intensity."""
    return (masks > 0).astype(np.float32)[:, None]


def invert(
    leaked_tokens: np.ndarray,
    leaked_targets: np.ndarray,
    held_tokens: np.ndarray,
    grid: tuple[int, int],
    out_channels: int,
    recipe: DecoderRecipe,
    device: torch.device,
    checkpoints: Sequence[int] = (),
) -> dict[int, np.ndarray]:
    """The inversion attack end to end: reconstructions of ``held_tokens`` after each step count.

    ``leaked_targets`` are images (k, 1, H, W) when ``out_channels`` is 1, else label maps (k, H, W).
    Tokens must already be in the attacker's best estimate of raster order. Returns
    ``{steps: reconstructions}`` for every checkpoint and for ``recipe.steps``.
    """
    out: dict[int, np.ndarray] = {}

    def record(step: int, decoder: nn.Module) -> None:
        out[step] = decode_with(decoder, held_tokens, grid, device)

    decoder = train_decoder(
        leaked_tokens, leaked_targets, grid, out_channels, recipe, device, checkpoints, record
    )
    if recipe.steps not in out:
        record(recipe.steps, decoder)
    return out
