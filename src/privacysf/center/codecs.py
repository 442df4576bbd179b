"""The center's networks: a mask codec (encoder + decoder) and an image encoder, and the mask
codec's training.

All of them stay in the hospital. The mask codec's round-trip Dice on ground-truth masks is the
ceiling of the whole pipeline: the server can at best return the code of the true mask. The image
encoder's training modes are in :mod:`privacysf.center.image_encoder`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.networks.utils import one_hot
from torch import nn

from privacysf.center.equivariance import EquivariancePenalty
from privacysf.center.norm_statistics import load_shared_state
from privacysf.common.torchutil import apply_in_batches, class_labels, evaluating
from privacysf.common.training import FitResult, fit
from privacysf.config import CodecConfig, ExperimentConfig, TrainConfig
from privacysf.data.loader import mask_batches, slice_batches
from privacysf.data.preprocess import SliceSet
from privacysf.errors import ConfigError, DataError
from privacysf.exchange import CodeBatch, decode_codes, encode_codes, grid_to_tokens, tokens_to_grid
from privacysf.exchange.rounding import wire_rounding
from privacysf.metrics import validation_dice
from privacysf.nets.conv import ConvDecoder, ConvEncoder
from privacysf.nets.flips import FlipEncoder


def token_grid(size: int, cfg: CodecConfig) -> tuple[int, int]:
    if size % cfg.downsample:
        raise ConfigError(f"image size {size} is not a multiple of codec.downsample {cfg.downsample}")
    return size // cfg.downsample, size // cfg.downsample


class MaskCodec(nn.Module):
    """One-hot masks (K classes) <-> mask codes (C_m × h × w, bounded in [-1, 1]).

    ``logit_offset`` (saved with the weights) is added to the decoder's logits: zero per class while
    the codec trains, then a per-pixel map, (K, H, W), once
    :func:`privacysf.center.pipeline.guard_empty_masks` has raised the background logit where an empty
    mask's own code, sent over the wire, would otherwise decode foreground.
    """

    logit_offset: torch.Tensor

    def __init__(self, num_classes: int, cfg: CodecConfig) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = build_encoder(num_classes, cfg.mask_channels, cfg)
        self.decoder = ConvDecoder(
            cfg.mask_channels,
            num_classes,
            cfg.width,
            cfg.downsample,
            cfg.norm,
            cfg.top_decoder_width,
            cfg.activation,
            cfg.mask_upsampling,
        )
        self.register_buffer("logit_offset", torch.zeros(num_classes, 1, 1))
        self.register_load_state_dict_pre_hook(_take_offset_shape)

    def inputs(self, labels: torch.Tensor) -> torch.Tensor:
        """(N, H, W) label maps -> the encoder's (N, K, H, W) one-hot input."""
        if int(labels.max()) >= self.num_classes or int(labels.min()) < 0:
            raise DataError(
                f"mask holds label {int(labels.max())} but this mask codec was trained for "
                f"{self.num_classes} classes (0..{self.num_classes - 1}); retrain the codec for these classes"
            )
        return one_hot(labels[:, None], self.num_classes).float()

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.inputs(labels))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code) + self.logit_offset


def _take_offset_shape(module: MaskCodec, state: dict, prefix: str, *_) -> None:
    """Load a guarded codec's per-pixel offset into a fresh codec, and a codec saved before the offset
    existed with a zero one (its guard is run again where it is loaded)."""
    key = prefix + "logit_offset"
    state.setdefault(key, torch.zeros_like(module.logit_offset))
    module.logit_offset = torch.zeros_like(state[key])


CenterEncoder = ConvEncoder | FlipEncoder
"""Either encoder a center can hold (``codec.symmetry``); both map (N, C, H, W) to bounded codes."""


def build_encoder(in_channels: int, code_channels: int, cfg: CodecConfig) -> CenterEncoder:
    """A center encoder as ``codec`` describes it: the plain convolutional one, or its flip-equivariant
    twin (``codec.symmetry=flips``)."""
    encoder = FlipEncoder if cfg.symmetry == "flips" else ConvEncoder
    return encoder(
        in_channels, code_channels, cfg.width, cfg.downsample, cfg.norm, cfg.padding, cfg.activation
    )


