"""The Privacy-SF workflow as a center runs it, with the server reached through wire messages.

``fit``: train the center's mask codec and image encoder on its own data, encode, send code pairs to
the server, let the server train its mapper. ``segment``: encode a new image, send the code, decode the
returned mask code. The server object here is in-process, but it is handed nothing but ``bytes`` in
the exchange format, exactly what would cross the network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from privacysf.center.codecs import (
    MaskCodec,
    codec_signature,
    decode_masks,
    encode_images,
    encode_masks,
    token_grid,
    train_image_encoder,
    train_mask_codec,
)
from privacysf.center.keys import CenterKey, KeyedTransform
from privacysf.config import ExperimentConfig
from privacysf.data.preprocess import SliceSet
from privacysf.exchange import CodeBatch, decode_codes, encode_codes
from privacysf.exchange.wire import SCAN_ORDER
from privacysf.metrics import mean_dice
from privacysf.nets.conv import ConvEncoder
from privacysf.server import MappingServer
from privacysf.torchutil import load_checkpoint

MASK_CODEC = Path("center") / "mask_codec.pt"
IMAGE_ENCODER = Path("center") / "image_encoder.pt"
KEY = Path("center") / "key.json"
MAPPER = Path("server") / "mapper.pt"


class Mapper(Protocol):
    """What a center needs of a server: image-code message in, mask-code message out.

    Both the in-process :class:`MappingServer` and a model served over HTTP
    (:class:`privacysf.center.client.RemoteMapper`) fit, so one workflow covers both.
    """

    def map(self, image_codes: bytes) -> bytes: ...


class QueryClient(Protocol):
    """The center half of a query: images to an image-code message, a mask-code message to labels.

    :class:`Center` fits, and so does the benchmark's reference design, so payload and latency are
    measured by the same code for both.
    """

    def image_message(self, images: np.ndarray) -> bytes: ...

    def decode_message(self, message: bytes) -> np.ndarray: ...


@dataclass
class Center:
    """A hospital's private models: they never leave the center."""

    cfg: ExperimentConfig
    mask_codec: MaskCodec
    image_encoder: ConvEncoder
    grid: tuple[int, int]
    device: torch.device
    key: KeyedTransform | None = None
    """The secret keyed transform applied to every code before it leaves (None: codes go as they are)."""

    @property
    def scan(self) -> str:
        return self.key.scan if self.key else SCAN_ORDER

    def _message(self, tokens: np.ndarray, kind: str, dtype: str | None) -> bytes:
        if self.key:
            tokens = self.key.forward(tokens, kind)
        batch = CodeBatch(tokens, self.grid, kind, scan=self.scan)
        return encode_codes(batch, dtype or self.cfg.codec.wire_dtype)

    def image_message(self, images: np.ndarray) -> bytes:
        return self._message(encode_images(self.image_encoder, images, self.device), "image", None)

    def mask_message(self, masks: np.ndarray, dtype: str | None = None) -> bytes:
        return self._message(encode_masks(self.mask_codec, masks, self.device), "mask", dtype)

    def decode_message(self, message: bytes) -> np.ndarray:
        batch = decode_codes(message, expect_kind="mask", expect_tokens=self.mask_tokens)
        tokens = self.key.inverse(batch.tokens, "mask") if self.key else batch.tokens
        return decode_masks(self.mask_codec, tokens, self.grid, self.device)

    @property
    def mask_tokens(self) -> tuple[int, int]:
        return self.grid[0] * self.grid[1], self.cfg.codec.mask_channels

    def segment(self, server: Mapper, images: np.ndarray) -> np.ndarray:
        """encode -> server maps -> decode, for (N, 1, H, W) preprocessed images."""
        return self.decode_message(server.map(self.image_message(images)))


def train_center(
    cfg: ExperimentConfig, train: SliceSet, val: SliceSet, num_classes: int, device, run_dir: Path
) -> tuple[Center, dict]:
    """Mask codec first (its codes are the image encoder's targets in task mode), then the encoder.

    With ``key.enabled`` a fresh secret key is drawn and saved in the center's folder only.
    """
    codec, codec_fit = train_mask_codec(cfg, train, val, num_classes, device, run_dir / MASK_CODEC)
    encoder, encoder_fit, _ = train_image_encoder(cfg, train, val, codec, device, run_dir / IMAGE_ENCODER)
    key = None
    if cfg.key.enabled:
        secret = CenterKey.create()
        secret.save(run_dir / KEY)
        key = keyed_transform(cfg, secret)
    center = Center(cfg, codec, encoder, token_grid(cfg.data.size, cfg.codec), device, key)
    return center, {"mask_codec": codec_fit, "image_encoder": encoder_fit}


