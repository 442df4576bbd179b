"""A code dataset: what a center sends for the server to learn its mapping, and the one rule it obeys.

A dataset is four wire messages, in this order: train image codes, train mask codes, validation image
codes, validation mask codes. They must pair up one image code to one mask code, and all four must
live in one *code space*: one token grid, one scan order, one channel count per kind. Every path that
takes a dataset in (the service's uploads, its jobs, the Flower app, the in-process pipeline) reads it
with :func:`read_dataset`, so they accept and refuse exactly the same things with the same message;
an upload too big to hold is checked from its file by :func:`check_dataset_stream`, which applies the
same header checks (:func:`~privacysf.exchange.wire.read_header`) and the same pairing rule
(:func:`dataset_layout`) without decoding the codes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple, Protocol

import numpy as np

from privacysf.errors import ConfigError, PayloadTooLargeError, WireFormatError
from privacysf.exchange.wire import (
    PREFIX_BYTES,
    WIRE_DTYPES,
    CodeBatch,
    decode_codes,
    encode_codes,
    header_length,
    read_header,
    split_messages,
    value_pieces,
)

DATASET_PARTS = ("train image", "train mask", "val image", "val mask")
"""The four messages of a dataset, in the order they travel."""
PART_KINDS = ("image", "mask", "image", "mask")
STREAM_CHUNK_BYTES = 4 * 1024 * 1024
"""How much of a streamed dataset's values is checked at a time (the memory a streamed check holds)."""
TRAINING_VALUE_BYTES = 4
"""Bytes a code value takes while a mapper trains on it: every wire dtype is read into float32."""


class CodeSpace(NamedTuple):
    """What codes must share to train one mapper: the grid, the scan order and channels per kind."""

    grid: tuple[int, int]
    scan: str
    image_channels: int
    mask_channels: int


@dataclass(frozen=True)
class CodeDataset:
    """The four checked code batches of a dataset (build it with :func:`read_dataset`)."""

    train_images: CodeBatch
    train_masks: CodeBatch
    val_images: CodeBatch
    val_masks: CodeBatch

    @property
    def parts(self) -> tuple[CodeBatch, CodeBatch, CodeBatch, CodeBatch]:
        return self.train_images, self.train_masks, self.val_images, self.val_masks

    @property
    def layout(self) -> DatasetLayout:
        return dataset_layout(self.parts)

    @property
    def space(self) -> CodeSpace:
        return self.layout.space

    def messages(self, dtype: str = "float32") -> tuple[bytes, bytes, bytes, bytes]:
        """The dataset as four wire messages again (float32 holds every wire dtype's values exactly)."""
        x, y, vx, vy = (encode_codes(batch, dtype) for batch in self.parts)
        return x, y, vx, vy


class DatasetLayout(NamedTuple):
    """What a checked dataset holds, told from its four headers: its code space and its sizes."""

    space: CodeSpace
    train_count: int
    val_count: int

    @property
    def training_bytes(self) -> int:
        return training_bytes(self.space, self.train_count + self.val_count)


def training_bytes(space: CodeSpace, pairs: int) -> int:
    """What ``pairs`` image and mask codes of ``space`` take in memory while a mapper trains on them.

    A training job holds all its codes at once, as float32, whatever dtype or compression they
    travelled in, so this (not the bytes stored) is what a service bounds per job: a deflated upload
    of half a megabyte can hold half a gigabyte of values.
    """
    rows, columns = space.grid
    return TRAINING_VALUE_BYTES * pairs * rows * columns * (space.image_channels + space.mask_channels)


class _Part(Protocol):
    """A dataset part as the layout rule sees it: a decoded batch or a message header alike."""

    @property
    def grid(self) -> tuple[int, int]: ...
    @property
    def scan(self) -> str: ...
    @property
    def shape(self) -> tuple[int, int, int]: ...


def dataset_layout(parts: Sequence[_Part]) -> DatasetLayout:
    """The rule over the four parts: image and mask codes pair up, all in one code space."""
    x, y, vx, vy = parts
    if (
        len({b.grid for b in parts}) > 1
        or len({b.scan for b in parts}) > 1
        or x.shape[2] != vx.shape[2]
        or y.shape[2] != vy.shape[2]
    ):
        raise WireFormatError(
            "the four code messages of a dataset must share one grid, scan order and channel counts; "
            f"got grids {[b.grid for b in parts]}, scans {[b.scan for b in parts]}, "
            f"channels {[b.shape[2] for b in parts]}"
        )
    if x.shape[0] != y.shape[0] or vx.shape[0] != vy.shape[0]:
        raise WireFormatError(
            f"image and mask codes must pair up: {x.shape[0]}/{y.shape[0]} train, "
            f"{vx.shape[0]}/{vy.shape[0]} validation"
        )
    return DatasetLayout(CodeSpace(x.grid, x.scan, x.shape[2], y.shape[2]), x.shape[0], vx.shape[0])


