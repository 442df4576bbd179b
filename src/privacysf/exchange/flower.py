"""What the Flower app's messages carry, shared by its server side and its center side.

Every message between the server (``privacysf.server.federation``) and a center
(``privacysf.center.federation``) is one of :data:`ACTIONS`. Their content is only ever:

- code bundles: wire-format code messages (:mod:`privacysf.exchange.wire`) as ``bytes`` in a
  ``ConfigRecord`` named ``codes`` (train/val image and mask codes, test image codes; mapped test mask
  codes coming back); with ``encryption.enabled`` the test codes go and come back as CKKS ciphertexts
  (:mod:`privacysf.exchange.encrypted`) beside the center's public evaluation keys;
- weights of a network being federated in an ``ArrayRecord`` named ``weights``, keys
  ``part/parameter``: the shared mask codec and image encoder only masked (uint32, with a nonce; the
  server returns their masked sum, :mod:`privacysf.exchange.masking`), the raw-image U-Net of the
  baseline in the clear;
- a ``ConfigRecord`` ``task`` of scalars (round, learning rate, which codecs) and a ``MetricRecord``
  ``metrics`` of scalars back (examples, seconds, test Dice).

Bytes per message are counted with :func:`message_bytes`: the serialised size of the message and of
every record it holds, which is what Flower transfers (before gRPC framing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from privacysf.config import ExperimentConfig
from privacysf.errors import ConfigError, FederationError

T = TypeVar("T")

HELLO = "query.hello"
"""Server -> center: who are you? Reply: center index and name, slices per split."""
LOCAL_CODES = "train.local_codes"
"""Center trains its own codecs (and draws its key), replies with its code bundle."""
MASK_CODEC_ROUND = "train.mask_codec"
"""One federated-averaging round of the shared mask codec."""
IMAGE_ENCODER_ROUND = "train.image_encoder"
"""One federated-averaging round of the shared image encoder (its task head averaged with it)."""
SHARED_CODES = "train.shared_codes"
"""Center receives the averaged codecs, replies with its code bundle under them."""
UNET_ROUND = "train.unet"
"""One federated-averaging round of the raw-image U-Net (the baseline users would otherwise pick)."""
EVALUATE_CODES = "evaluate.codes"
"""Server sends mapped test mask codes per mode; center decodes and scores them on its test set."""
EVALUATE_UNET = "evaluate.unet"
"""Server sends the averaged U-Net; center scores it on its test set."""
ACTIONS = (
    HELLO,
    LOCAL_CODES,
    MASK_CODEC_ROUND,
    IMAGE_ENCODER_ROUND,
    SHARED_CODES,
    UNET_ROUND,
    EVALUATE_CODES,
    EVALUATE_UNET,
)

UPLOAD_PARTS = ("train_images", "train_masks", "val_images", "val_masks")
"""Code messages a center sends for the server to learn its mapping (MappingServer.fit's order)."""
TEST_IMAGES = "test_images"
"""Image codes of the center's test split: the server maps them; their masks never leave."""
TEST_QUERIES = "test_queries"
"""With ``encryption.enabled``, in place of :data:`TEST_IMAGES`: the test split's image codes as CKKS
ciphertexts (one ``PSFE`` message); the server maps them without reading them."""
EVALUATION_KEYS = "evaluation_keys"
"""With ``encryption.enabled``: the center's public CKKS evaluation keys (``PSFK``), which let the server
map its :data:`TEST_QUERIES` and read nothing."""
LOCAL, SHARED = "local", "shared"
"""Which codecs a center's codes come from: its own, or the federated-averaged ones."""


def weights_record(parts: dict[str, dict[str, torch.Tensor]]) -> ArrayRecord:
    """State dicts of a network's parts (``{"model": ..., "task_head": ...}``) as one ArrayRecord."""
    return ArrayRecord(
        {
            # np.array, not np.ascontiguousarray, which turns a batch norm's 0-d step count into shape (1,)
            f"{part}/{name}": Array(np.array(value.detach().cpu().numpy(), order="C"))
            for part, state in parts.items()
            for name, value in state.items()
        }
    )


def record_weights(record: ArrayRecord) -> dict[str, dict[str, torch.Tensor]]:
    """Inverse of :func:`weights_record`."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, array in record.items():
        part, _, name = key.partition("/")
        parts.setdefault(part, {})[name] = torch.from_numpy(np.array(array.numpy()))
    return parts


def serialised_parts(message: Message) -> list[bytes]:
    """``message`` and every record inside it, each as Flower serialises it (what goes on the wire)."""
    parts, pending = [], [message]
    while pending:
        item = pending.pop()
        parts.append(item.deflate())
        pending.extend((item.children or {}).values())  # type: ignore[arg-type]  # records deflate too
    return parts


def message_bytes(message: Message) -> int:
    """Serialised bytes of ``message`` and every record inside it (what Flower sends)."""
    return sum(len(part) for part in serialised_parts(message))


def field(record: ConfigRecord | MetricRecord, key: str, kind: type[T], default: T | None = None) -> T:
    """``record[key]`` checked to be a ``kind``: a malformed message fails here, naming the field.

    Flower types every entry as the union of all record values, so a reader must say what it expects.
    A missing entry is ``default`` when one is given, else a :class:`FederationError` too.
    """
    if key not in record:
        if default is not None:
            return default
        raise FederationError(f"message has no field {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        found = type(value).__name__
        raise FederationError(f"message field {key!r} holds a {found}, expected {kind.__name__}")
    return value


def config_record(values: Mapping[str, Any]) -> ConfigRecord:
    """A ConfigRecord of str/bytes/number entries (Flower's constructor wants its exact value union)."""
    return ConfigRecord(dict(values))


def records(**parts: ArrayRecord | ConfigRecord | MetricRecord) -> RecordDict:
    """A message's content from named records."""
    return RecordDict(parts)


def upload_parts(bundle: Mapping[str, bytes]) -> tuple[bytes, bytes, bytes, bytes]:
    """A center's code bundle in ``MappingServer.fit``'s order (:data:`UPLOAD_PARTS`)."""
    train_images, train_masks, val_images, val_masks = (bundle[part] for part in UPLOAD_PARTS)
    return train_images, train_masks, val_images, val_masks


def check_settings(cfg: ExperimentConfig) -> None:
    """Refuse settings the Flower app does not carry, before any center trains (``federate`` and the
    ServerApp both call this, so a run started with ``flwr run`` is refused too)."""
    if cfg.key.per_query_shift:
        raise ConfigError(
            "key.per_query_shift is not built into the Flower app (its test codes would go unshifted); "
            "use it with privacysf fit, segment or the service"
        )
    if cfg.encryption.enabled and "pooled" in cfg.federation.modes:
        others = [m for m in cfg.federation.modes if m != "pooled"]
        raise ConfigError(
            "federation mode pooled gives its mapper a center embedding, which encrypted queries cannot "
            "carry (the server cannot tell whose ciphertext it maps); with encryption.enabled drop it: "
            f"--set 'federation.modes=[{','.join(others or ['pooled-noembed'])}]'"
        )
