"""A U-Net over the token grid: a mapper whose cost grows with the number of tokens, not faster.

Tokens arrive in raster order over an h×w grid, so the sequence folds back into that grid at no cost.
There, each level halves the side (a 2×2 stride-2 convolution) until two tokens or fewer remain
across, so tokens at opposite corners meet at the bottom; the way back up adds each level's features
to the upsampled ones (a U-Net's skips). Each level holds a quarter of the positions of the one above
and its width stops growing at the last entry of ``channels``, so the arithmetic is a geometric sum:
linear in the tokens with a small constant, where the 1-D mapper runs every block at full length.

It is written in torch alone (no MONAI): the server installs without MONAI.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

from privacysf.config.mapper import Activation
from privacysf.nets.sequence import ResidualDilatedBlock, grid_positions, nonlinearity


def halvings(grid: tuple[int, int]) -> int:
    """How many times the grid's longer side is halved to leave two tokens or fewer across."""
    return max(0, math.ceil(math.log2(max(grid) / 2)))


def _blocks(width: int, count: int, activation: Activation) -> nn.Sequential:
    return nn.Sequential(*(ResidualDilatedBlock(width, 3, 1, 2, activation) for _ in range(count)))


class GridUNetMapper(nn.Module):
    """Maps (N, L, C_in) raster-order token sequences on ``grid`` to (N, L, C_out) in [-1, 1].

    ``channels`` are the widths of the full grid and of each halving after it; halvings past its end
    keep its last width. ``res_units`` residual blocks run at each level on the way down and again on
    the way up. The grid is zero-padded at its bottom and right to a multiple of 2^halvings (any grid
    side works) and cropped back.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        grid: tuple[int, int],
        channels: tuple[int, ...] = (32, 64, 128),
        res_units: int = 1,
        use_position: bool = True,
        activation: Activation = "relu",
    ) -> None:
        super().__init__()
        self.grid = grid
        self.use_position = use_position
        levels = halvings(grid)
        self.multiple = 2**levels
        widths = [channels[min(i, len(channels) - 1)] for i in range(levels + 1)]
        self.position: torch.Tensor
        self.register_buffer("position", grid_positions(grid)[None], persistent=False)
        extra = 2 if use_position else 0
        self.stem = nn.Conv2d(in_channels + extra, widths[0], 3, padding=1)
        self.down = nn.ModuleList(_blocks(w, res_units, activation) for w in widths[:-1])
        self.pool = nn.ModuleList(nn.Conv2d(a, b, 2, stride=2) for a, b in pairwise(widths))
        self.bottom = _blocks(widths[-1], max(res_units, 1), activation)
        self.unpool = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in pairwise(widths))
        self.up = nn.ModuleList(_blocks(w, res_units, activation) for w in widths[:-1])
        self.head = nn.Sequential(
            nn.GroupNorm(8, widths[0]), nonlinearity(activation), nn.Conv2d(widths[0], out_channels, 1)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        (h, w), n = self.grid, len(tokens)
        x = tokens.transpose(1, 2).reshape(n, -1, h, w)
        if self.use_position:
            x = torch.cat([x, self.position.expand(n, -1, -1, -1)], dim=1)
        x = nn.functional.pad(x, (0, -w % self.multiple, 0, -h % self.multiple))
        x = self.stem(x)
        skips = []
        for blocks, pool in zip(self.down, self.pool, strict=True):
            x = blocks(x)
            skips.append(x)
            x = pool(x)
        x = self.bottom(x)
        for blocks, unpool, skip in zip(
            reversed(self.up), reversed(self.unpool), reversed(skips), strict=True
        ):
            x = blocks(unpool(x) + skip)
        y = self.head(x)[:, :, :h, :w]
        return torch.tanh(y).flatten(2).transpose(1, 2)
