"""A transformer over token sequences with learned position embeddings: the order-blind mapper.

Self-attention treats tokens as a set; all it knows of order is one learned embedding per position.
A fixed secret permutation of the positions therefore only relabels which embedding goes with which
token, and the network learns the same function. That is what lets a center shuffle its tokens with a
secret key (``key.permute_tokens``) without costing the server anything but the order-based
augmentations; the 1-D CNN mapper, which relies on raster order, cannot.
"""

from __future__ import annotations

import torch
from torch import nn


class TokenTransformer(nn.Module):
    """Maps (N, L, C_in) token sequences to (N, L, C_out), bounded in [-1, 1] like the mask codes."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        tokens: int,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_channels, width)
        self.position = nn.Parameter(torch.zeros(1, tokens, width))
        nn.init.trunc_normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_channels))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.blocks(self.embed(tokens) + self.position)))
