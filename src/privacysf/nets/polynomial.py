"""A mapper a server can evaluate on encrypted codes: two convolutions over the token grid around a square.

Homomorphic encryption (CKKS) adds and multiplies ciphertexts, and rotates the slots of one; every
other operation is out of reach. So the mapper for encrypted queries is a polynomial: a ``kernel``×
``kernel`` convolution to ``width`` channels, the square of each value, and a second convolution to
the mask code. That is three multiplications deep, which fits the modulus chain of a ring of degree
8,192 at 128-bit security, and a convolution over a packed grid is a few slot rotations and
plaintext products (``privacysf.server.encrypted``).

In ``task`` mode the center trains its image encoder with a head of this same shape, so the codes are
shaped for a local quadratic map; the deep part of the pipeline stays on the center. No tanh at the
end (a ciphertext cannot be clipped): in evaluation the output is clipped to the codes' range [-1, 1],
exactly what the center does after decrypting.
"""

from __future__ import annotations

import torch
from torch import nn

from privacysf.config.codec import Padding


class PolynomialMapper(nn.Module):
    """Maps (N, L, C_in) raster-order tokens on ``grid`` to (N, L, C_out): conv, square, conv.

    Both convolutions are zero-padded by default, so the map of a token depends on the
    ``2·(kernel-1)+1``-wide square of tokens around it and on nothing else: the encrypted evaluation
    reproduces it slot by slot. With ``padding="circular"`` the grid wraps around instead, and the map
    commutes exactly with every cyclic shift of whole tokens (per-query shifts).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        grid: tuple[int, int],
        width: int = 32,
        kernel: int = 3,
        padding: Padding = "zeros",
    ) -> None:
        super().__init__()
        self.grid = grid
        self.first = nn.Conv2d(in_channels, width, kernel, padding=kernel // 2, padding_mode=padding)
        self.second = nn.Conv2d(width, out_channels, kernel, padding=kernel // 2, padding_mode=padding)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.first(tokens.transpose(1, 2).reshape(len(tokens), -1, *self.grid))
        out = self.second(hidden * hidden).flatten(2).transpose(1, 2)
        return out if self.training else out.clamp(-1, 1)
