"""A residual, dilated 1-D CNN over token sequences: the server's mapper and the center's task head.

Tokens arrive in raster order over an h×w grid, so the token directly above another sits w places
earlier. The dilation cycle 1, 2, 4, …, w lets a stack of kernel-3 convolutions see both neighbours
along the row and the rows above and below, which is what a sequence model needs to act like a
spatial one without ever being given the picture.
"""

from __future__ import annotations

import torch
from torch import nn

from privacysf.config.mapper import Activation


def grid_positions(grid: tuple[int, int]) -> torch.Tensor:
    """(2, h, w): each token's row and column on the grid, scaled to [-1, 1] (the position input)."""
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, grid[0]), torch.linspace(-1, 1, grid[1]), indexing="ij")
    return torch.stack([rows, cols])


def nonlinearity(activation: Activation) -> nn.Module:
    """The module for a configured ``mapper.activation``."""
    return nn.GELU() if activation == "gelu" else nn.ReLU()


def dilation_cycle(grid_width: int) -> list[int]:
    dilations, d = [], 1
    while d < grid_width:
        dilations.append(d)
        d *= 2
    return dilations + [grid_width]


class ResidualDilatedBlock(nn.Module):
    """Norm, activation, a ``kernel``-wide convolution, then a 1×1 one, added to the input.

    ``dims`` = 1 for token sequences, 2 for the token grid of :mod:`privacysf.nets.grid`.
    """

    def __init__(
        self, width: int, kernel: int, dilation: int, dims: int = 1, activation: Activation = "relu"
    ) -> None:
        super().__init__()
        padding = dilation * (kernel - 1) // 2
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.body = nn.Sequential(
            nn.GroupNorm(8, width),
            nonlinearity(activation),
            conv(width, width, kernel, padding=padding, dilation=dilation),
            nn.GroupNorm(8, width),
            nonlinearity(activation),
            conv(width, width, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SequenceMapper(nn.Module):
    """Maps (N, L, C_in) token sequences to (N, L, C_out), bounded in [-1, 1] like the mask codes."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        grid: tuple[int, int],
        width: int = 128,
        cycles: int = 2,
        kernel: int = 3,
        use_position: bool = True,
        activation: Activation = "relu",
    ) -> None:
        super().__init__()
        self.grid = grid
        self.use_position = use_position
        self.position: torch.Tensor
        self.register_buffer("position", grid_positions(grid).flatten(1), persistent=False)
        extra = 2 if use_position else 0
        self.stem = nn.Conv1d(in_channels + extra, width, 1)
        blocks = [
            ResidualDilatedBlock(width, kernel, d, activation=activation)
            for _ in range(cycles)
            for d in dilation_cycle(grid[1])
        ]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.GroupNorm(8, width), nonlinearity(activation), nn.Conv1d(width, out_channels, 1)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.transpose(1, 2)
        if self.use_position:
            x = torch.cat([x, self.position.expand(len(x), -1, -1)], dim=1)
        return torch.tanh(self.head(self.blocks(self.stem(x)))).transpose(1, 2)
