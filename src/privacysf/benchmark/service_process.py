"""A real service process, a center on it with a tiny trained mapper, and the code datasets to feed it.

The bench's service jobs, ``tools/hostile_table.py`` and the service's fault tests all measure the
server a hospital talks to (``privacysf server serve`` in its own process, over loopback HTTP), so they
start it, create its center and train its mapper the same way.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

from privacysf.exchange import WIRE_DTYPES, CodeBatch, encode_codes, encode_header
from privacysf.server.settings import ServiceConfig
from privacysf.server.store import Store

GRID = (4, 4)
CODE_CHANNELS = 4
TINY_TRAIN = {"epochs": 2, "batch_size": 8}
TINY_MAPPER = {"width": 8, "cycles": 1, "grid_channels": [8], "res_units": 0}
"""A mapper trained in seconds (with ``TINY_TRAIN``): map requests need one to reach, not a good one."""
MiB = 2**20


def codes(
    n: int,
    kind: str,
    channels: int = CODE_CHANNELS,
    seed: int = 0,
    grid: tuple[int, int] = GRID,
    dtype: str = "int8",
    scan: str = "row-major",
) -> bytes:
    """One wire message of ``n`` random codes."""
    tokens = np.random.default_rng(seed).uniform(-1, 1, (n, grid[0] * grid[1], channels)).astype(np.float32)
    return encode_codes(CodeBatch(tokens, grid, kind, scan=scan), dtype)


def bundle(
    n_train: int = 16,
    n_val: int = 4,
    seed: int = 0,
    grid: tuple[int, int] = GRID,
    scan: str = "row-major",
    channels: int = CODE_CHANNELS,
) -> bytes:
    """A valid dataset upload: train image, train mask, val image, val mask codes."""
    return b"".join(
        codes(n, kind, channels, seed + index, grid, scan=scan)
        for index, (n, kind) in enumerate(
            ((n_train, "image"), (n_train, "mask"), (n_val, "image"), (n_val, "mask"))
        )
    )


def streamed_dataset(megabytes: float, channels: int = 64, dtype: str = "float16") -> Iterator[bytes]:
    """A valid dataset of about ``megabytes`` MiB in pieces of at most 1 MiB (train : val = 7 : 1), made
    as it is sent so that the client never holds it. Float16 by default: the server checks every value
    for NaN and infinity (the values are zeros: the cost of the check does not depend on them)."""
    code_bytes = WIRE_DTYPES[dtype].body_bytes(GRID[0] * GRID[1] * channels)
    count = max(4, round(megabytes * MiB / code_bytes))
    n_val = max(1, count // 16)
    n_train = (count - 2 * n_val) // 2
    for n, kind in ((n_train, "image"), (n_train, "mask"), (n_val, "image"), (n_val, "mask")):
        yield encode_header(kind, dtype, (n, GRID[0] * GRID[1], channels), GRID, "row-major")
        left = n * code_bytes
        while left:
            yield bytes(min(MiB, left))
            left -= min(MiB, left)


def sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def center_auth(store: Path, name: str = "bench") -> dict[str, str]:
    """A center created by the operator before the server starts, as its bearer header."""
    _, token = Store(ServiceConfig(store=store)).create_center(name)
    return {"Authorization": f"Bearer {token}"}


def train_tiny_model(
    http: httpx.Client, grid: tuple[int, int] = GRID, channels: int = CODE_CHANNELS, timeout: float = 600.0
) -> int:
    """Upload a tiny dataset of codes on ``grid`` with ``channels`` values per token, train a tiny mapper
    on it through the service (``http`` carries the center's token), and return the model id."""
    data = bundle(grid=grid, channels=channels)
    dataset = http.post(
        "/datasets", params={"name": "tiny"}, content=data, headers={"X-Content-SHA256": sha(data)}
    )
    body = {"datasets": [dataset.raise_for_status().json()["id"]], "train": TINY_TRAIN, "mapper": TINY_MAPPER}
    job = http.post("/jobs", json=body).raise_for_status().json()
    deadline = time.monotonic() + timeout
    while (state := http.get(f"/jobs/{job['id']}").raise_for_status().json())["status"] != "done":
        if state["status"] == "failed" or time.monotonic() > deadline:
            raise RuntimeError(f"the tiny mapper did not train: {state}")
        time.sleep(0.1)
    return int(state["model_id"])


class ServerProcess:
    """``privacysf server serve`` in a subprocess on a free loopback port (kill -9 is allowed); its
    output goes to ``server-PORT.log`` beside the store. ``env`` is added to the server's environment
    (``PYTHONPATH`` serves another source tree)."""

    def __init__(self, store: Path, *options: str, env: dict[str, str] | None = None) -> None:
        self.store, self.options, self.port = store, options, free_port()
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server is not started"
        return self.process.pid

    def client(self, auth: dict[str, str] | None = None, timeout: float = 300.0) -> httpx.Client:
        """A keep-alive client of this server (``auth``: a center's bearer header)."""
        return httpx.Client(base_url=self.url, headers=auth, timeout=timeout)

    def start(self, timeout: float = 60.0) -> ServerProcess:
        command = [sys.executable, "-m", "privacysf.cli", "server", "serve", "--store", str(self.store)]
        self.log_path = self.store.parent / f"server-{self.port}.log"
        self.log = self.log_path.open("ab")
        command += [*self.options, "--port", str(self.port)]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server process exited during start-up; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError("the server did not answer /health")

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.log.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