def build_image_encoder(cfg: CodecConfig) -> CenterEncoder:
    """The center's image encoder: one grey-level channel in, ``image_channels`` values per token out.

    Training, loading and the untrained networks of size/latency measurements all build it here, so a
    change of its shape reaches every one of them.
    """
    return build_encoder(1, cfg.image_channels, cfg)


def build_image_decoder(cfg: CodecConfig) -> ConvDecoder:
    """A center-side decoder from image codes back to images: the ``autoencoder`` mode's decoder and
    the ``private`` mode's in-the-loop attacker, built like the center's other networks."""
    return ConvDecoder(cfg.image_channels, 1, cfg.width, cfg.downsample, cfg.norm, activation=cfg.activation)


def codec_signature(cfg: ExperimentConfig, num_classes: int, part: str) -> dict:
    """What a center checkpoint must agree on with the run that loads it."""
    c = cfg.codec
    head = c.task_head_for(num_classes)
    weighted = part == "image-encoder" and c.image_mode != "autoencoder" and c.task_class_weights != "none"
    return {
        "kind": part,
        "num_classes": num_classes,
        "size": cfg.data.size,
        "downsample": c.downsample,
        "image_channels": c.image_channels,
        "mask_channels": c.mask_channels,
        "width": c.width,
        "norm": None if c.norm == "instance" else c.norm,  # checkpoints from before codec.norm: instance
        "padding": None if c.padding == "zeros" else c.padding,  # from before codec.padding: zeros
        "activation": None if c.activation == "prelu" else c.activation,  # before codec.activation: prelu
        "symmetry": None if c.symmetry == "none" else c.symmetry,  # before codec.symmetry: none
        # checkpoints from before codec.mask_decoder_width decoded at full resolution with ``width``
        "mask_decoder_width": (
            None
            if part != "mask-codec" or c.top_decoder_width == c.width or c.mask_upsampling == "subpixel"
            else c.top_decoder_width
        ),
        # checkpoints from before codec.mask_upsampling decoded through a transposed convolution
        "mask_upsampling": None if part != "mask-codec" or c.mask_upsampling == "transposed" else "subpixel",
        "image_mode": c.image_mode if part == "image-encoder" else None,
        # checkpoints from before codec.task_head trained the mapper-shaped head; an autoencoder has none
        "task_head": (
            head
            if part in ("image-encoder", "image-parts") and c.image_mode != "autoencoder" and head != "mapper"
            else None
        ),
        "private_weight": c.private_weight if part == "image-encoder" and c.image_mode == "private" else None,
        # checkpoints from before codec.task_class_weights trained with unweighted classes
        "task_class_weights": c.task_class_weights if weighted else None,
    }


