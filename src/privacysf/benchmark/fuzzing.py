"""Structure-aware fuzzing of the service: valid wire messages and job bodies with one part made hostile.

A schema-driven fuzzer (the OpenAPI description) sees a code body as opaque bytes, so it never builds
a message whose prefix is right and whose header lies: a boolean or a 2^56 in the shape, a list as
dtype, JSON nested 20,000 deep, a float32 body of NaN or 3e38. This generator starts from valid
messages and changes one thing at a time (a prefix field, one header field set to an edge value, the
body), and the same for ``POST /jobs`` bodies (NaN, infinities, huge numbers, wrong types), so every
check of the readers is reached. :func:`fuzz_service` sends them over one keep-alive connection and
tallies the answers: the guarantee is that none is a 5xx and every refusal says why in ``detail``.

The test suite runs it against the app in a thread; ``privacysf bench`` runs a longer one against
``privacysf server serve`` in its own process (:func:`fuzz_server_process`).
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from privacysf.benchmark.service_process import (
    CODE_CHANNELS,
    GRID,
    ServerProcess,
    center_auth,
    codes,
    train_tiny_model,
)
from privacysf.config import WIRE_DTYPE_NAMES
from privacysf.exchange.wire import FORMAT_VERSION, MAGIC, MAX_HEADER_BYTES, PLAIN_VERSION, PREFIX

TARGETS = ("map", "upload", "jobs")
NO_ANSWER = 0
"""The status tallied for a request that got no HTTP answer (a reset or closed connection)."""
EDGE_VALUES: tuple[object, ...] = (
    True,
    False,
    None,
    0,
    -1,
    1,
    2**31,
    2**56,
    2**64,
    10**40,
    1.5,
    -0.0,
    float("nan"),
    float("inf"),
    float("-inf"),
    3e38,
    "",
    "int8",
    "image",
    "mask",
    "keyed",
    "x" * 300,
    [],
    ["int8"],
    [1, 2],
    {},
    {"a": 1},
)
"""Values any JSON field may be set to: every JSON type, the numbers at the edges of int32/int64 and of
float32, NaN and infinities (json.dumps writes them), and the valid values of other fields."""
NOT_AN_ID = tuple(v for v in EDGE_VALUES if v != 1 and v != [1, 2])
"""Edge values for dataset ids, without ids that exist (a valid body would start training)."""
NUMBER_EDGES: tuple[object, ...] = (0, -1, 2**31 - 1, 2**31, 2**56, 2**63, 10**40, True, 1e309, 3e38)
FLOAT_BODIES = {
    "nan": np.nan,
    "inf": np.inf,
    "-inf": -np.inf,
    "huge": 3e38,
    "tiny": 1e-45,
}
"""Values a whole float32 code body is filled with: non-finite ones must be refused, finite ones far
outside the codec range must not make the reply non-finite."""


@dataclass(frozen=True)
class FuzzRequest:
    """One request: which endpoint, the mutation that made it (for the tally) and its body."""

    target: str
    case: str
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    checksum_ok: bool = True


@dataclass
class FuzzTally:
    """What came back: counts by (endpoint, status) and by mutation, and every broken guarantee."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    cases: Counter[tuple[str, int]] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(n for (_, status), n in self.statuses.items() if status >= 500)


