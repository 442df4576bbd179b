"""Server side of the reference design: one pyramid-pooling mapper per latent scale.

Like :mod:`privacysf.server`, it sees wire messages only and imports nothing that reads images.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import ResidualUnit
from torch import nn
from torch.nn import functional as F

from privacysf.exchange import (
    CodeBatch,
    decode_codes,
    encode_codes,
    grid_to_tokens,
    split_messages,
    tokens_to_grid,
)

POOL_BINS = (1, 2, 3, 6)
"""Pyramid-pooling grid sizes (PSPNet's): context from the whole latent down to 6×6 regions."""


class PyramidPooling(nn.Module):
    """Average-pool to each bin grid, project, upsample back and concatenate with the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        branch = max(channels // len(POOL_BINS), 8)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(channels, branch, 1), nn.ReLU())
            for b in POOL_BINS
        )
        self.merge = nn.Conv2d(channels + branch * len(POOL_BINS), channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        pooled = [F.interpolate(b(x), size=size, mode="bilinear", align_corners=False) for b in self.branches]
        return self.merge(torch.cat([x, *pooled], 1))


class ScaleMapper(nn.Module):
    """Image latent -> mask latent at one scale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            ResidualUnit(2, channels, channels, subunits=2, norm="instance"),
            PyramidPooling(channels),
            ResidualUnit(2, channels, channels, subunits=2, norm="instance"),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x))


class ReferenceMapper(nn.Module):
    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.scales = nn.ModuleList(ScaleMapper(c) for c in channels)

    def forward(self, latents: list[torch.Tensor]) -> list[torch.Tensor]:
        return [m(z) for m, z in zip(self.scales, latents, strict=True)]


class ReferenceServer:
    """Serves a trained :class:`ReferenceMapper`: image-latent messages in, mask-latent messages out."""

    def __init__(self, mapper: ReferenceMapper, device: torch.device) -> None:
        self.mapper, self.device = mapper.eval(), device

    @torch.no_grad()
    def map(self, payload: bytes) -> bytes:
        batches = [
            decode_codes(m, expect_kind="image") for m in split_messages(payload, len(self.mapper.scales))
        ]
        latents = [tokens_to_grid(torch.from_numpy(b.tokens), b.grid).to(self.device) for b in batches]
        return b"".join(
            encode_codes(
                CodeBatch(grid_to_tokens(z).cpu().numpy(), b.grid, "mask"), b.wire_dtype or "float32"
            )
            for z, b in zip(self.mapper(latents), batches, strict=True)
        )
