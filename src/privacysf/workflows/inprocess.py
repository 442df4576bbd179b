"""The whole Privacy-SF pipeline in one process: a center and the server, joined by wire messages.

This module drives both sides, so it lives above ``privacysf.center`` and ``privacysf.server``: the
server object is in-process but is handed nothing but ``bytes`` in the exchange format, exactly what
would cross the network. Workflows (``fit``, ``ablate``, ``attack``, ``bench``) build on it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol, TypedDict

import numpy as np
import torch

from privacysf.center.codecs import MaskCodec, build_image_encoder, token_grid
from privacysf.center.pipeline import Center, Mapper, upload_messages
from privacysf.config import ExperimentConfig
from privacysf.data.preprocess import SliceSet
from privacysf.server import MappingServer

MAPPER = Path("server") / "mapper.pt"


class QueryClient(Protocol):
    """The center half of a query: images to an image-code message, a mask-code message to labels.

    :class:`Center` fits, and so does the benchmark's reference design, so payload and latency are
    measured by the same code for both.
    """

    def image_message(self, images: np.ndarray) -> bytes: ...

    def decode_message(self, message: bytes) -> np.ndarray: ...


class Payload(TypedDict):
    """Bytes per single-image query, wire headers included: the median query's (deflated messages'
    lengths follow their image's content), and the largest of ``queries`` measured."""

    up: int
    down: int
    total: int
    total_max: int
    queries: int


def payload_bytes(center: QueryClient, server: Mapper, images: np.ndarray) -> Payload:
    """Bytes of single-image queries, one per image of ``images`` (N, 1, H, W): image code up, mask
    code down, headers included; those of the median query by total (the lower middle one, so up and
    down add up to it), and the largest total."""
    sizes = []
    for image in images:
        query = center.image_message(image[None])
        reply = server.map(query)
        sizes.append((len(query) + len(reply), len(query), len(reply)))
    sizes.sort()
    total, up, down = sizes[(len(sizes) - 1) // 2]
    return {"up": up, "down": down, "total": total, "total_max": sizes[-1][0], "queries": len(sizes)}


def untrained_pipeline(
    cfg: ExperimentConfig, num_classes: int, size: int, device_name: str = "cpu", served: bool = True
) -> tuple[Center, MappingServer]:
    """A center and server with fresh networks at ``size``²: for sizes and timings, not for results.

    Message sizes depend on the grid, values per token and wire dtype, and compute time on the
    architecture, not on training, so fresh networks give exact payloads and representative latency
    at any image size without training at that size. The center's networks are in their served form
    (:meth:`Center.serving`) and the mapper's likewise (:meth:`MappingServer.prepare_for_serving`), as
    a fitted run's are when it segments, unless ``served`` is False.
    """
    sized = cfg.override([f"data.size={size}", f"train.device={device_name}"])
    c, device = sized.codec, torch.device(device_name)
    center = Center(
        sized,
        MaskCodec(num_classes, c).to(device).eval(),
        build_image_encoder(c).to(device).eval(),
        token_grid(size, c),
        device,
    )
    if served:
        center = center.serving()
    server = MappingServer(sized.mapper, sized.augment, sized.train)
    server.initialise(center.grid, c.image_channels, c.mask_channels)
    if served:
        server.prepare_for_serving()
    return center, server


def query_payload(cfg: ExperimentConfig, num_classes: int, size: int) -> Payload:
    """The most one query at ``size``² can send with the config's codec, both ways: real messages from
    real networks, not deflated (deflating never lengthens a message, and how much it saves depends on
    a trained codec's codes of real images: a fit's metrics hold that)."""
    center, server = untrained_pipeline(cfg.override(["codec.wire_compression=none"]), num_classes, size)
    return payload_bytes(center, server, np.zeros((1, 1, size, size), np.float32))


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


def load_server(cfg: ExperimentConfig, run_dir: Path) -> MappingServer:
    grid = token_grid(cfg.data.size, cfg.codec)
    server = MappingServer(cfg.mapper, cfg.augment, cfg.train)
    server.load(run_dir / MAPPER, grid, cfg.codec.image_channels, cfg.codec.mask_channels)
    return server
