"""A center's side of Privacy-SF: its private models, its secret key and the messages it sends.

``train_center`` fits the mask codec and image encoder on the center's own data; :class:`Center`
turns images into image-code messages and mask-code messages back into labels. The server is reached
only through :class:`Mapper` (bytes in, bytes out), in-process or over HTTP.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from privacysf.center.codecs import (
    CenterEncoder,
    MaskCodec,
    build_image_encoder,
    codec_signature,
    decode_masks,
    encode_images,
    encode_masks,
    through_wire,
    token_grid,
    train_mask_codec,
)
from privacysf.center.encryption import QueryEncryption
from privacysf.center.image_encoder import train_image_encoder
from privacysf.center.keys import CenterKey, KeyedTransform
from privacysf.common.torchutil import load_checkpoint, save_checkpoint
from privacysf.config import ExperimentConfig
from privacysf.data.loader import augmented_views
from privacysf.data.preprocess import SliceSet
from privacysf.errors import ConfigError, WireFormatError
from privacysf.exchange import CodeBatch, decode_codes, encode_codes, finer_dtypes, tokens_to_grid
from privacysf.exchange.encrypted import is_encrypted
from privacysf.exchange.wire import SCAN_ORDER, roll_tokens
from privacysf.metrics import mean_dice
from privacysf.nets.inference import inference_copy

MASK_CODEC = Path("center") / "mask_codec.pt"
IMAGE_ENCODER = Path("center") / "image_encoder.pt"
KEY = Path("center") / "key.json"
CKKS_KEY = Path("center") / "ckks_key.json"


class Mapper(Protocol):
    """What a center needs of a server: image-code message in, mask-code message out.

    Both the in-process :class:`privacysf.server.MappingServer` and a model served over HTTP
    (:class:`privacysf.center.client.RemoteMapper`) fit, so one workflow covers both.
    """

    def map(self, image_codes: bytes) -> bytes: ...


@runtime_checkable
class KeyedMapper(Mapper, Protocol):
    """A server that maps encrypted queries once it holds the center's public evaluation keys."""

    def key_ids(self) -> set[str]: ...

    def register_keys(self, message: bytes) -> str: ...


