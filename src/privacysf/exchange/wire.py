"""The wire format of codes: the only payload a center sends to or receives from the server.

Layout of one message (all little-endian)::

    b"PSFC" | uint16 format version | uint32 header length | header (UTF-8 JSON) | values

The header states everything needed to read the values back without guessing: ``kind`` (image or
mask code), ``dtype``, ``shape`` (N, L, C) = (codes, tokens, values per token), ``grid`` (h, w) with
L = h·w, and ``scan``: the order in which grid cells became tokens, ``row-major`` or ``keyed`` (a
secret permutation known only to the center, so the receiver must not assume any neighbourhood).
``int8`` codes store round(127·v) of codes bounded in [-1, 1]. Anything that does not match (magic,
version, sizes, dtype, NaN or infinite values) is refused with a :class:`WireFormatError` before it
reaches a network.

Messages are self-delimiting, so several can travel back to back in one upload (a dataset is its
train and validation image and mask codes); :func:`split_messages` cuts such a bundle apart.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np
import torch

from privacysf.config import WIRE_DTYPE_NAMES
from privacysf.errors import WireFormatError

MAGIC = b"PSFC"
FORMAT_VERSION = 1
SCAN_ORDER = "row-major"
KEYED_SCAN = "keyed"
SCAN_ORDERS = (SCAN_ORDER, KEYED_SCAN)
WIRE_DTYPES = dict(zip(WIRE_DTYPE_NAMES, map(np.dtype, ("<f4", "<f2", "i1")), strict=True))
INT8_SCALE = 127.0
KINDS = ("image", "mask")
_PREFIX = struct.Struct("<4sHI")
PREFIX_BYTES = _PREFIX.size
"""Magic, format version and header length: the fixed start of every message."""
MAX_HEADER_BYTES = 64 * 1024


@dataclass
class CodeBatch:
    """Codes as token sequences: ``tokens`` is float32 (N, L, C) over an h×w ``grid``."""

    tokens: np.ndarray
    grid: tuple[int, int]
    kind: str
    wire_dtype: str | None = None
    """The dtype the codes travelled in (set by :func:`decode_codes`)."""
    scan: str = SCAN_ORDER
    """``row-major`` or ``keyed`` (tokens permuted by the center's secret key)."""

    @property
    def shape(self) -> tuple[int, int, int]:
        n, length, channels = self.tokens.shape
        return n, length, channels


def grid_to_tokens(code: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) feature maps -> (N, h·w, C) tokens in row-major scan order."""
    return code.flatten(2).transpose(1, 2)


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, h·w, C) tokens -> (N, C, h, w) feature maps (inverse of :func:`grid_to_tokens`)."""
    n, length, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(n, channels, *grid)


def encode_codes(batch: CodeBatch, dtype: str = "float16") -> bytes:
    if dtype not in WIRE_DTYPES:
        raise WireFormatError(f"wire dtype {dtype!r} is not one of {sorted(WIRE_DTYPES)}")
    if batch.scan not in SCAN_ORDERS:
        raise WireFormatError(f"scan order {batch.scan!r} is not one of {SCAN_ORDERS}")
    tokens = np.asarray(batch.tokens, dtype=np.float32)
    if tokens.ndim != 3 or tokens.shape[1] != batch.grid[0] * batch.grid[1]:
        raise WireFormatError(f"codes of shape {tokens.shape} do not fill a {batch.grid} token grid")
    if dtype == "int8":
        values = np.clip(np.rint(tokens * INT8_SCALE), -127, 127).astype(WIRE_DTYPES[dtype])
    else:
        values = tokens.astype(WIRE_DTYPES[dtype])
    n, length, channels = tokens.shape
    return encode_header(batch.kind, dtype, (n, length, channels), batch.grid, batch.scan) + values.tobytes()


def encode_header(
    kind: str, dtype: str, shape: tuple[int, int, int], grid: tuple[int, int], scan: str
) -> bytes:
    """A message's prefix and header; its values follow (so a big message can be written in parts)."""
    header = json.dumps(
        {
            "version": FORMAT_VERSION,
            "kind": kind,
            "dtype": dtype,
            "shape": list(shape),
            "grid": list(grid),
            "scan": scan,
        }
    ).encode()
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header


@dataclass(frozen=True)
class MessageHeader:
    """What a message's prefix and header announce, checked; the values follow at ``body_offset``."""

    kind: str
    dtype: str
    shape: tuple[int, int, int]
    grid: tuple[int, int]
    scan: str
    body_offset: int

    @property
    def body_bytes(self) -> int:
        """How many bytes of values the header announces (Python ints: no overflow)."""
        n, length, channels = self.shape
        return n * length * channels * WIRE_DTYPES[self.dtype].itemsize


def header_length(prefix: bytes) -> int:
    """The header length a message's fixed prefix announces, once its magic and version check out."""
    if len(prefix) < PREFIX_BYTES:
        raise WireFormatError(f"payload of {len(prefix)} bytes is too short to hold a code header")
    magic, version, header_len = _PREFIX.unpack_from(prefix)
    if magic != MAGIC:
        raise WireFormatError("payload is not a Privacy-SF code message (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise WireFormatError(
            f"code format version {version} is not supported (this build reads version "
            f"{FORMAT_VERSION}); encode with a matching privacysf release"
        )
    if header_len > MAX_HEADER_BYTES:
        raise WireFormatError("code header length is inconsistent with the payload size")
    return int(header_len)


def read_header(
    payload: bytes,
    expect_kind: str | None = None,
    expect_tokens: tuple[int, int] | None = None,
) -> MessageHeader:
    """Check a message's prefix and header against what the receiver expects: kind and (L, C) per code.

    ``payload`` needs to hold only the prefix and the header, so a stream can be checked message by
    message before (and without) reading its values into memory.
    """
    header_len = header_length(payload)
    if PREFIX_BYTES + header_len > len(payload):
        raise WireFormatError("code header length is inconsistent with the payload size")
    try:
        header = json.loads(payload[PREFIX_BYTES : PREFIX_BYTES + header_len])
        dtype, shape, grid, kind = header["dtype"], header["shape"], header["grid"], header["kind"]
        scan = header["scan"]
    except (ValueError, KeyError, TypeError) as exc:
        raise WireFormatError(f"code header is malformed: {exc}") from None
    if header.get("version") != FORMAT_VERSION:
        raise WireFormatError("code header and prefix disagree on the format version")
    if dtype not in WIRE_DTYPES:
        raise WireFormatError(f"code dtype {dtype!r} is not one of {sorted(WIRE_DTYPES)}")
    if kind not in KINDS or (expect_kind is not None and kind != expect_kind):
        raise WireFormatError(f"expected {expect_kind or 'image/mask'} codes, got kind {kind!r}")
    if scan not in SCAN_ORDERS:
        raise WireFormatError(f"scan order {scan!r} is not supported (expected one of {SCAN_ORDERS})")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(v, int) and v > 0 for v in shape)
        or not isinstance(grid, list)
        or len(grid) != 2
        or not all(isinstance(v, int) and v > 0 for v in grid)
        or shape[1] != grid[0] * grid[1]
    ):
        raise WireFormatError(f"code shape {shape} does not match token grid {grid}")
    if expect_tokens is not None and tuple(shape[1:]) != tuple(expect_tokens):
        raise WireFormatError(
            f"codes have {shape[1]} tokens of {shape[2]} values, but this model takes "
            f"{expect_tokens[0]} tokens of {expect_tokens[1]} values; encode with the matching codec"
        )
    return MessageHeader(
        kind, dtype, (shape[0], shape[1], shape[2]), (grid[0], grid[1]), scan, PREFIX_BYTES + header_len
    )


