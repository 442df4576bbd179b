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
import math
import reprlib
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
PREFIX = struct.Struct("<4sHI")
PREFIX_BYTES = PREFIX.size
"""Magic, format version and header length: the fixed start of every message."""
MAX_HEADER_BYTES = 64 * 1024
MAX_DIM = 2**31 - 1
"""The largest size a header may state for any dimension (a count of codes, tokens or values)."""
HEADER_FIELDS = frozenset({"version", "kind", "dtype", "shape", "grid", "scan"})


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


def roll_tokens(tokens: np.ndarray, grid: tuple[int, int], shifts: np.ndarray) -> np.ndarray:
    """(N, L, C) raster-order codes on ``grid``, each rolled cyclically by its (rows, columns) shift."""
    n, _, channels = tokens.shape
    on_grid = tokens.reshape(n, *grid, channels)
    rolled = [
        np.roll(code, (int(dy), int(dx)), axis=(0, 1)) for code, (dy, dx) in zip(on_grid, shifts, strict=True)
    ]
    return np.stack(rolled).reshape(tokens.shape) if n else tokens


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
    return PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header


@dataclass(frozen=True)
class Header:
    """A message's header, every field checked: what :func:`decode_codes` and :func:`split_messages` read.

    Sizes are Python ints (never a fixed-width NumPy product that can wrap around), so a shape whose
    element count overflows 64 bits announces a huge body rather than an empty one.
    """

    dtype: str
    shape: tuple[int, int, int]
    grid: tuple[int, int]
    kind: str
    scan: str
    body_offset: int
    """Bytes of the prefix and the header together: where the values start."""

    @property
    def body_bytes(self) -> int:
        return math.prod(self.shape) * WIRE_DTYPES[self.dtype].itemsize


def _dims(value: object, count: int) -> tuple[int, ...] | None:
    """``count`` sizes as a tuple, or None unless each is a plain int in 1..MAX_DIM (a JSON ``true`` is
    a Python bool, itself an int: refused)."""
    if not isinstance(value, list) or len(value) != count:
        return None
    if not all(type(v) is int and 0 < v <= MAX_DIM for v in value):
        return None
    return tuple(value)