def message(
    header: dict | bytes,
    body: bytes,
    magic: bytes = MAGIC,
    version: int = PLAIN_VERSION,
    header_len: int | None = None,
) -> bytes:
    """A wire message built by hand: any header (a dict is written as JSON, NaN allowed) and body."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(raw) if header_len is None else header_len
    return PREFIX.pack(magic, version, length) + raw + body


def header_of(payload: bytes) -> tuple[dict, bytes]:
    """The header (as a dict) and the body of a valid message."""
    _, _, length = PREFIX.unpack_from(payload)
    return json.loads(payload[PREFIX.size : PREFIX.size + length]), payload[PREFIX.size + length :]


class WireFuzzer:
    """Hostile variants of valid messages for a mapper on ``grid`` with ``channels`` values per token."""

    def __init__(self, seed: int, grid: tuple[int, int] = GRID, channels: int = CODE_CHANNELS) -> None:
        self.rng = np.random.default_rng(seed)
        self.grid, self.channels = grid, channels

    def pick(self, values):
        return values[int(self.rng.integers(len(values)))]

    def codes(self, kind: str = "image", dtype: str | None = None) -> bytes:
        dtype = dtype or self.pick(WIRE_DTYPE_NAMES)
        n = int(self.rng.integers(1, 4))
        return codes(n, kind, self.channels, int(self.rng.integers(2**31)), self.grid, dtype)

    def hostile_message(self, kind: str = "image") -> tuple[str, bytes]:
        """One message with one hostile change; the first element names the change."""
        valid = self.codes(kind)
        header, body = header_of(valid)
        mutations: list[Callable[[], tuple[str, bytes]]] = [
            lambda: ("valid", valid),
            lambda: self._field(header, body),
            lambda: self._dims(header, body),
            lambda: self._body(header, body),
            lambda: self._prefix(header, body),
            lambda: self._raw_header(body),
        ]
        return self.pick(mutations)()

    def _field(self, header: dict, body: bytes) -> tuple[str, bytes]:
        name = self.pick(sorted(header))
        value = self.pick(EDGE_VALUES)
        changed = {**header, name: value} if self.rng.random() < 0.9 else _without(header, name)
        return f"field:{name}", message(changed, body)

    def _dims(self, header: dict, body: bytes) -> tuple[str, bytes]:
        """A shape or grid with one entry at an edge, a wrong length, or an element count past int64."""
        name = self.pick(("shape", "grid"))
        dims = list(header[name])
        choice = int(self.rng.integers(4))
        if choice == 0:
            dims[int(self.rng.integers(len(dims)))] = self.pick(NUMBER_EDGES + (1.0, "4", None, [4]))
        elif choice == 1:
            dims = dims + [1] if self.rng.random() < 0.5 else dims[:-1]
        elif choice == 2 and name == "shape":  # 2^56 · L · C overflows int64 to 0: the body is empty
            dims = [2**64 // (dims[1] * dims[2] * 4), dims[1], dims[2]]
            body = b""
        else:
            dims = [-d for d in dims]
        return f"dims:{name}", message({**header, name: dims}, body)

    def _body(self, header: dict, body: bytes) -> tuple[str, bytes]:
        choice = int(self.rng.integers(6))
        if choice == 5:
            return self._deflated(header, body)
        if choice == 0:
            cut = int(self.rng.integers(1, len(body) + 1))
            return "body:truncated", message(header, body[:-cut])
        if choice == 1:
            return "body:extra", message(header, body + self.rng.bytes(int(self.rng.integers(1, 64))))
        if choice == 2:
            return "body:random", message(header, self.rng.bytes(len(body)))
        name = self.pick(sorted(FLOAT_BODIES))
        dtype = self.pick(("float32", "float16"))
        n, length, channels = header["shape"]
        with np.errstate(over="ignore"):  # 3e38 as float16 is inf: one more value to refuse
            values = np.full((n, length, channels), FLOAT_BODIES[name], np.float32).astype(dtype)
        return f"body:{name}-{dtype}", message({**header, "dtype": dtype}, values.tobytes())

    def _deflated(self, header: dict, body: bytes) -> tuple[str, bytes]:
        """A version-2 body that claims to be deflated, each shorter than its values so that it passes
        the header's length rule and reaches the inflater: a bomb that inflates far past its header's
        size, bytes that are no deflate stream, a stream cut short or followed by more bytes; or a
        valid deflated body under a hostile ``compression`` or ``body_bytes``."""
        values = bytes(len(body))  # zeros: what the header announces, compressible
        deflated = zlib.compress(values, 9)
        cases = {
            "bomb": zlib.compress(bytes(64 * len(body)), 9),
            "garbage": self.rng.bytes(len(deflated)),
            "cut": deflated[:-3],
            "trailing": deflated + b"\0",
        }
        name = self.pick([*sorted(cases), "field"])
        sent = cases.get(name, deflated)
        fields = {"compression": "deflate", "body_bytes": len(sent)}
        if name == "field":
            field = self.pick(sorted(fields))
            fields[field] = self.pick(EDGE_VALUES + (len(body), len(body) + 1))
            name = f"field-{field}"
        stated = {**header, "version": FORMAT_VERSION, **fields}
        return f"body:deflate-{name}", message(stated, sent, version=FORMAT_VERSION)

    def _prefix(self, header: dict, body: bytes) -> tuple[str, bytes]:
        raw = json.dumps(header).encode()
        choice = int(self.rng.integers(4))
        if choice == 0:
            return "prefix:magic", message(raw, body, magic=self.rng.bytes(4))
        if choice == 1:
            return "prefix:version", message(raw, body, version=self.pick((0, FORMAT_VERSION + 1, 65535)))
        lengths = (
            0,
            1,
            len(raw) - 1,
            len(raw) + 1,
            len(raw) + len(body) + 1,
            MAX_HEADER_BYTES + 1,
            2**32 - 1,
        )
        return "prefix:header-length", message(raw, body, header_len=self.pick(lengths))

    def _raw_header(self, body: bytes) -> tuple[str, bytes]:
        """Headers that are not a JSON object: nesting deep enough to exhaust the parser's recursion,
        other JSON types, broken UTF-8, plain garbage."""
        depth = int(self.rng.integers(1_000, MAX_HEADER_BYTES // 2))
        raws = (
            b"[" * depth + b"]" * depth,
            b'{"a":' * (depth // 5) + b"1" + b"}" * (depth // 5),
            b"[1, 2, 3]",
            b'"int8"',
            b"NaN",
            b"null",
            b"\xff\xfe\x00{",
            self.rng.bytes(int(self.rng.integers(1, 200))),
        )
        return "header:not-an-object", message(self.pick(raws), body)

    def upload(self) -> tuple[str, bytes]:
        """Four messages back to back (a dataset), one of them hostile, or the wrong number of them."""
        kinds = ["image", "mask", "image", "mask"]
        dtype = self.pick(WIRE_DTYPE_NAMES)  # the four parts of a dataset share one dtype
        parts = [self.codes(kind, dtype) for kind in kinds]
        choice = int(self.rng.integers(4))
        if choice == 0:
            count = int(self.rng.integers(0, 7))
            return f"upload:{count}-messages", b"".join((parts * 2)[:count])
        if choice == 1:
            return "upload:trailing-bytes", b"".join(parts) + self.rng.bytes(int(self.rng.integers(1, 32)))
        index = int(self.rng.integers(4))
        case, parts[index] = self.hostile_message(kinds[index])
        return f"upload:{case}", b"".join(parts)

    def job_body(self) -> tuple[str, bytes]:
        """A ``POST /jobs`` body with one hostile value (NaN and infinities written as JSON allows not)."""
        body: dict = {"datasets": [2**31 - 1], "train": {"epochs": 1}, "mapper": {"width": 8}}
        choice = int(self.rng.integers(5))
        if choice == 0:
            value = self.pick(NOT_AN_ID)
            body["datasets"] = self.pick(([value], value, []))
            case = "jobs:datasets"
        elif choice in (1, 2):
            section = ("train", "mapper")[choice - 1]
            names = {
                "train": ("epochs", "batch_size", "lr", "patience", "seed"),
                "mapper": ("kind", "width", "cycles", "kernel", "use_position", "depth", "heads"),
            }[section]
            name = self.pick(names)
            body[section] = {name: self.pick(EDGE_VALUES + NUMBER_EDGES)}
            case = f"jobs:{section}.{name}"
        elif choice == 3:
            body["name"] = self.pick(EDGE_VALUES)
            case = "jobs:name"
        else:
            depth = int(10 ** self.rng.uniform(1, 4.7))  # below and above the parser's recursion limit
            nested = "[" * depth + "]" * depth
            texts = (nested, '{"datasets": ' + nested + "}", '{"a":' * depth + "1" + "}" * depth, "{", "NaN")
            return "jobs:raw", self.pick(texts).encode()
        return case, json.dumps(body).encode()

    def requests(self, count: int) -> Iterator[FuzzRequest]:
        """``count`` requests, the three endpoints in turn."""
        for index in range(count):
            target = TARGETS[index % len(TARGETS)]
            if target == "map":
                case, body = self.hostile_message()
                params = {"dtype": self.pick((*WIRE_DTYPE_NAMES, "bfloat16", ""))}
                yield FuzzRequest(target, case, body, params if self.rng.random() < 0.2 else {})
            elif target == "upload":
                case, body = self.upload()
                yield FuzzRequest(target, case, body, checksum_ok=self.rng.random() < 0.95)
            else:
                case, body = self.job_body()
                yield FuzzRequest(target, case, body)


@dataclass(frozen=True)
class KnownInput:
    """A hand-written hostile request and what it must get: a status and words of its ``detail``."""

    target: str
    what: str
    body: bytes
    status: int
    words: str


def known_inputs(grid: tuple[int, int] = GRID, channels: int = CODE_CHANNELS) -> list[KnownInput]:
    """The inputs of issue 18 that gave a 500 (a model on ``grid`` with ``channels`` values per token)."""
    tokens = grid[0] * grid[1]

    def changed(change: dict, body: bytes | None = None) -> bytes:
        header, valid_body = header_of(codes(2, "image", channels, 0, grid, "float32"))
        return message({**header, **change}, valid_body if body is None else body)

    def upload(first: bytes) -> bytes:
        rest = [codes(n, kind, channels, 1, grid) for n, kind in ((2, "mask"), (1, "image"))]
        return first + rest[0] + rest[1] + codes(1, "mask", channels, 2, grid)

    nested = message(b"[" * 20_000 + b"]" * 20_000, b"")
    one_code = np.zeros((1, tokens, channels), np.float32).tobytes()  # what [true, L, C] announces
    huge = np.full((2, tokens, channels), 3e38, np.float32).tobytes()
    bool_shape = changed({"shape": [True, tokens, channels]}, one_code)
    past_int64 = changed({"shape": [2**56, 64, channels], "grid": [8, 8]}, b"")
    dtype_list = changed({"dtype": ["int8"]})
    map_past_int64 = changed({"shape": [2**60, tokens, channels]}, b"")
    nan_lr, inf_lr = (b'{"datasets":[1],"train":{"lr":%s}}' % value for value in (b"NaN", b"Infinity"))
    return [
        KnownInput("map", "nested JSON header", nested, 400, "not valid JSON"),
        KnownInput("map", "bool in the shape", bool_shape, 400, "positive integers"),
        KnownInput("map", "shape past int64", map_past_int64, 400, "positive integers"),
        KnownInput("map", "dtype as a list", dtype_list, 400, "dtype ['int8']"),
        KnownInput("map", "finite 3e38 codes", changed({}, huge), 400, "drive the mapper to NaN"),
        KnownInput("upload", "nested JSON header", upload(nested), 400, "not valid JSON"),
        KnownInput("upload", "bool in the shape", upload(bool_shape), 400, "positive integers"),
        KnownInput("upload", "shape past int64", upload(past_int64), 400, "positive integers"),
        KnownInput("upload", "dtype as a list", upload(dtype_list), 400, "dtype ['int8']"),
        KnownInput("jobs", "NaN learning rate", b'{"datasets":[1],"train":{"lr":NaN}}', 422, "finite number"),
        KnownInput(
            "jobs", "infinite learning rate", b'{"datasets":[1],"train":{"lr":Infinity}}', 422, "finite"
        ),
    ]


def _without(header: dict, name: str) -> dict:
    return {key: value for key, value in header.items() if key != name}


def send(client: httpx.Client, model_id: int, request: FuzzRequest) -> httpx.Response:
    """``request`` on ``client`` (which carries the center's token)."""
    if request.target == "map":
        return client.post(f"/models/{model_id}/map", content=request.body, params=request.params)
    if request.target == "upload":
        digest = hashlib.sha256(request.body if request.checksum_ok else b"other").hexdigest()
        headers = {"X-Content-SHA256": digest}
        return client.post("/datasets", params={"name": "fuzz"}, content=request.body, headers=headers)
    return client.post("/jobs", content=request.body, headers={"Content-Type": "application/json"})


def fuzz_target_model(client: httpx.Client, seed: int = 0) -> int:
    """A tiny mapper trained through ``client`` on codes of the fuzzer's code space (its grid and
    channels), so that the fuzzer's valid map requests reach it."""
    fuzzer = WireFuzzer(seed)
    return train_tiny_model(client, fuzzer.grid, fuzzer.channels)


def fuzz_service(client: httpx.Client, model_id: int, count: int, seed: int) -> FuzzTally:
    """Send ``count`` generated requests; tally the answers and every 5xx or refusal without a reason."""
    tally = FuzzTally()
    for request in WireFuzzer(seed).requests(count):
        try:
            response = send(client, model_id, request)
        except httpx.TransportError as exc:  # e.g. a connection the server dropped after a 500
            tally.statuses[request.target, NO_ANSWER] += 1
            tally.cases[request.case, NO_ANSWER] += 1
            tally.violations.append(f"{request.target} {request.case}: no answer ({exc!r})")
            continue
        status = response.status_code
        tally.statuses[request.target, status] += 1
        tally.cases[request.case, status] += 1
        if status >= 500 or (status >= 400 and not _detail(response)):
            tally.violations.append(f"{request.target} {request.case}: {status} {response.text[:200]}")
    return tally


def _detail(response: httpx.Response) -> bool:
    """Whether the refusal is a JSON object with a non-empty ``detail``."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and bool(body.get("detail"))


def fuzz_server_process(root: Path, count: int, seed: int) -> tuple[FuzzTally, float]:
    """The tally of ``count`` requests to ``privacysf server serve`` on a fresh store under ``root``,
    and the seconds they took (the server's start and its mapper's training aside)."""
    auth = center_auth(root / "store", "fuzz")
    with ServerProcess(root / "store") as server, server.client(auth, timeout=120) as client:
        model_id = fuzz_target_model(client)
        started = time.perf_counter()
        tally = fuzz_service(client, model_id, count, seed)
        return tally, time.perf_counter() - started