def check_finite(values: bytes | memoryview, dtype: str) -> None:
    """Refuse NaN or infinite values among raw wire ``values`` (any whole number of items)."""
    if dtype != "int8" and not np.isfinite(np.frombuffer(values, dtype=WIRE_DTYPES[dtype])).all():
        raise WireFormatError("codes contain NaN or infinite values")


def decode_codes(
    payload: bytes,
    expect_kind: str | None = None,
    expect_tokens: tuple[int, int] | None = None,
) -> CodeBatch:
    """Read a message, checking it against what the receiver expects: kind and (L, C) per code."""
    header = read_header(payload, expect_kind, expect_tokens)
    body = memoryview(payload)[header.body_offset :]
    if len(body) != header.body_bytes:
        raise WireFormatError(f"code body has {len(body)} bytes, its header announces {header.body_bytes}")
    check_finite(body, header.dtype)
    values = np.frombuffer(body, dtype=WIRE_DTYPES[header.dtype]).reshape(header.shape).astype(np.float32)
    if header.dtype == "int8":
        values /= INT8_SCALE
    return CodeBatch(values, header.grid, header.kind, header.dtype, header.scan)


def split_messages(payload: bytes, count: int) -> list[bytes]:
    """Cut ``count`` messages sent back to back; each is checked later by :func:`decode_codes`."""
    messages, offset = [], 0
    for index in range(count):
        if len(payload) - offset < _PREFIX.size:
            raise WireFormatError(f"the upload ends before message {index + 1} of {count}")
        magic, _, header_len = _PREFIX.unpack_from(payload, offset)
        if magic != MAGIC:
            raise WireFormatError(f"message {index + 1} of {count} is not a Privacy-SF code message")
        start = offset + _PREFIX.size
        if header_len > MAX_HEADER_BYTES or start + header_len > len(payload):
            raise WireFormatError(f"message {index + 1} of {count} has an inconsistent header length")
        try:
            header = json.loads(payload[start : start + header_len])
            itemsize = WIRE_DTYPES[header["dtype"]].itemsize
            values = int(np.prod(header["shape"], dtype=np.int64)) * itemsize
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise WireFormatError(f"message {index + 1} of {count} has a malformed header: {exc}") from None
        end = start + header_len + values
        if values < 0 or end > len(payload):
            raise WireFormatError(f"message {index + 1} of {count} is truncated or announces a wrong shape")
        messages.append(payload[offset:end])
        offset = end
    if offset != len(payload):
        raise WireFormatError(f"{len(payload) - offset} bytes follow the last of {count} messages")
    return messages