def read_dataset(messages: Sequence[bytes]) -> CodeDataset:
    """Decode a dataset's four messages and check that they form one: kinds, pairs, one code space."""
    if len(messages) != len(DATASET_PARTS):
        raise WireFormatError(f"a dataset is {len(DATASET_PARTS)} code messages, not {len(messages)}")
    batches = [decode_codes(m, expect_kind=kind) for m, kind in zip(messages, PART_KINDS, strict=True)]
    dataset_layout(batches)
    x, y, vx, vy = batches
    return CodeDataset(x, y, vx, vy)


def split_dataset(payload: bytes) -> CodeDataset:
    """A dataset sent as one body: its four messages back to back."""
    return read_dataset(split_messages(payload, len(DATASET_PARTS)))


def check_dataset_stream(
    stream: BinaryIO,
    chunk_bytes: int = STREAM_CHUNK_BYTES,
    max_values_bytes: int | None = None,
    max_training_bytes: int | None = None,
) -> DatasetLayout:
    """Check a dataset read from ``stream`` (e.g. an uploaded file) by the same rule as
    :func:`split_dataset`, message by message and its values chunk by chunk.

    Memory stays at about ``chunk_bytes`` whatever the dataset's size: an upload is checked without
    ever holding its codes, so a 512 MiB dataset costs the server no more than a small one. Deflated
    messages are inflated piece by piece as they are checked; ``max_values_bytes`` bounds what the
    four messages' values may take once inflated (a server passes its upload limit), told from their
    headers before the message that crosses it is inflated, so a small deflated file cannot make the
    server inflate gigabytes.
    ``max_training_bytes`` bounds what the codes will take in a training job
    (:func:`training_bytes`), also from the headers: a dataset no job may train on is refused before
    the message that crosses the bound is inflated, and before anything is stored.
    """
    headers, inflated, training = [], 0, 0
    for index, kind in enumerate(PART_KINDS):
        where = f"message {index + 1} of {len(DATASET_PARTS)} ({DATASET_PARTS[index]})"
        prefix = stream.read(PREFIX_BYTES)
        if len(prefix) < PREFIX_BYTES:
            raise WireFormatError(f"the upload ends before {where}")
        raw = prefix + stream.read(header_length(prefix))
        header = read_header(raw, expect_kind=kind)
        inflated += header.values_bytes
        if max_values_bytes is not None and inflated > max_values_bytes:
            raise PayloadTooLargeError(
                f"{where} takes the dataset's codes past {max_values_bytes} bytes once inflated, this "
                "server's upload limit; upload fewer codes at a time"
            )
        count = math.prod(header.shape)
        training += TRAINING_VALUE_BYTES * count
        if max_training_bytes is not None and training > max_training_bytes:
            raise PayloadTooLargeError(
                f"{where} takes the dataset's codes past {max_training_bytes} bytes as float32, the most "
                "this server lets one training job hold; upload fewer codes at a time"
            )
        values, left = WIRE_DTYPES[header.dtype], count
        for piece in value_pieces(stream.read, header, chunk_bytes, where):
            checked = min(left, len(piece) * 8 // values.bits)  # the last piece may end in padding
            values.check(piece, checked)
            left -= checked
        headers.append(header)
    if stream.read(1):
        raise WireFormatError(f"bytes follow the last of {len(DATASET_PARTS)} messages")
    return dataset_layout(headers)


def one_code_space(spaces: Sequence[CodeSpace], what: str) -> CodeSpace:
    """The code space ``spaces`` share; a :class:`ConfigError` naming ``what`` when they differ.

    One mapper learns one code space: codes on another grid, with other channels, or in another scan
    order (a center's secret permutation versus raster order) cannot be pooled into its training data.
    """
    distinct = list(dict.fromkeys(spaces))
    if len(distinct) != 1:
        described = "; ".join(
            f"grid {s.grid[0]}x{s.grid[1]}, {s.scan} scan, {s.image_channels}/{s.mask_channels} channels"
            for s in distinct
        )
        raise ConfigError(
            f"{what} hold codes of different code spaces ({described}); one mapper trains on one: "
            "use datasets encoded with the same codec and the same key setting"
        )
    return distinct[0]


def merge_datasets(datasets: Sequence[CodeDataset]) -> CodeDataset:
    """Several datasets of one code space as one, part by part (their scan order is kept)."""
    space = one_code_space([d.space for d in datasets], "the datasets")

    def concatenated(part: int) -> CodeBatch:
        batches = [d.parts[part] for d in datasets]
        tokens = np.concatenate([b.tokens for b in batches])
        return CodeBatch(tokens, space.grid, PART_KINDS[part], scan=space.scan)

    x, y, vx, vy = (concatenated(part) for part in range(len(DATASET_PARTS)))
    return CodeDataset(x, y, vx, vy)
