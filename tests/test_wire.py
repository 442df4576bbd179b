import json
import re
import struct

import numpy as np
import pytest

from privacysf.errors import WireFormatError
from privacysf.exchange import FORMAT_VERSION, PLAIN_VERSION, CodeBatch, decode_codes, encode_codes


def batch(n=3, grid=(4, 5), channels=6, seed=0):
    tokens = np.random.default_rng(seed).uniform(-1, 1, (n, grid[0] * grid[1], channels)).astype(np.float32)
    return CodeBatch(tokens, grid, "image")


@pytest.mark.parametrize(
    ("dtype", "tolerance", "body_bytes"),
    [
        ("float32", 0, 1440),
        ("float16", 1e-3, 720),
        ("int8", 0.5 / 127, 360),
        ("uint4", 1 / 15, 180),
        ("uint2", 1 / 3, 90),
    ],
)
def test_round_trip_and_size(dtype, tolerance, body_bytes):
    original = batch()  # 3 x 20 x 6 = 360 values
    message = encode_codes(original, dtype)
    back = decode_codes(message, expect_kind="image", expect_tokens=(20, 6))
    assert back.grid == (4, 5) and back.kind == "image" and back.wire_dtype == dtype
    np.testing.assert_allclose(back.tokens, original.tokens, atol=tolerance + 1e-7)
    header_len = struct.unpack_from("<I", message, 6)[0]
    assert len(message) == 10 + header_len + body_bytes
    header = json.loads(message[10 : 10 + header_len])
    assert header == {
        "version": PLAIN_VERSION,
        "kind": "image",
        "dtype": dtype,
        "shape": [3, 20, 6],
        "grid": [4, 5],
        "scan": "row-major",
    }


def _with_header(message: bytes, **changes) -> bytes:
    header_len = struct.unpack_from("<I", message, 6)[0]
    header = json.loads(message[10 : 10 + header_len])
    header.update(changes)
    raw = json.dumps(header).encode()
    return message[:6] + struct.pack("<I", len(raw)) + raw + message[10 + header_len :]


def test_refuses_other_versions_and_garbage():
    message = encode_codes(batch(), "float16")
    newer = struct.pack("<4sH", b"PSFC", FORMAT_VERSION + 1) + message[6:]
    with pytest.raises(WireFormatError, match="version 3 is not supported"):
        decode_codes(newer)
    with pytest.raises(WireFormatError, match="magic"):
        decode_codes(b"GIF8" + message[4:])
    with pytest.raises(WireFormatError, match="too short"):
        decode_codes(message[:5])
    with pytest.raises(WireFormatError, match="body has"):
        decode_codes(message[:-7])


def test_refuses_wrong_shape_dtype_kind_and_values():
    message = encode_codes(batch(), "float32")
    with pytest.raises(WireFormatError, match="this model takes 16 tokens of 6 values"):
        decode_codes(message, expect_tokens=(16, 6))
    with pytest.raises(WireFormatError, match="dtype 'float64'"):
        decode_codes(_with_header(message, dtype="float64"))
    with pytest.raises(WireFormatError, match="expected mask codes"):
        decode_codes(message, expect_kind="mask")
    with pytest.raises(WireFormatError, match="does not match token grid"):
        decode_codes(_with_header(message, grid=[5, 5]))
    with pytest.raises(WireFormatError, match="scan order"):
        decode_codes(_with_header(message, scan="column-major"))
    bad = batch()
    bad.tokens[0, 0, 0] = np.nan
    with pytest.raises(WireFormatError, match="NaN"):
        decode_codes(encode_codes(bad, "float32"))


def test_messages_sent_back_to_back_split_apart_and_truncation_is_refused():
    from privacysf.exchange import split_messages

    first, second = encode_codes(batch(2), "int8"), encode_codes(batch(1, seed=1), "float16")
    assert split_messages(first + second, 2) == [first, second]
    with pytest.raises(WireFormatError, match="truncated"):
        split_messages(first + second[:-1], 2)
    with pytest.raises(WireFormatError, match="ends before message 2 of 2"):
        split_messages(first, 2)
    with pytest.raises(WireFormatError, match="3 bytes follow the last"):
        split_messages(first + b"abc", 1)
    with pytest.raises(WireFormatError, match="malformed header"):
        split_messages(first[:10] + b"{" * (len(first) - 10), 1)


