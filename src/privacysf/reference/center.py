"""Center side of the reference design: multi-scale image and mask autoencoders (they stay local)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.utils import one_hot
from torch import nn

from privacysf.common.torchutil import class_labels
from privacysf.exchange import (
    CodeBatch,
    decode_codes,
    encode_codes,
    grid_to_tokens,
    split_messages,
    tokens_to_grid,
)

SCALES = (8, 16, 32)
"""Downsampling factor of each latent: 32×32, 16×16 and 8×8 grids at 256²."""
LATENT_CHANNELS = (64, 128, 256)
"""Values per latent position at each scale, as described for the published design."""
STAGE_WIDTHS = (16, 32, 64, 128, 256)
"""Encoder features after each halving (1/2 … 1/32)."""
WIRE_DTYPE = "float32"
NORM = "instance"


class MultiScaleEncoder(nn.Module):
    """Image or one-hot mask -> latents at 1/8, 1/16 and 1/32 of the side (tanh-bounded)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        stages, channels = [], in_channels
        for width in STAGE_WIDTHS:
            stages.append(ResidualUnit(2, channels, width, strides=2, subunits=2, norm=NORM))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleDict(
            {
                str(scale): nn.Conv2d(STAGE_WIDTHS[int(np.log2(scale)) - 1], latent, 1)
                for scale, latent in zip(SCALES, LATENT_CHANNELS, strict=True)
            }
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        latents = {}
        for depth, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if str(2**depth) in self.heads:
                latents[2**depth] = torch.tanh(self.heads[str(2**depth)](x))
        return [latents[s] for s in SCALES]


class MultiScaleDecoder(nn.Module):
    """Latents -> full-resolution output, coarse to fine: each finer latent joins on the way up."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        fine, mid, coarse = LATENT_CHANNELS
        self.up_coarse = Convolution(2, coarse, 128, strides=2, is_transposed=True, norm=NORM)
        self.fuse_mid = ResidualUnit(2, 128 + mid, 128, subunits=1, norm=NORM)
        self.up_mid = Convolution(2, 128, 64, strides=2, is_transposed=True, norm=NORM)
        self.fuse_fine = ResidualUnit(2, 64 + fine, 64, subunits=1, norm=NORM)
        ups, channels = [], 64
        for width in (32, 16, 16):  # 1/8 -> 1/4 -> 1/2 -> 1
            ups += [Convolution(2, channels, width, strides=2, is_transposed=True, norm=NORM)]
            channels = width
        self.up_full = nn.Sequential(*ups, nn.Conv2d(channels, out_channels, 1))

    def forward(self, latents: list[torch.Tensor]) -> torch.Tensor:
        fine, mid, coarse = latents
        x = self.fuse_mid(torch.cat([self.up_coarse(coarse), mid], 1))
        x = self.fuse_fine(torch.cat([self.up_mid(x), fine], 1))
        return self.up_full(x)


class MaskAutoencoder(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = MultiScaleEncoder(num_classes)
        self.decoder = MultiScaleDecoder(num_classes)

    def encode(self, labels: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(one_hot(labels[:, None], self.num_classes).float())


def latent_grids(size: int) -> list[tuple[int, int]]:
    return [(size // s, size // s) for s in SCALES]


def latents_to_messages(latents: list[torch.Tensor], kind: str) -> bytes:
    """One float32 wire message per scale, back to back."""
    return b"".join(
        encode_codes(CodeBatch(grid_to_tokens(z).cpu().numpy(), (z.shape[2], z.shape[3]), kind), WIRE_DTYPE)
        for z in latents
    )


def messages_to_latents(payload: bytes, kind: str, size: int, device: torch.device) -> list[torch.Tensor]:
    latents = []
    for message, grid, channels in zip(
        split_messages(payload, len(SCALES)), latent_grids(size), LATENT_CHANNELS, strict=True
    ):
        batch = decode_codes(message, expect_kind=kind, expect_tokens=(grid[0] * grid[1], channels))
        latents.append(tokens_to_grid(torch.from_numpy(batch.tokens), grid).to(device))
    return latents


@dataclass
class ReferenceCenter:
    """The center's half of a query, with the same interface as :class:`privacysf.center.pipeline.Center`."""

    image_encoder: MultiScaleEncoder
    mask_codec: MaskAutoencoder
    size: int
    device: torch.device

    @torch.no_grad()
    def image_message(self, images: np.ndarray) -> bytes:
        return latents_to_messages(self.image_encoder(torch.from_numpy(images).to(self.device)), "image")

    @torch.no_grad()
    def decode_message(self, message: bytes) -> np.ndarray:
        latents = messages_to_latents(message, "mask", self.size, self.device)
        return class_labels(self.mask_codec.decoder(latents)).cpu().numpy()

    def segment(self, server, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        return np.concatenate(
            [
                self.decode_message(server.map(self.image_message(images[i : i + batch_size])))
                for i in range(0, len(images), batch_size)
            ]
        )
