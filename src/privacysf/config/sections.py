"""The sections of a run that are neither network: data, training, the raw U-Net, the key and encryption.

The center's networks are :mod:`privacysf.config.codec`, the server's mapper :mod:`privacysf.config.mapper`
and its code augmentations :mod:`privacysf.config.augment`. Each option set is a ``Literal`` (the one
list of allowed names; the tuples exported beside some are read from it) and each rule sits in the
section it concerns. Rules across sections are in :mod:`privacysf.config.experiment`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from privacysf.config.model import ConfigModel


def _device(name: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ValueError("must be auto, cpu, cuda or cuda:N")
    return name


class DataConfig(ConfigModel):
    """Which data to load and how to turn it into 2-D training slices."""

    dataset: str = "phantom"
    """A built-in dataset name (``privacysf data list``) or a folder in MSD/nnU-Net or plain layout."""
    layout: Literal["auto", "msd", "plain"] = "auto"
    """Folder layout: ``auto``, ``msd`` (imagesTr/labelsTr/dataset.json) or ``plain`` (images/masks)."""
    axis: int = Field(2, ge=0, le=2)
    """Array axis along which 3-D volumes are sliced (arrays are in x, y, z order)."""
    size: int = Field(128, gt=0)
    """Working size: every slice is resized to ``size``×``size`` (masks by nearest neighbour)."""
    normalization: Literal["auto", "mr", "ct", "minmax"] = "auto"
    """``auto`` (from the dataset's modality), ``mr`` (percentile clip + z-score), ``ct`` (HU window)
    or ``minmax``."""
    ct_window: tuple[float, float] = (-160.0, 240.0)
    """Hounsfield units kept by ``ct`` normalisation (clipped, scaled to [0, 1]): window 400, level 40."""
    num_classes: int | None = Field(None, ge=2)
    """Number of classes including background; read from dataset.json or the registry when unset."""
    drop_empty: bool = True
    """Drop slices whose mask shows no foreground, inside each split once it is made.

    Slabs (fewer than 3 cases) are cut over all slices first: cut over the few labelled slices of a
    small lesion, their guard gaps would swallow whole splits. Dropping in validation and test too
    makes their 2-D scores foreground-only: under the empty-mask rule an empty slice scores Dice 1
    when nothing is predicted and 0 for any predicted pixel, so a split of mostly empty slices would
    score a network that finds nothing highly, and early stopping on it would reward predicting
    nothing. The price is that false positives on empty slices go unscored; ``false`` keeps every
    slice in every split (scores then mix both). A split whose slices show no foreground at all keeps
    its empty slices rather than vanish, and a ``DataWarning`` says so."""
    val_fraction: float = 0.15
    """Share of the cases held out for validation: every network early-stops on it, so never 0."""
    test_fraction: float = 0.2
    """Share of the cases held out for the test scores, so never 0."""
    seed: int = Field(0, ge=0)
    """Seed of the split. A case split is a function of (case ids, fractions, seed) only; a slab split
    (fewer than 3 cases) also of which slices show which class, since its slabs are placed so that
    every split holds every class the data allows."""
    train_fraction: float = Field(1.0, gt=0, le=1)
    """Share of the training slices kept, drawn with ``seed`` after the split (validation and test
    untouched): for learning curves and for measuring how cost grows with the dataset's size."""
    phantom_cases: int = Field(60, ge=3)
    """Number of cases the synthetic ``phantom`` dataset generates (at least one per split)."""

    @field_validator("ct_window")
    @classmethod
    def _window_is_an_interval(cls, window: tuple[float, float]) -> tuple[float, float]:
        if window[0] >= window[1]:
            raise ValueError("must be [low, high] with low < high")
        return window

    @field_validator("val_fraction", "test_fraction")
    @classmethod
    def _split_is_not_empty(cls, fraction: float, info: ValidationInfo) -> float:
        if not 0 < fraction < 1:
            raise ValueError(
                "must lie in (0, 1), 0 excluded: every network early-stops on the validation split "
                "and is scored on the test split, so neither may be empty"
            )
        if info.field_name == "test_fraction" and fraction + info.data.get("val_fraction", 0) >= 1:
            raise ValueError("plus data.val_fraction must stay below 1, leaving cases to train on")
        return fraction


class TrainConfig(ConfigModel):
    """Optimisation settings shared by every trained network of a run."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(3e-3, gt=0)
    min_steps: int = Field(12, ge=1)
    """Fewest optimiser steps in an epoch of the image encoder, the server mapper and the raw U-Net: a
    set with fewer than ``min_steps`` batches is passed over several times an epoch, so early stopping
    (``patience`` epochs) never ends a few-slice run after a handful of steps (16 slices, batch 8:
    2 steps an epoch otherwise). Sets of ``min_steps × batch_size`` slices or more keep one pass."""
    patience: int = Field(10, ge=1)
    """Early stopping: epochs without a better validation score before stopping, counted once some
    epoch has beaten the first (a run stuck at its first score, e.g. 0 on a rare class, goes on). The
    mask codec is never stopped early: it trains its whole schedule (``codec.mask_epochs``)."""
    augment: bool = True
    """Random flips and intensity jitter of raw images (only ever on the center / raw baseline)."""
    device: Annotated[str, AfterValidator(_device)] = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda`` (``cuda:N`` for one of several GPUs)."""
    seed: int = Field(0, ge=0)
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch; ``None`` keeps torch's default."""
    progress: bool = True
    """Per-epoch progress bars; each trained network's one-line summary prints either way."""


class UNetConfig(ConfigModel):
    """The raw-image MONAI U-Net, the privacy-agnostic upper bound."""

    channels: tuple[Annotated[int, Field(ge=1)], ...] = Field((16, 32, 64, 128), min_length=2)
    strides: tuple[Annotated[int, Field(ge=1)], ...] = (2, 2, 2)
    """One stride per step down, so one fewer than ``channels``."""
    num_res_units: int = Field(2, ge=0)

    @field_validator("strides")
    @classmethod
    def _one_stride_per_step(cls, strides: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        channels = info.data.get("channels")
        if channels is not None and len(strides) != len(channels) - 1:
            raise ValueError(f"must hold one stride fewer than unet.channels ({len(channels)} values)")
        return strides


class KeyConfig(ConfigModel):
    """The center's secret keyed transform of its codes (the key itself never leaves the center)."""

    enabled: bool = False
    mix_channels: bool = True
    """Multiply every token by a secret orthogonal matrix (separately for image and mask codes)."""
    permute_tokens: bool = False
    """Shuffle token positions with a secret permutation; needs an order-blind mapper (transformer)."""
    per_query_shift: bool = False
    """Roll every code that leaves the center by a fresh random shift of whole tokens (a training
    pair's image and mask code by the same one; a query's reply rolled back), drawn from the operating
    system's CSPRNG and never kept, so no two codes the server holds share an alignment. Works with
    or without ``enabled``; needs a mapper that commutes with such shifts (``mapper.kind=poly`` with
    ``mapper.padding=circular``). docs/threat-model.md says what it does and does not hide."""


class EncryptionConfig(ConfigModel):
    """Encrypted queries: the server maps CKKS ciphertexts of image codes it cannot read.

    The center keeps the CKKS secret key (``center/ckks_key.json``, owner-only) and sends the server
    public evaluation keys once; every query's image code then goes as ciphertexts, and the mask code
    comes back as ciphertexts only the center can decrypt. Needs ``mapper.kind=poly`` (a mapper made
    of convolutions and a square, which is what ciphertexts allow) and a power-of-two token grid.
    Training codes are still uploaded in plain form (docs/threat-model.md says what that leaves open).
    """

    enabled: bool = False
