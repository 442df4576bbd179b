"""The wire format of codes: the only payload a center sends to or receives from the server.

Layout of one message (all little-endian)::

    b"PSFC" | uint16 format version | uint32 header length | header (UTF-8 JSON) | values

The header states everything needed to read the values back without guessing: ``kind`` (image or
mask code), ``dtype``, ``shape`` (N, L, C) = (codes, tokens, values per token), ``grid`` (h, w) with
L = h·w, and ``scan``: the order in which grid cells became tokens, ``row-major`` or ``keyed`` (a
secret permutation known only to the center, so the receiver must not assume any neighbourhood).
The values are the (N, L, C) numbers in C order. ``float32`` and ``float16`` store them as they are;
the others store, for codes bounded in [-1, 1], the index of the nearest of evenly spaced levels
(:class:`WireValues`): ``int8`` round(127·v) as a signed byte, ``uint4`` and ``uint2`` one of 16 or 4
levels spanning [-1, 1] packed two or four to a byte, first value in the lowest bits, the last byte
padded with zero bits. Anything that does not match (magic, version, sizes, dtype, NaN or infinite
values, non-zero padding) is refused with a :class:`WireFormatError` before it reaches a network.

Version 2 adds lossless compression: its header also states ``compression`` (``none`` or ``deflate``,
a zlib stream of the values above) and ``body_bytes``, the length of the body as sent. A deflated
body must be shorter than its values and inflate to exactly them. A message sent uncompressed is
written as version 1, which every release reads; this one reads both.

Messages are self-delimiting, so several can travel back to back in one upload (a dataset is its
train and validation image and mask codes); :func:`split_messages` cuts such a bundle apart.
"""

from __future__ import annotations

import io
import json
import math
import reprlib
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from privacysf.config import WIRE_COMPRESSION_NAMES, WIRE_DTYPE_NAMES
from privacysf.errors import WireFormatError

MAGIC = b"PSFC"
FORMAT_VERSION = 2
"""The newest format this build writes (for compressed messages) and reads."""
PLAIN_VERSION = 1
"""The version of a message whose body is not compressed: readable by every release."""
SCAN_ORDER = "row-major"
KEYED_SCAN = "keyed"
SCAN_ORDERS = (SCAN_ORDER, KEYED_SCAN)
INT8_SCALE = 127.0
KINDS = ("image", "mask")
PREFIX = struct.Struct("<4sHI")
PREFIX_BYTES = PREFIX.size
"""Magic, format version and header length: the fixed start of every message."""
MAX_HEADER_BYTES = 64 * 1024
MAX_DIM = 2**31 - 1
"""The largest size a header may state for any dimension (a count of codes, tokens or values)."""
HEADER_FIELDS = frozenset({"version", "kind", "dtype", "shape", "grid", "scan"})
COMPRESSED_FIELDS = HEADER_FIELDS | {"compression", "body_bytes"}
"""A version-2 header's fields."""
DEFLATE_LEVEL = 9
MAX_INFLATION = 1032
"""The most deflate can shrink data by (zlib's documented limit, about 1032:1): a header announcing
more values than this many times its body is refused before anything is inflated."""
INFLATE_PIECE_BYTES = 4 * 1024 * 1024
"""The most a whole-message read inflates at a time, whatever size its header announces."""