def header_length(payload: bytes, offset: int = 0) -> int:
    """The header length the fixed prefix at ``offset`` announces, once its magic and version check out
    (a stream reads this many bytes more to hold the whole header)."""
    if len(payload) - offset < PREFIX_BYTES:
        raise WireFormatError(f"payload of {len(payload) - offset} bytes is too short to hold a code header")
    magic, version, header_len = PREFIX.unpack_from(payload, offset)
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
    offset: int = 0,
    expect_kind: str | None = None,
    expect_tokens: tuple[int, int] | None = None,
) -> Header:
    """The header of the message starting at ``offset``, refused with a :class:`WireFormatError` unless
    every field is well-formed and it is what the receiver expects: ``expect_kind`` and (L, C) per code
    ``expect_tokens``. Its values are not read: ``payload`` may end after the header (a stream is
    checked message by message without holding its values)."""
    header_len = header_length(payload, offset)
    start = offset + PREFIX_BYTES
    if start + header_len > len(payload):
        raise WireFormatError("code header length is inconsistent with the payload size")
    try:
        header = json.loads(payload[start : start + header_len])
    except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested JSON
        raise WireFormatError(f"code header is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(header, dict) or not header.keys() >= HEADER_FIELDS:
        raise WireFormatError(f"code header must be a JSON object with the fields {sorted(HEADER_FIELDS)}")
    dtype, kind, scan = header["dtype"], header["kind"], header["scan"]
    if type(header["version"]) is not int or header["version"] != FORMAT_VERSION:
        raise WireFormatError("code header and prefix disagree on the format version")
    if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
        raise WireFormatError(f"code dtype {_short(dtype)} is not one of {sorted(WIRE_DTYPES)}")
    if not isinstance(kind, str) or kind not in KINDS:
        raise WireFormatError(f"code kind {_short(kind)} is not one of {KINDS}")
    if not isinstance(scan, str) or scan not in SCAN_ORDERS:
        raise WireFormatError(f"scan order {_short(scan)} is not supported (expected one of {SCAN_ORDERS})")
    shape, grid = _dims(header["shape"], 3), _dims(header["grid"], 2)
    if shape is None or grid is None or shape[1] != grid[0] * grid[1]:
        raise WireFormatError(
            f"code shape {_short(header['shape'])} does not match token grid {_short(header['grid'])} "
            f"(sizes are positive integers up to {MAX_DIM})"
        )
    if expect_kind is not None and kind != expect_kind:
        raise WireFormatError(f"expected {expect_kind} codes, got kind {kind!r}")
    if expect_tokens is not None and shape[1:] != tuple(expect_tokens):
        raise WireFormatError(
            f"codes have {shape[1]} tokens of {shape[2]} values, but this model takes "
            f"{expect_tokens[0]} tokens of {expect_tokens[1]} values; encode with the matching codec"
        )
    n, length, channels = shape
    return Header(dtype, (n, length, channels), (grid[0], grid[1]), kind, scan, PREFIX_BYTES + header_len)


def _short(value: object) -> str:
    """A header value for an error message, cut short in length and depth (a hostile header can nest
    lists almost as deep as the JSON parser allows, and ``repr`` would recurse just as deep)."""
    return reprlib.repr(value)


def fits_wire(tokens: np.ndarray, dtype: str) -> bool:
    """Whether ``tokens`` travel as ``dtype`` without NaN or infinity, which :func:`decode_codes` refuses
    (float16 turns values past 65504 into infinity; int8 clips finite values)."""
    if dtype == "int8":
        return bool(np.isfinite(tokens).all())
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.asarray(tokens).astype(WIRE_DTYPES[dtype])).all())


def decode_codes(
    payload: bytes,
    expect_kind: str | None = None,
    expect_tokens: tuple[int, int] | None = None,
) -> CodeBatch:
    """Read a message, checking it against what the receiver expects: kind and (L, C) per code."""
    header = read_header(payload, expect_kind=expect_kind, expect_tokens=expect_tokens)
    body = memoryview(payload)[header.body_offset :]
    if len(body) != header.body_bytes:
        raise WireFormatError(f"code body has {len(body)} bytes, its header announces {header.body_bytes}")
    check_finite(body, header.dtype)
    values = np.frombuffer(body, dtype=WIRE_DTYPES[header.dtype]).reshape(header.shape).astype(np.float32)
    if header.dtype == "int8":
        values /= INT8_SCALE
    return CodeBatch(values, header.grid, header.kind, header.dtype, header.scan)


def check_finite(values: bytes | memoryview, dtype: str) -> None:
    """Refuse NaN or infinite values among raw wire ``values`` (any whole number of items; int8 holds
    none)."""
    if dtype != "int8" and not np.isfinite(np.frombuffer(values, dtype=WIRE_DTYPES[dtype])).all():
        raise WireFormatError("codes contain NaN or infinite values")


def split_messages(payload: bytes, count: int) -> list[bytes]:
    """Cut ``count`` messages sent back to back; each is checked later by :func:`decode_codes`."""
    messages, offset = [], 0
    for index in range(count):
        if len(payload) - offset < PREFIX_BYTES:
            raise WireFormatError(f"the upload ends before message {index + 1} of {count}")
        try:
            header = read_header(payload, offset)
        except WireFormatError as exc:
            raise WireFormatError(f"message {index + 1} of {count} has a malformed header: {exc}") from None
        end = offset + header.body_offset + header.body_bytes
        if end > len(payload):
            raise WireFormatError(f"message {index + 1} of {count} is truncated or announces a wrong shape")
        messages.append(payload[offset:end])
        offset = end
    if offset != len(payload):
        raise WireFormatError(f"{len(payload) - offset} bytes follow the last of {count} messages")
    return messages