@dataclass
class Center:
    """A hospital's private models: they never leave the center."""

    cfg: ExperimentConfig
    mask_codec: MaskCodec
    image_encoder: CenterEncoder
    grid: tuple[int, int]
    device: torch.device
    key: KeyedTransform | None = None
    """The secret keyed transform applied to every code before it leaves (None: codes go as they are)."""
    encryption: QueryEncryption | None = None
    """The CKKS keys queries are encrypted with (None: queries go as plain codes)."""

    def serving(self) -> Center:
        """This center with inference copies of its networks (batch norms folded into convolutions,
        channels-last; :func:`privacysf.nets.inference.inference_copy`), for segmenting, not training.

        The empty-mask guard is run again on the copy, so its guarantee holds for the decoder that
        serves (the fold changes logits by float rounding only, so it raises nothing in practice)."""
        served = replace(
            self,
            mask_codec=inference_copy(self.mask_codec),
            image_encoder=inference_copy(self.image_encoder),
        )
        guard_empty_masks(served)
        return served

    @property
    def scan(self) -> str:
        return self.key.scan if self.key else SCAN_ORDER

    def _keyed(self, tokens: np.ndarray, kind: str) -> np.ndarray:
        """Codes as they leave the center: through the keyed transform when there is a key."""
        return self.key.forward(tokens, kind) if self.key else tokens

    def _message(
        self, tokens: np.ndarray, kind: str, dtype: str | None, shifts: np.ndarray | None = None
    ) -> bytes:
        sent = self._keyed(tokens, kind)
        if shifts is not None:
            sent = roll_tokens(sent, self.grid, shifts)
        batch = CodeBatch(sent, self.grid, kind, scan=self.scan)
        return encode_codes(batch, dtype or self.cfg.codec.wire_dtype, self.cfg.codec.wire_compression)

    def image_message(self, images: np.ndarray) -> bytes:
        return self._message(encode_images(self.image_encoder, images, self.device), "image", None)

    def mask_message(self, masks: np.ndarray, dtype: str | None = None) -> bytes:
        return self._message(encode_masks(self.mask_codec, masks, self.device), "mask", dtype)

    def draw_shifts(self, count: int) -> np.ndarray | None:
        """With ``key.per_query_shift``, a fresh (rows, columns) shift of the token grid per code, from
        the operating system's CSPRNG; used for one message (pair) and forgotten. None when off."""
        if not self.cfg.key.per_query_shift:
            return None
        rng = np.random.default_rng(secrets.randbits(128))
        return np.stack([rng.integers(0, side, count) for side in self.grid], axis=1)

    def pair_messages(self, images: np.ndarray, masks: np.ndarray) -> tuple[bytes, bytes]:
        """Image- and mask-code messages of training pairs as they are uploaded: with per-query shifts,
        each pair's two codes rolled by the same fresh shift, so the server still sees true pairs."""
        shifts = self.draw_shifts(len(images))
        image_codes = encode_images(self.image_encoder, images, self.device)
        mask_codes = encode_masks(self.mask_codec, masks, self.device)
        return (
            self._message(image_codes, "image", None, shifts),
            self._message(mask_codes, "mask", None, shifts),
        )

    def query_message(self, images: np.ndarray, shifts: np.ndarray | None = None) -> bytes:
        """What a query sends the server: the image-code message (rolled by ``shifts`` when given), as
        CKKS ciphertexts when this center encrypts its queries.

        Encrypted codes carry the values a plain message would: rounded to ``codec.wire_dtype``'s
        levels, which is what the mapper learnt from, and the decrypted reply is rounded likewise
        (:meth:`received_mask_tokens`), so an encrypted query differs from a plain one only by CKKS's
        approximation."""
        tokens = encode_images(self.image_encoder, images, self.device)
        if self.encryption is None:
            return self._message(tokens, "image", None, shifts)
        if shifts is not None:
            raise ConfigError(
                "per-query shifts and encrypted queries do not combine (the config refuses both)"
            )
        sent = through_wire(self._keyed(tokens, "image"), self.grid, "image", self.cfg.codec.wire_dtype)
        return self.encryption.encrypt(sent, "image", self.scan)

    def received_mask_tokens(self, message: bytes, shifts: np.ndarray | None = None) -> np.ndarray:
        """A mask-code message as the center's decoder reads it: checked, read (decrypted when it is
        encrypted), rolled back by the query's ``shifts`` and un-keyed."""
        if is_encrypted(message):
            if self.encryption is None:
                raise WireFormatError("an encrypted reply reached a center that holds no CKKS key")
            tokens = self.encryption.decrypt(message)
            if tokens.shape[1:] != self.mask_tokens:
                raise WireFormatError(
                    f"encrypted reply of {tokens.shape[1:]} tokens, expected {self.mask_tokens}"
                )
            tokens = through_wire(tokens, self.grid, "mask", self.cfg.codec.wire_dtype)
        else:
            tokens = decode_codes(message, expect_kind="mask", expect_tokens=self.mask_tokens).tokens
        if shifts is not None:
            tokens = roll_tokens(tokens, self.grid, -shifts)
        return self.key.inverse(tokens, "mask") if self.key else tokens

    def decode_message(self, message: bytes, shifts: np.ndarray | None = None) -> np.ndarray:
        tokens = self.received_mask_tokens(message, shifts)
        return decode_masks(self.mask_codec, tokens, self.grid, self.device)

    @property
    def mask_tokens(self) -> tuple[int, int]:
        return self.grid[0] * self.grid[1], self.cfg.codec.mask_channels

    def segment(self, server: Mapper, images: np.ndarray) -> np.ndarray:
        """encode (shift, encrypt) -> server maps -> decode, for (N, 1, H, W) preprocessed images.

        Encrypted queries go one image at a time: a message of many ciphertexts would hold the
        server's worker for seconds per image."""
        if self.encryption is None:
            shifts = self.draw_shifts(len(images))
            return self.decode_message(server.map(self.query_message(images, shifts)), shifts)
        return np.concatenate(
            [
                self.decode_message(server.map(self.query_message(images[i : i + 1])))
                for i in range(len(images))
            ]
        )