def _hostile(change: dict, body: bytes = b"") -> bytes:
    """A valid header with ``change`` applied, the body as given (the fuzzer builds the same way)."""
    from privacysf.benchmark.fuzzing import header_of, message

    header, _ = header_of(encode_codes(batch(1)))
    return message({**header, **change}, body)


BIG_GRID = [46_340, 46_340]
"""2,147,395,600 tokens, just within the largest size a header may state: sizes multiply past int64."""
HOSTILE_HEADERS = [
    ({"shape": [True, 20, 6]}, "positive integers"),
    ({"shape": [1, 20, False]}, "positive integers"),
    ({"shape": [-1, 20, 6]}, "positive integers"),
    ({"shape": [0, 20, 6]}, "positive integers"),
    ({"shape": [2**56, 20, 6]}, "positive integers"),
    ({"shape": [1.0, 20, 6]}, "positive integers"),
    (
        {"shape": [2**31 - 1, BIG_GRID[0] ** 2, 4], "grid": BIG_GRID},
        "its header announces 36891975477118025600",
    ),
    ({"grid": [4, 5, 1]}, "positive integers"),
    ({"dtype": ["int8"]}, "dtype ['int8']"),
    ({"dtype": {"a": 1}}, "is not one of"),
    ({"kind": ["image"]}, "kind ['image']"),
    ({"scan": None}, "scan order None"),
    ({"version": True}, "disagree on the format version"),
]


@pytest.mark.parametrize(("change", "words"), HOSTILE_HEADERS, ids=[str(c) for c, _ in HOSTILE_HEADERS])
def test_hostile_header_values_are_refused_in_both_readers(change, words):
    """A wire-format error, never a TypeError or a shape arithmetic that wraps around int64 (with an
    empty body, a wrapped element count of 0 would match it)."""
    from privacysf.exchange import split_messages

    payload = _hostile(change)
    with pytest.raises(WireFormatError, match=re.escape(words)):
        decode_codes(payload)
    with pytest.raises(WireFormatError):
        split_messages(payload, 1)


@pytest.mark.parametrize("raw", [b"[" * 20_000 + b"]" * 20_000, b"[1]", b"null", b"\xff\xfe"])
def test_a_header_that_is_not_a_json_object_is_refused(raw):
    from privacysf.benchmark.fuzzing import message

    with pytest.raises(WireFormatError, match="JSON"):
        decode_codes(message(raw, b""))


@pytest.mark.parametrize(
    ("value", "dtype", "fits"),
    [(np.nan, "float32", False), (np.inf, "int8", False), (1e5, "float16", False), (1e5, "float32", True)],
)
def test_values_the_receiver_would_refuse_do_not_fit_the_wire(value, dtype, fits):
    from privacysf.exchange.wire import fits_wire

    codes = batch(1)
    assert fits_wire(codes.tokens, dtype)
    codes.tokens[0, 0, 0] = value
    assert fits_wire(codes.tokens, dtype) is fits


def test_packed_dtypes_send_evenly_spaced_levels_first_value_lowest_and_pad_with_zero_bits():
    levels = np.array([-1, -1 / 3, 1 / 3, 1, 1, -1, 0.9], np.float32)  # 7 values: the last byte holds 3
    message = encode_codes(CodeBatch(levels.reshape(1, 7, 1), (7, 1), "mask"), "uint2")
    assert message[-2:] == bytes([0b11_10_01_00, 0b00_11_00_11])
    np.testing.assert_allclose(
        decode_codes(message).tokens.ravel(), [-1, -1 / 3, 1 / 3, 1, 1, -1, 1], atol=1e-7
    )
    with pytest.raises(WireFormatError, match="padding bits"):
        decode_codes(message[:-1] + bytes([0b01_11_00_11]))
    nibbles = encode_codes(
        CodeBatch(np.array([[[-1.0], [1.0], [1 / 15]]], np.float32), (3, 1), "mask"), "uint4"
    )
    assert nibbles[-2:] == bytes([0xF0, 0x08])  # levels 0, 15, then 8 (1/15 is level 8 of 0..15)
    assert decode_codes(nibbles).tokens.ravel().tolist() == [-1, 1, pytest.approx(1 / 15)]


def test_an_int8_value_below_the_lowest_level_is_refused():
    message = encode_codes(batch(1), "int8")
    with pytest.raises(WireFormatError, match="level indices -127..127"):
        decode_codes(message[:-1] + bytes([0x80]))  # -128: int8 codes span round(127 v) for v in [-1, 1]