def keyed_transform(cfg: ExperimentConfig, key: CenterKey) -> KeyedTransform:
    """The transform ``key`` drives for codes of this config's grid and channel counts."""
    grid = token_grid(cfg.data.size, cfg.codec)
    channels = {"image": cfg.codec.image_channels, "mask": cfg.codec.mask_channels}
    return KeyedTransform(key, cfg.key, grid[0] * grid[1], channels)


def mask_ceiling(center: Center, masks: np.ndarray, num_classes: int, dtype: str | None = None) -> float:
    """Round-trip Dice of ground-truth masks through the codec and the wire: the pipeline's ceiling."""
    return mean_dice(center.decode_message(center.mask_message(masks, dtype)), masks, num_classes)


def payload_bytes(center: QueryClient, server: Mapper, image: np.ndarray) -> dict[str, int]:
    """Bytes of one single-image query: image code up, mask code down, headers included."""
    up = center.image_message(image[None])
    down = server.map(up)
    return {"up": len(up), "down": len(down), "total": len(up) + len(down)}


def untrained_pipeline(
    cfg: ExperimentConfig, num_classes: int, size: int, device_name: str = "cpu"
) -> tuple[Center, MappingServer]:
    """A center and server with fresh networks at ``size``²: for sizes and timings, not for results.

    Message sizes depend on the grid, values per token and wire dtype, and compute time on the
    architecture, not on training, so fresh networks give exact payloads and representative latency
    at any image size without training at that size.
    """
    sized = cfg.override([f"data.size={size}", f"train.device={device_name}"])
    c, device = sized.codec, torch.device(device_name)
    center = Center(
        sized,
        MaskCodec(num_classes, c).to(device).eval(),
        ConvEncoder(1, c.image_channels, c.width, c.downsample).to(device).eval(),
        token_grid(size, c),
        device,
    )
    server = MappingServer(sized.mapper, sized.augment, sized.train)
    server.initialise(center.grid, c.image_channels, c.mask_channels)
    return center, server


def query_payload(cfg: ExperimentConfig, num_classes: int, size: int) -> dict[str, int]:
    """Bytes of one query at ``size``² with the config's codec: real messages from real networks."""
    center, server = untrained_pipeline(cfg, num_classes, size)
    return payload_bytes(center, server, np.zeros((1, size, size), np.float32))


def upload_messages(center: Center, train: SliceSet, val: SliceSet) -> tuple[bytes, bytes, bytes, bytes]:
    """All a center sends for the server to learn its mapping: train and val image and mask codes."""
    return (
        center.image_message(train.images),
        center.mask_message(train.masks),
        center.image_message(val.images),
        center.mask_message(val.masks),
    )


def fit_server(cfg: ExperimentConfig, center: Center, train: SliceSet, val: SliceSet, run_dir: Path):
    """What the center uploads and what the server does with it (server side sees bytes only)."""
    started = time.perf_counter()
    messages = upload_messages(center, train, val)
    encode_seconds = time.perf_counter() - started
    server = MappingServer(cfg.mapper, cfg.augment, cfg.train)
    result = server.fit(*messages, checkpoint=run_dir / MAPPER)
    upload = {
        "train_bytes": len(messages[0]) + len(messages[1]),
        "val_bytes": len(messages[2]) + len(messages[3]),
    }
    return server, result, {"encode_seconds": round(encode_seconds, 2), **upload}


def load_center(cfg: ExperimentConfig, num_classes: int, run_dir: Path, device) -> Center:
    codec = MaskCodec(num_classes, cfg.codec)
    codec.load_state_dict(
        load_checkpoint(run_dir / MASK_CODEC, codec_signature(cfg, num_classes, "mask-codec"))["model"]
    )
    c = cfg.codec
    encoder = ConvEncoder(1, c.image_channels, c.width, c.downsample)
    encoder.load_state_dict(
        load_checkpoint(run_dir / IMAGE_ENCODER, codec_signature(cfg, num_classes, "image-encoder"))["model"]
    )
    key = keyed_transform(cfg, CenterKey.load(run_dir / KEY)) if cfg.key.enabled else None
    return Center(
        cfg, codec.to(device).eval(), encoder.to(device).eval(), token_grid(cfg.data.size, c), device, key
    )


def load_server(cfg: ExperimentConfig, run_dir: Path) -> MappingServer:
    grid = token_grid(cfg.data.size, cfg.codec)
    server = MappingServer(cfg.mapper, cfg.augment, cfg.train)
    server.load(run_dir / MAPPER, grid, cfg.codec.image_channels, cfg.codec.mask_channels)
    return server