def train_center(
    cfg: ExperimentConfig, train: SliceSet, val: SliceSet, num_classes: int, device, run_dir: Path
) -> tuple[Center, dict]:
    """Mask codec first (its codes are the image encoder's targets in task mode), then the encoder.

    With ``key.enabled`` a fresh secret key is drawn and saved in the center's folder only.
    """
    codec, codec_fit = train_mask_codec(cfg, train, val, num_classes, device, run_dir / MASK_CODEC)
    encoder, encoder_fit, _ = train_image_encoder(cfg, train, val, codec, device, run_dir / IMAGE_ENCODER)
    key = draw_key(cfg, run_dir)
    grid = token_grid(cfg.data.size, cfg.codec)
    center = Center(cfg, codec, encoder, grid, device, key, draw_encryption(cfg, grid, run_dir))
    val_before = mask_ceiling(center, val.masks, num_classes)
    raised = guard_empty_masks(center)
    checkpoint = run_dir / MASK_CODEC
    saved = load_checkpoint(checkpoint, codec_signature(cfg, num_classes, "mask-codec"))
    save_checkpoint(checkpoint, {**saved, "model": codec.state_dict()})
    guard = {
        **raised,
        "val_ceiling_before": val_before,
        "val_ceiling_after": mask_ceiling(center, val.masks, num_classes),
    }
    return center, {"mask_codec": codec_fit, "image_encoder": encoder_fit, "empty_mask_guard": guard}


def draw_key(cfg: ExperimentConfig, run_dir: Path) -> KeyedTransform | None:
    """With ``key.enabled``, a fresh secret key saved in the center's folder only, as the transform it
    drives; without, None (codes go out unmixed, in row-major order)."""
    if not cfg.key.enabled:
        return None
    secret = CenterKey.create()
    secret.save(run_dir / KEY)
    return keyed_transform(cfg, secret)


def draw_encryption(cfg: ExperimentConfig, grid: tuple[int, int], run_dir: Path) -> QueryEncryption | None:
    """With ``encryption.enabled``, fresh CKKS keys saved in the center's folder only; without, None."""
    if not cfg.encryption.enabled:
        return None
    encryption = QueryEncryption.create(grid, cfg.mapper.kernel)
    encryption.save(run_dir / CKKS_KEY)
    return encryption


def keyed_transform(cfg: ExperimentConfig, key: CenterKey) -> KeyedTransform:
    """The transform ``key`` drives for codes of this config's grid and channel counts."""
    grid = token_grid(cfg.data.size, cfg.codec)
    channels = {"image": cfg.codec.image_channels, "mask": cfg.codec.mask_channels}
    return KeyedTransform(key, cfg.key, grid[0] * grid[1], channels)


EMPTY_MASK_SLACK = 1e-3
"""Logits by which background must beat every class on an empty mask's decoded code once guarded, so
float differences between batch sizes or devices in the decoder cannot flip a pixel back."""


