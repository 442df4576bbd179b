"""A code dataset: what a center sends for the server to learn its mapping, and the one rule it obeys.

A dataset is four wire messages, in this order: train image codes, train mask codes, validation image
codes, validation mask codes. They must pair up one image code to one mask code, and all four must
live in one *code space*: one token grid, one scan order, one channel count per kind. Every path that
takes a dataset in (the service's uploads, its jobs, the Flower app, the in-process pipeline) reads it
with :func:`read_dataset`, so they accept and refuse exactly the same things with the same message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from privacysf.errors import ConfigError, WireFormatError
from privacysf.exchange.wire import CodeBatch, decode_codes, encode_codes, split_messages

DATASET_PARTS = ("train image", "train mask", "val image", "val mask")
"""The four messages of a dataset, in the order they travel."""
PART_KINDS = ("image", "mask", "image", "mask")


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
    def space(self) -> CodeSpace:
        x, y = self.train_images, self.train_masks
        return CodeSpace(x.grid, x.scan, x.shape[2], y.shape[2])

    @property
    def train_count(self) -> int:
        return self.train_images.shape[0]

    @property
    def val_count(self) -> int:
        return self.val_images.shape[0]

    def messages(self, dtype: str = "float32") -> tuple[bytes, bytes, bytes, bytes]:
        """The dataset as four wire messages again (float32 holds every wire dtype's values exactly)."""
        x, y, vx, vy = (encode_codes(batch, dtype) for batch in self.parts)
        return x, y, vx, vy


def read_dataset(messages: Sequence[bytes]) -> CodeDataset:
    """Decode a dataset's four messages and check that they form one: kinds, pairs, one code space."""
    if len(messages) != len(DATASET_PARTS):
        raise WireFormatError(f"a dataset is {len(DATASET_PARTS)} code messages, not {len(messages)}")
    batches = [decode_codes(m, expect_kind=kind) for m, kind in zip(messages, PART_KINDS, strict=True)]
    x, y, vx, vy = batches
    if (
        len({b.grid for b in batches}) > 1
        or len({b.scan for b in batches}) > 1
        or x.shape[2] != vx.shape[2]
        or y.shape[2] != vy.shape[2]
    ):
        raise WireFormatError(
            "the four code messages of a dataset must share one grid, scan order and channel counts; "
            f"got grids {[b.grid for b in batches]}, scans {[b.scan for b in batches]}, "
            f"channels {[b.shape[2] for b in batches]}"
        )
    if x.shape[0] != y.shape[0] or vx.shape[0] != vy.shape[0]:
        raise WireFormatError(
            f"image and mask codes must pair up: {x.shape[0]}/{y.shape[0]} train, "
            f"{vx.shape[0]}/{vy.shape[0]} validation"
        )
    return CodeDataset(x, y, vx, vy)


def split_dataset(payload: bytes) -> CodeDataset:
    """A dataset sent as one body: its four messages back to back."""
    return read_dataset(split_messages(payload, len(DATASET_PARTS)))


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
