"""Deflated code messages (wire format version 2): lossless, never longer, and as strict as plain ones."""

import io
import json
import struct
import zlib

import httpx
import numpy as np
import pytest
import torch

from privacysf.center.client import ServiceClient
from privacysf.config import ExperimentConfig
from privacysf.errors import PayloadTooLargeError, WireFormatError
from privacysf.exchange import (
    FORMAT_VERSION,
    PLAIN_VERSION,
    WIRE_DTYPES,
    CodeBatch,
    check_dataset_stream,
    decode_codes,
    encode_codes,
    split_dataset,
    split_messages,
)
from privacysf.workflows.inprocess import payload_bytes, query_payload, untrained_pipeline

GRID = (8, 8)


def background_codes(n=3, channels=4, seed=0, kind="image") -> CodeBatch:
    """Codes as a trained codec writes them for mostly-background slices: most tokens one constant."""
    rng = np.random.default_rng(seed)
    tokens = np.full((n, GRID[0] * GRID[1], channels), -0.8, np.float32)
    tokens[:, 20:30] = rng.uniform(-1, 1, (n, 10, channels))
    return CodeBatch(tokens, GRID, kind)


def header_of(message: bytes) -> dict:
    length = struct.unpack_from("<I", message, 6)[0]
    return json.loads(message[10 : 10 + length])


@pytest.mark.parametrize("dtype", list(WIRE_DTYPES))
def test_deflated_codes_read_back_exactly_as_plain_ones_and_are_shorter(dtype):
    codes = background_codes()
    plain, deflated = encode_codes(codes, dtype), encode_codes(codes, dtype, "deflate")
    assert header_of(plain)["version"] == PLAIN_VERSION and "compression" not in header_of(plain)
    header = header_of(deflated)
    assert header["version"] == FORMAT_VERSION and header["compression"] == "deflate"
    assert header["body_bytes"] == len(deflated) - 10 - len(json.dumps(header))
    assert (
        len(deflated) < len(plain)
        and header["body_bytes"] < (len(plain) - 10 - len(json.dumps(header_of(plain)))) / 2
    )
    back, reference = decode_codes(deflated), decode_codes(plain)
    np.testing.assert_array_equal(back.tokens, reference.tokens)
    assert (back.compression, reference.compression) == ("deflate", "none")


def test_codes_that_do_not_shrink_travel_plain():
    """Random codes (or a key's mixed ones) deflate to more bytes than they hold: sent as version 1."""
    noise = CodeBatch(np.random.default_rng(0).uniform(-1, 1, (2, 64, 4)).astype(np.float32), GRID, "image")
    assert encode_codes(noise, "uint4", "deflate") == encode_codes(noise, "uint4")


def _rewritten(message: bytes, body: bytes, **changes) -> bytes:
    header = {**header_of(message), **changes}
    raw = json.dumps(header).encode()
    return message[:4] + struct.pack("<HI", header["version"], len(raw)) + raw + body


def _deflated_with(body: bytes, **changes) -> bytes:
    message = encode_codes(background_codes(), "uint4", "deflate")
    return _rewritten(message, body, body_bytes=len(body), **changes)