def guard_empty_masks(center: Center) -> dict[str, float]:
    """Raise the decoder's background logit just enough that an empty mask's own code decodes empty.

    Every empty mask of the run's size is the same label map, so the (deterministic) encoder gives it
    one code and each wire dtype turns that code into one message: decoding those messages, through
    the key when there is one, covers every empty mask exactly, not on average.

    Guaranteed: an empty mask encoded by this center, sent in its wire dtype (``codec.wire_dtype``) or
    a finer one and decoded by this center, is empty. Coarser dtypes are left out: a codec trained
    for int8 was never taught 2-bit codes, and guarding those would raise background where the
    center's own dtype needs no raise. Not guaranteed: a code the server's mapper predicts for an
    empty slice is not that code, so a mapped prediction can still hold foreground.

    The raise is made pixel by pixel and is the smallest that works (the foreground's lead over
    background there, plus :data:`EMPTY_MASK_SLACK`), so pixels where the empty code already decodes
    background, and every other class, are untouched; one raise for the whole background channel
    would have to be as large as the worst pixel's lead, and on a codec that has barely seen empty
    masks that swamps the foreground of every mask. It is added to ``mask_codec.logit_offset``. Run
    again on loading, so it also holds on the device the codec is loaded on (zero raise when it already
    does).
    """
    codec, size = center.mask_codec, center.cfg.data.size
    empty = np.zeros((1, size, size), np.int64)
    lead = torch.full((size, size), -torch.inf, device=center.device)
    codec.eval()
    with torch.no_grad():
        for dtype in finer_dtypes(center.cfg.codec.wire_dtype):
            tokens = center.received_mask_tokens(center.mask_message(empty, dtype))
            logits = codec.decode(tokens_to_grid(torch.from_numpy(tokens).to(center.device), center.grid))[0]
            lead = torch.maximum(lead, logits[1:].amax(dim=0) - logits[0])
        # brought to a lead of -slack wherever it is above half that, so that float rounding of the
        # raise cannot make a second run (on loading) raise again
        raise_by = torch.where(lead > -EMPTY_MASK_SLACK / 2, lead + EMPTY_MASK_SLACK, 0.0)
        offset = codec.logit_offset.expand(codec.num_classes, size, size).clone()
        offset[0] += raise_by
        codec.logit_offset = offset
    return {"pixels_raised": int((raise_by > 0).sum()), "largest_raise": float(raise_by.max())}


def mask_ceiling(center: Center, masks: np.ndarray, num_classes: int, dtype: str | None = None) -> float:
    """Round-trip Dice of ground-truth masks through the codec and the wire: the pipeline's ceiling."""
    return mean_dice(center.decode_message(center.mask_message(masks, dtype)), masks, num_classes)


def upload_messages(center: Center, train: SliceSet, val: SliceSet) -> tuple[bytes, bytes, bytes, bytes]:
    """All a center sends for the server to learn its mapping: train and val image and mask codes.

    With ``codec.upload_views`` the training pairs are those of every view of each slice, in an order
    drawn from the training seed, so the message's order does not say which codes are views of one
    slice (their contents may still: two views of a slice have similar codes)."""
    codec, seed = center.cfg.codec, center.cfg.train.seed
    images, masks = augmented_views(
        train.images, train.masks, codec.upload_views, seed, codec.view_augmentation
    )
    if codec.upload_views > 1:
        order = np.random.default_rng(seed).permutation(len(images))
        images, masks = images[order], masks[order]
    return (*center.pair_messages(images, masks), *center.pair_messages(val.images, val.masks))


def load_center(cfg: ExperimentConfig, num_classes: int, run_dir: Path, device) -> Center:
    codec = MaskCodec(num_classes, cfg.codec)
    codec.load_state_dict(
        load_checkpoint(run_dir / MASK_CODEC, codec_signature(cfg, num_classes, "mask-codec"))["model"]
    )
    c = cfg.codec
    encoder = build_image_encoder(c)
    encoder.load_state_dict(
        load_checkpoint(run_dir / IMAGE_ENCODER, codec_signature(cfg, num_classes, "image-encoder"))["model"]
    )
    key = keyed_transform(cfg, CenterKey.load(run_dir / KEY)) if cfg.key.enabled else None
    encryption = QueryEncryption.load(run_dir / CKKS_KEY) if cfg.encryption.enabled else None
    center = Center(
        cfg,
        codec.to(device).eval(),
        encoder.to(device).eval(),
        token_grid(cfg.data.size, c),
        device,
        key,
        encryption,
    )
    guard_empty_masks(center)
    return center