Codes = TypeVar("Codes", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class WireValues:
    """How one wire dtype stores a code number: as a float, or as the index of the nearest of evenly
    spaced levels in [-1, 1], ``bits`` to an index.

    A level's index is round((v + offset)·half), clipped to [low, high], and it reads back as
    index / half − offset. ``int8`` (offset 0, half 127, ±127) is the symmetric grid with a level at 0
    that the wire has always sent; the packed dtypes (offset 1, half (levels − 1)/2) put their few
    levels at both ends of [-1, 1] and evenly between, as ``tools/code_bits.py`` measured them.
    :func:`privacysf.exchange.rounding.wire_rounding` uses :meth:`levels` too, so training rounds
    exactly as the wire does.
    """

    stored: np.dtype
    """The numpy dtype of one stored number (of one byte of packed indices)."""
    bits: int
    half: float = 0.0
    """Levels per unit of v (0: the number is stored as a float)."""
    offset: float = 0.0
    low: int = 0
    high: int = 0

    @property
    def is_float(self) -> bool:
        return not self.half

    def body_bytes(self, count: int) -> int:
        """Bytes that ``count`` numbers take on the wire."""
        return -(-count * self.bits // 8)

    @property
    def _shifts(self) -> np.ndarray:
        """Where each index of a packed byte starts, in bits: the first value in the lowest bits."""
        return np.arange(8 // self.bits, dtype=np.uint8) * self.bits

    def levels(self, code: Codes) -> Codes:
        """The index of the level nearest each value of float32 ``code`` (a numpy array for the wire, a
        tensor for training: one expression, so both round alike), as floats."""
        return ((code + self.offset) * self.half).round().clip(self.low, self.high)

    def as_sent(self, code: torch.Tensor) -> torch.Tensor:
        """``code`` (float32) as the receiver reads it back."""
        if self.is_float:
            return code.to(getattr(torch, self.stored.name)).float()
        return self.levels(code) / self.half - self.offset

    def to_bytes(self, tokens: np.ndarray) -> bytes:
        """The stored body of float32 ``tokens``."""
        if self.is_float:
            return tokens.astype(self.stored).tobytes()
        index = self.levels(tokens).astype(self.stored).ravel()
        if self.bits == 8:
            return index.tobytes()
        per_byte = 8 // self.bits
        padded = np.zeros(-(-index.size // per_byte) * per_byte, np.uint8)
        padded[: index.size] = index
        packed = np.bitwise_or.reduce(padded.reshape(-1, per_byte) << self._shifts, axis=1)
        return packed.astype(np.uint8).tobytes()

    def check(self, body: bytes | memoryview, count: int) -> None:
        """Refuse what no sender writes into a body (or a whole-byte piece of one) of ``count`` numbers:
        NaN or infinity in a float dtype, an index outside the levels, padding bits that are not zero.
        A stream checks its values piece by piece with this; :meth:`from_bytes` checks the same."""
        raw = np.frombuffer(body, dtype=self.stored)
        if self.is_float:
            if not np.isfinite(raw).all():
                raise WireFormatError("codes contain NaN or infinite values")
            return
        self._indices(raw, count)

    def _indices(self, raw: np.ndarray, count: int) -> np.ndarray:
        """The ``count`` level indices packed in ``raw``, refused unless each is a level and the padding
        bits after the last are zero."""
        if self.bits == 8:
            index = raw
        else:
            unpacked = ((raw[:, None] >> self._shifts) & (2**self.bits - 1)).ravel()
            if unpacked[count:].any():
                raise WireFormatError("the padding bits after the last code value are not zero")
            index = unpacked[:count]
        if index.size and (index.min() < self.low or index.max() > self.high):
            raise WireFormatError(f"code values must be level indices {self.low}..{self.high}")
        return index

    def from_bytes(self, body: bytes | memoryview, count: int) -> np.ndarray:
        """``count`` float32 numbers from a stored body of :meth:`body_bytes` bytes, checked as
        :meth:`check` does."""
        raw = np.frombuffer(body, dtype=self.stored)
        if self.is_float:
            self.check(body, count)
            return raw.astype(np.float32)
        index = self._indices(raw, count)
        return index.astype(np.float32) / np.float32(self.half) - np.float32(self.offset)


def evenly_spaced(levels: int, bits: int) -> WireValues:
    """``levels`` evenly spaced values spanning [-1, 1], each index stored in ``bits`` (1, 2, 4 or 8)."""
    if 8 % bits or not 2 <= levels <= 2**bits:
        raise ValueError(f"{levels} levels do not fit {bits}-bit indices packed whole into bytes")
    top = levels - 1
    return WireValues(np.dtype(np.uint8), bits, half=top / 2, offset=1.0, high=top)


WIRE_DTYPES = dict(
    zip(
        WIRE_DTYPE_NAMES,
        (
            WireValues(np.dtype("<f4"), 32),
            WireValues(np.dtype("<f2"), 16),
            WireValues(np.dtype("i1"), 8, half=INT8_SCALE, low=-127, high=127),
            evenly_spaced(16, 4),
            evenly_spaced(4, 2),
        ),
        strict=True,
    )
)
"""How each wire dtype stores a number, finest first."""


def finer_dtypes(dtype: str) -> tuple[str, ...]:
    """``dtype`` and every wire dtype that rounds codes less than it does."""
    return WIRE_DTYPE_NAMES[: WIRE_DTYPE_NAMES.index(dtype) + 1]


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
    compression: str = "none"
    """How the values travelled (set by :func:`decode_codes`), so a reply can travel the same way."""

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


def encode_codes(batch: CodeBatch, dtype: str = "float16", compression: str = "none") -> bytes:
    """One message of ``batch`` in ``dtype``; with ``compression="deflate"`` its values are deflated
    when that makes the message shorter (random or keyed codes may not shrink: they then go as they
    are, so deflating never lengthens a message)."""
    if dtype not in WIRE_DTYPES:
        raise WireFormatError(f"wire dtype {dtype!r} is not one of {sorted(WIRE_DTYPES)}")
    if compression not in WIRE_COMPRESSION_NAMES:
        raise WireFormatError(f"wire compression {compression!r} is not one of {WIRE_COMPRESSION_NAMES}")
    if batch.scan not in SCAN_ORDERS:
        raise WireFormatError(f"scan order {batch.scan!r} is not one of {SCAN_ORDERS}")
    tokens = np.asarray(batch.tokens, dtype=np.float32)
    if tokens.ndim != 3 or tokens.shape[1] != batch.grid[0] * batch.grid[1]:
        raise WireFormatError(f"codes of shape {tokens.shape} do not fill a {batch.grid} token grid")
    n, length, channels = tokens.shape
    values = WIRE_DTYPES[dtype].to_bytes(tokens)
    header = encode_header(batch.kind, dtype, (n, length, channels), batch.grid, batch.scan)
    if compression == "deflate":
        deflated = zlib.compress(values, DEFLATE_LEVEL)
        v2_header = encode_header(batch.kind, dtype, (n, length, channels), batch.grid, batch.scan, deflated)
        if len(v2_header) + len(deflated) < len(header) + len(values):  # whole messages: v2 header is longer
            return v2_header + deflated
    return header + values


def encode_header(
    kind: str,
    dtype: str,
    shape: tuple[int, int, int],
    grid: tuple[int, int],
    scan: str,
    deflated: bytes | None = None,
) -> bytes:
    """A message's prefix and header: version 1 when its values follow as they are (so a big message
    can be written in parts), version 2 when the body is ``deflated``."""
    fields: dict = {"kind": kind, "dtype": dtype, "shape": list(shape), "grid": list(grid), "scan": scan}
    version = PLAIN_VERSION
    if deflated is not None:
        version = FORMAT_VERSION
        fields |= {"compression": "deflate", "body_bytes": len(deflated)}
    header = json.dumps({"version": version, **fields}).encode()
    return PREFIX.pack(MAGIC, version, len(header)) + header


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
    """Bytes of the prefix and the header together: where the body starts."""
    compression: str
    """``none`` or ``deflate``."""
    body_bytes: int
    """Bytes of the body as sent: the values, or their deflated stream."""

    @property
    def values_bytes(self) -> int:
        """Bytes of the values once inflated."""
        return values_bytes(self.dtype, self.shape)


def values_bytes(dtype: str, shape: tuple[int, int, int]) -> int:
    """Bytes that a (N, L, C) ``shape`` of codes in ``dtype`` take before any compression."""
    return WIRE_DTYPES[dtype].body_bytes(math.prod(shape))


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
    if version not in (PLAIN_VERSION, FORMAT_VERSION):
        raise WireFormatError(
            f"code format version {version} is not supported (this build reads versions "
            f"{PLAIN_VERSION} and {FORMAT_VERSION}); encode with a matching privacysf release"
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
    version = PREFIX.unpack_from(payload, offset)[1]
    fields = COMPRESSED_FIELDS if version == FORMAT_VERSION else HEADER_FIELDS
    if not isinstance(header, dict) or not header.keys() >= fields:
        raise WireFormatError(
            f"a version-{version} code header must be a JSON object with the fields {sorted(fields)}"
        )
    dtype, kind, scan = header["dtype"], header["kind"], header["scan"]
    if type(header["version"]) is not int or header["version"] != version:
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
    plain = values_bytes(dtype, (n, length, channels))
    compression, body = "none", plain
    if version == FORMAT_VERSION:
        compression, body = header["compression"], header["body_bytes"]
        if compression != "deflate":  # a plain message is version 1
            raise WireFormatError(
                f"a version-2 message's compression must be deflate, not {_short(compression)}"
            )
        if type(body) is not int or not (0 < body < plain and plain <= MAX_INFLATION * body):
            raise WireFormatError(
                f"code body length {_short(body)} does not fit deflated values of {plain} bytes "
                f"(a deflated body is shorter than its values, and at least 1/{MAX_INFLATION} of them)"
            )
    return Header(
        dtype,
        (n, length, channels),
        (grid[0], grid[1]),
        kind,
        scan,
        PREFIX_BYTES + header_len,
        compression,
        body,
    )


def _short(value: object) -> str:
    """A header value for an error message, cut short in length and depth (a hostile header can nest
    lists almost as deep as the JSON parser allows, and ``repr`` would recurse just as deep)."""
    return reprlib.repr(value)


def fits_wire(tokens: np.ndarray, dtype: str) -> bool:
    """Whether ``tokens`` travel as ``dtype`` without NaN or infinity, which :func:`decode_codes` refuses
    (float16 turns values past 65504 into infinity; the level dtypes clip finite values)."""
    values = WIRE_DTYPES[dtype]
    if not values.is_float:
        return bool(np.isfinite(tokens).all())
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.asarray(tokens).astype(values.stored)).all())


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
    stored: bytes | memoryview = body
    if header.compression == "deflate":
        stored = b"".join(value_pieces(io.BytesIO(body).read, header, INFLATE_PIECE_BYTES))
    values = WIRE_DTYPES[header.dtype].from_bytes(stored, math.prod(header.shape)).reshape(header.shape)
    return CodeBatch(values, header.grid, header.kind, header.dtype, header.scan, header.compression)


def value_pieces(
    read: Callable[[int], bytes | memoryview], header: Header, step: int, what: str = "the message"
) -> Iterator[bytes]:
    """The values of the message ``header`` heads, in pieces of at most ``step`` bytes that hold whole
    stored numbers, from a body that ``read(n)`` returns up to ``n`` bytes of at a time (a file's
    ``read``): inflated as they come when the body is deflated, never more than ``step`` at once, so
    a small deflated body that would inflate past its header's size is refused before it fills memory.
    Errors name the message as ``what``.
    """
    itemsize = WIRE_DTYPES[header.dtype].stored.itemsize
    step = max(itemsize, step - step % itemsize)
    inflater = zlib.decompressobj() if header.compression == "deflate" else None
    remaining, produced, carry = header.body_bytes, 0, b""
    while remaining:
        chunk = bytes(read(min(step, remaining)))
        if not chunk:
            raise WireFormatError(f"{what} is truncated: {remaining} bytes of its codes are missing")
        remaining -= len(chunk)
        for out in _inflate(inflater, chunk, step, what) if inflater else (chunk,):
            produced += len(out)
            if produced > header.values_bytes:
                raise WireFormatError(
                    f"{what} inflates past the {header.values_bytes} bytes its header announces"
                )
            carry += out
            whole = len(carry) - len(carry) % itemsize
            if whole:
                yield carry[:whole]
                carry = carry[whole:]
    if inflater is not None and not inflater.eof:
        raise WireFormatError(f"{what} has a deflated body that does not end where its header says")
    if produced != header.values_bytes:
        raise WireFormatError(
            f"{what} inflates to {produced} bytes, its header announces {header.values_bytes}"
        )


def _inflate(inflater: zlib._Decompress, chunk: bytes, step: int, what: str) -> Iterator[bytes]:
    """What ``chunk`` of a deflated stream inflates to, at most ``step`` bytes at a time (a full piece
    may leave output pending in the inflater after all its input is taken: asked for until it runs dry)."""
    while True:
        try:
            out = inflater.decompress(chunk, step)
        except zlib.error as exc:
            raise WireFormatError(f"{what} has a corrupt deflated body ({exc})") from None
        chunk = inflater.unconsumed_tail
        if out:
            yield out
        if inflater.eof:  # past its end the inflater keeps input in both tail and unused data
            if chunk or inflater.unused_data:
                raise WireFormatError(f"{what} has bytes after its deflated stream")
            return
        if not chunk and len(out) < step:
            return


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