def encode_images(encoder: nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    """(N, 1, H, W) images -> (N, L, C) image-code tokens."""
    evaluating(encoder)
    return apply_in_batches(lambda x: grid_to_tokens(encoder(x)), images, device).numpy()


def encode_masks(codec: MaskCodec, masks: np.ndarray, device: torch.device) -> np.ndarray:
    """(N, H, W) label maps -> (N, L, C_m) mask-code tokens."""
    evaluating(codec)
    return apply_in_batches(lambda y: grid_to_tokens(codec.encode(y)), masks, device).numpy()


def decode_masks(
    codec: MaskCodec, tokens: np.ndarray, grid: tuple[int, int], device: torch.device
) -> np.ndarray:
    """(N, L, C_m) mask-code tokens -> (N, H, W) label maps."""
    evaluating(codec)
    return apply_in_batches(
        lambda t: class_labels(codec.decode(tokens_to_grid(t, grid))), tokens, device
    ).numpy()


def through_wire(tokens: np.ndarray, grid: tuple[int, int], kind: str, dtype: str) -> np.ndarray:
    """``tokens`` as the receiver reads them after one real trip over the wire in ``dtype``."""
    return decode_codes(encode_codes(CodeBatch(tokens, grid, kind), dtype)).tokens


def train_mask_codec(
    cfg: ExperimentConfig,
    train: SliceSet,
    val: SliceSet,
    num_classes: int,
    device: torch.device,
    checkpoint: Path | None,
    initial: dict[str, dict] | None = None,
) -> tuple[MaskCodec, FitResult]:
    """Train on ground-truth masks as they will be sent: codes rounded to ``codec.wire_dtype``.

    Batches are label maps only (:func:`codec_batches`). The code is rounded as the wire rounds it
    (straight-through gradient), then noise is added so the decoder also absorbs mapping errors;
    validation scores masks decoded from codes that made a real trip over the wire, so the epoch kept
    is the one that works as sent, not the one that works in float.

    ``initial`` (``{"model": state_dict}``) starts from given weights: a federated round starts from the
    averaged codec.
    """
    codec = MaskCodec(num_classes, cfg.codec).to(device)
    if initial:  # averaged weights: batch-norm statistics are relearnt in this round's training
        load_shared_state(codec, initial["model"])
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    grid = token_grid(cfg.data.size, cfg.codec)
    wire_dtype = cfg.codec.wire_dtype

    penalty = equivariance_penalty(cfg)

    def step(y):
        one_hot_masks = codec.inputs(y)
        code = codec.encoder(one_hot_masks)
        sent = wire_rounding(code, wire_dtype)
        noisy = sent + cfg.codec.code_noise * torch.randn_like(sent)
        loss = loss_fn(codec.decode(noisy), y[:, None])
        return loss + penalty(codec.encoder, one_hot_masks, code) if penalty else loss

    def validate() -> float:
        tokens = through_wire(encode_masks(codec, val.masks, device), grid, "mask", wire_dtype)
        return validation_dice(decode_masks(codec, tokens, grid, device), val.masks, num_classes)

    result = fit(
        codec,
        codec_batches(cfg, train, num_classes, device),
        step,
        validate,
        codec_training(cfg),
        "center mask codec",
        checkpoint,
        codec_signature(cfg, num_classes, "mask-codec"),
    )
    return codec, result


def codec_training(cfg: ExperimentConfig) -> TrainConfig:
    """``train`` for the mask codec: its own number of epochs (``codec.mask_epochs``), if lower, and
    no early stopping, so it always anneals over its whole cosine schedule.

    A codec's validation score can wander for ten epochs while its learning rate is still high, which
    is not the over-fitting early stopping is for: a flip-equivariant CT codec stopped at epoch 12 of
    30 had a test ceiling of 0.354, and the same configuration trained to the end reached 0.934
    (docs/results.md, "Mask codecs train their whole schedule"). The best validation epoch's weights
    are still the ones kept."""
    epochs = cfg.mask_codec_epochs
    return cfg.train.updated(epochs=epochs, patience=epochs)


def equivariance_penalty(cfg: ExperimentConfig) -> EquivariancePenalty | None:
    """The penalty that makes a center encoder commute with the server's code transforms, if on."""
    c = cfg.codec
    if not c.equivariance:
        return None
    return EquivariancePenalty(c.equivariance, token_grid(cfg.data.size, c), c.downsample, cfg.train.seed)


def codec_batches(
    cfg: ExperimentConfig, train: SliceSet, num_classes: int, device: torch.device
) -> Callable[[int], Iterable]:
    """The mask codec's training batches of label maps: ``codec.mask_steps`` reshaped draws an epoch,
    or (0) one pass over the training masks with the images' flips."""
    t = cfg.train
    if cfg.codec.mask_steps:
        return mask_batches(train.masks, num_classes, t, cfg.codec, device)
    passes = slice_batches(train, t.updated(min_steps=1), device)  # one pass, as before draws
    return lambda epoch: (masks for _, masks in passes(epoch))