HOSTILE = {
    "a bomb": (zlib.compress(bytes(100_000), 9), {}, "inflates past the 384 bytes"),
    "no deflate stream": (b"\x00not deflate at all" * 3, {}, "corrupt deflated body"),
    "a stream cut short": (zlib.compress(bytes(384), 9)[:-4], {}, "does not end where its header says"),
    "bytes after the stream": (zlib.compress(bytes(384), 9) + b"\x00", {}, "bytes after its deflated"),
    "too few values": (zlib.compress(bytes(300), 9), {}, "inflates to 300 bytes"),
    "an unknown compression": (zlib.compress(bytes(384)), {"compression": "gzip"}, "deflate, not 'gzip'"),
    "version 2 sent plain": (bytes(384), {"compression": "none"}, "must be deflate, not 'none'"),
    "a body as long as its values": (bytes(384), {}, "does not fit deflated values of 384 bytes"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_deflated_bodies_are_refused_by_every_reader(case):
    body, changes, words = HOSTILE[case]
    message = _deflated_with(body, **changes)
    with pytest.raises(WireFormatError, match=words):
        decode_codes(message)
    plain = [encode_codes(background_codes(kind=kind), "uint4") for kind in ("image", "mask", "image")]
    with pytest.raises(WireFormatError, match=words):
        check_dataset_stream(io.BytesIO(b"".join([*plain, _as_mask(message)])), chunk_bytes=64)


def _as_mask(message: bytes) -> bytes:
    length = struct.unpack_from("<I", message, 6)[0]
    return _rewritten(message, message[10 + length :], kind="mask")


@pytest.mark.parametrize("shape", [[2**31 - 1, 64, 4], [2**31 - 1, 2**31 - 1, 1], [20, 64, 4]])
def test_a_header_announcing_more_than_deflate_can_hold_is_refused_before_inflating(shape):
    """Deflate shrinks by 1032:1 at most: a small body announcing more (here a full bomb of zeros for
    the small shape, a few bytes for the huge ones) is refused from its header, never inflated."""
    grid = [64, 1] if shape[1] == 64 else [2**31 - 1, 1]
    body = zlib.compress(bytes(100_000), 9)[:2]
    message = _deflated_with(body, shape=shape, grid=grid)
    with pytest.raises(WireFormatError, match="at least 1/1032 of them"):
        decode_codes(message)
    with pytest.raises(WireFormatError, match="at least 1/1032 of them"):
        split_messages(message, 1)


def test_deflating_never_lengthens_a_message():
    """Version 2's header is longer than version 1's: a body that deflates by fewer bytes than that
    goes plain, so the bound `privacysf payload` prints holds for every message."""
    rng = np.random.default_rng(0)
    for n in range(1, 40):
        tokens = rng.uniform(-1, 1, (1, 64, 4)).astype(np.float32)
        tokens[0, : n * 64 // 40] = 0.0  # from barely to almost wholly compressible
        codes = CodeBatch(tokens, GRID, "image")
        for dtype in WIRE_DTYPES:
            assert len(encode_codes(codes, dtype, "deflate")) <= len(encode_codes(codes, dtype))


def test_a_version_2_header_must_state_its_compression():
    message = encode_codes(background_codes(), "uint4", "deflate")
    header = header_of(message)
    del header["body_bytes"]
    raw = json.dumps(header).encode()
    body = message[10 + struct.unpack_from("<I", message, 6)[0] :]
    broken = message[:6] + struct.pack("<I", len(raw)) + raw + body
    with pytest.raises(WireFormatError, match="version-2 code header must be a JSON object"):
        decode_codes(broken)


@pytest.mark.parametrize("dtype", ["float16", "uint4"])
@pytest.mark.parametrize("chunk_bytes", [3, 64, 1 << 20])
def test_a_deflated_dataset_streams_through_the_check_in_any_piece_size(dtype, chunk_bytes):
    """Inflated in pieces of at most ``chunk_bytes`` (float16 pieces cut mid-value are carried over):
    the streamed check agrees with the whole-upload reader."""
    kinds = ("image", "mask", "image", "mask")
    upload = b"".join(
        encode_codes(background_codes(seed=i, kind=kind), dtype, "deflate") for i, kind in enumerate(kinds)
    )
    assert len(split_messages(upload, 4)) == 4
    assert check_dataset_stream(io.BytesIO(upload), chunk_bytes=chunk_bytes) == split_dataset(upload).layout


def test_the_streamed_check_bounds_what_an_upload_inflates_to_before_inflating_it():
    """A server passes its upload limit: four messages announcing more values than that are refused
    from their headers, before a byte is inflated (the body here is no deflate stream at all)."""
    kinds = ("image", "mask", "image", "mask")
    messages = [encode_codes(background_codes(kind=kind), "uint4", "deflate") for kind in kinds]
    values = 4 * 3 * 64 * 4 // 2
    layout = split_dataset(b"".join(messages)).layout
    assert check_dataset_stream(io.BytesIO(b"".join(messages)), max_values_bytes=values) == layout
    garbage = _as_mask(_deflated_with(b"\x00not deflate" * 3))
    upload = b"".join([*messages[:3], garbage])
    with pytest.raises(WireFormatError, match="corrupt deflated body"):
        check_dataset_stream(io.BytesIO(upload), max_values_bytes=values)
    with pytest.raises(PayloadTooLargeError, match=f"past {values - 1} bytes once inflated"):
        check_dataset_stream(io.BytesIO(upload), max_values_bytes=values - 1)


def test_the_server_replies_as_the_center_sent():
    """A deflated query gets a deflated reply and a plain one a plain (version 1) reply, which releases
    that read only version 1 still take; the mask codes are the same either way."""
    images = np.zeros((2, 1, 32, 32), np.float32)
    images[..., 8:20, 10:22] = 1.0
    replies = {}
    for compression in ("deflate", "none"):
        cfg = ExperimentConfig().override([f"codec.wire_compression={compression}", "codec.downsample=2"])
        torch.manual_seed(0)  # the same fresh networks both times
        center, server = untrained_pipeline(cfg, 2, 32)
        query = center.query_message(images)
        replies[compression] = decode_codes(server.map(query))
        assert replies[compression].compression == header_of(query).get("compression", "none")
    assert replies["deflate"].compression == "deflate"
    np.testing.assert_array_equal(replies["deflate"].tokens, replies["none"].tokens)


def test_payload_is_measured_per_query_and_the_bound_is_never_deflated():
    cfg = ExperimentConfig().override(["codec.downsample=2"])
    center, server = untrained_pipeline(cfg, 2, 32)
    images = np.zeros((3, 1, 32, 32), np.float32)
    images[2] = np.random.default_rng(0).uniform(0, 1, (1, 32, 32))
    measured = payload_bytes(center, server, images)
    bound = query_payload(cfg, 2, 32)
    assert measured["queries"] == 3 and measured["total"] < measured["total_max"] <= bound["total"]
    assert bound["total"] == query_payload(cfg.override(["codec.wire_compression=none"]), 2, 32)["total"]


def test_a_center_refuses_a_reply_of_another_count_of_codes_before_inflating():
    """A deflated reply can announce a thousand times its bytes: the client checks its count of codes
    against the query's from the header, so a reply of the wrong size is never inflated."""
    reply = encode_codes(background_codes(n=5, kind="mask"), "uint4", "deflate")
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=reply))
    client = ServiceClient("http://server", "token", transport=transport)
    with pytest.raises(WireFormatError, match="replied with 5 mask codes to a query of 3"):
        client.map(1, encode_codes(background_codes(n=3), "uint4", "deflate"))
    assert decode_codes(client.map(1, encode_codes(background_codes(n=5), "uint4", "deflate"))).shape[0] == 5


def test_a_center_sends_plain_codes_to_a_server_that_reads_no_deflated_ones():
    """A server before wire format 2 refuses version 2 as it refuses any version it does not know; the
    client sends the same values again as version 1, for queries and uploads alike."""
    seen = []

    def old_server(request: httpx.Request) -> httpx.Response:
        body = request.read()
        seen.append(body[4])  # the version's low byte
        if body[4] != PLAIN_VERSION:
            detail = "code format version 2 is not supported (this build reads version 1); encode with ..."
            return httpx.Response(400, json={"detail": detail})
        if request.url.path == "/datasets":
            return httpx.Response(201, json={"id": 7, "bytes": len(body)})
        return httpx.Response(200, content=encode_codes(decode_codes(body), "uint4"))

    client = ServiceClient("http://server", "token", transport=httpx.MockTransport(old_server))
    query = encode_codes(background_codes(n=3), "uint4", "deflate")
    np.testing.assert_array_equal(decode_codes(client.map(1, query)).tokens, decode_codes(query).tokens)
    kinds = ("image", "mask", "image", "mask")
    bundle = b"".join(encode_codes(background_codes(kind=kind), "uint4", "deflate") for kind in kinds)
    plain = b"".join(encode_codes(background_codes(kind=kind), "uint4") for kind in kinds)
    assert client.upload_dataset("codes", bundle) == {"id": 7, "bytes": len(plain)}
    assert seen == [FORMAT_VERSION, PLAIN_VERSION] * 2
