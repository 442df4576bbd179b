"""Transformers over token sequences with learned position embeddings: the order-blind mappers.

Self-attention treats tokens as a set; all it knows of order is one learned embedding per position.
A fixed secret permutation of the positions therefore only relabels which embedding goes with which
token, and the network learns the same function. That is what lets a center shuffle its tokens with a
secret key (``key.permute_tokens``) without costing the server anything but the order-based
augmentations; the grid and sequence CNN mappers, which rely on raster order, cannot.

Attention between every pair of tokens costs the square of their number: 4,096 tokens at 256², where
the grid mapper's cost grows with the tokens alone. :class:`PooledTokenTransformer` keeps the order
blindness at a cost linear in the tokens: they exchange information only through a fixed number of
learned latent slots (the read and write of Perceiver IO, Jaegle et al., ICLR 2022), which attend to
tokens by content and position, never by an index a permutation would change. Reading and writing in
every block is the induced set attention block of the Set Transformer (Lee et al., ICML 2019); the
per-token MLP between blocks is that of a transformer layer. Its cost is then almost all per token
(projections and MLP), so the tokens may run narrower than the slots (``token_width``): each token
carries only its own code and the context written back to it, while the few slots carry the picture.
"""

from __future__ import annotations

import torch
from torch import nn


class TokenTransformer(nn.Module):
    """Maps (N, L, C_in) token sequences to (N, L, C_out), bounded in [-1, 1] like the mask codes;
    every token attends to every other (cost quadratic in L)."""

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
        self.position = _learned_vectors(tokens, width)
        self.blocks = nn.TransformerEncoder(_encoder_layer(width, heads), depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_channels))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.blocks(self.embed(tokens) + self.position)))


class PooledTokenTransformer(nn.Module):
    """Maps (N, L, C_in) token sequences to (N, L, C_out) like :class:`TokenTransformer`, with tokens
    exchanging information only through ``latents`` learned slots: cost linear in L.

    Each block reads the tokens into the slots (the slots attend to the tokens), lets the slots attend
    to one another, writes them back (each token attends to the slots) and runs a per-token MLP. A
    token's own value reaches its output through the residual path; its context comes from the slots,
    which learn from the position embeddings which region of the grid each one gathers. The slots are
    ``width`` wide and the tokens ``token_width`` (default: the same); attention between the two
    projects across.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        tokens: int,
        latents: int,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        token_width: int | None = None,
    ) -> None:
        super().__init__()
        token_width = token_width or width
        self.embed = nn.Linear(in_channels, token_width)
        self.position = _learned_vectors(tokens, token_width)
        self.latents = _learned_vectors(latents, width)
        self.blocks = nn.ModuleList(_PooledBlock(width, token_width, heads) for _ in range(depth))
        self.head = nn.Sequential(nn.LayerNorm(token_width), nn.Linear(token_width, out_channels))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position
        # a copy, not expand(): FlopCounterMode's module tracker fails on an expanded parameter
        slots = self.latents.repeat(x.shape[0], 1, 1)
        for block in self.blocks:
            x, slots = block(x, slots)
        return torch.tanh(self.head(x))


class _PooledBlock(nn.Module):
    """Read tokens into slots, mix the slots, write them back to the tokens, per-token MLP."""

    def __init__(self, width: int, token_width: int, heads: int) -> None:
        super().__init__()
        self.read = _CrossAttention(width, token_width, heads)
        self.mix = _encoder_layer(width, heads)
        self.write = _CrossAttention(token_width, width, heads)
        self.mlp = nn.Sequential(
            nn.LayerNorm(token_width),
            nn.Linear(token_width, 2 * token_width),
            nn.GELU(),
            nn.Linear(2 * token_width, token_width),
        )

    def forward(self, x: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slots = self.mix(slots + self.read(slots, x))
        x = x + self.write(x, slots)
        return x + self.mlp(x), slots


class _CrossAttention(nn.Module):
    """Pre-norm multi-head attention of ``queries`` over ``context`` (its residual left to the caller),
    at the queries' width; keys and values are projected from the context's."""

    def __init__(self, query_width: int, context_width: int, heads: int) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(query_width)
        self.context_norm = nn.LayerNorm(context_width)
        self.attention = nn.MultiheadAttention(
            query_width, heads, dropout=0.0, batch_first=True, kdim=context_width, vdim=context_width
        )

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        context = self.context_norm(context)
        return self.attention(self.query_norm(queries), context, context, need_weights=False)[0]


def _encoder_layer(width: int, heads: int) -> nn.TransformerEncoderLayer:
    """Self-attention and MLP, pre-norm, as both transformers use it: over all tokens in one, over
    the slots in the other."""
    return nn.TransformerEncoderLayer(
        width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )


def _learned_vectors(count: int, width: int) -> nn.Parameter:
    """``count`` learned vectors of ``width``, shape (1, count, width): one per token position (all
    either transformer knows of the order) or one per slot."""
    vectors = nn.Parameter(torch.empty(1, count, width))
    nn.init.trunc_normal_(vectors, std=0.02)
    return vectors
