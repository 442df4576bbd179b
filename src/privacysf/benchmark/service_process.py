"""A real service process and the code datasets to feed it, shared by the load bench and the tests.

The load figures must come from the server a hospital talks to (``privacysf server serve`` in its own
process, over loopback HTTP), so the bench and the service's fault tests start it the same way.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from privacysf.exchange import CodeBatch, encode_codes

GRID = (4, 4)
TINY_TRAIN = {"epochs": 2, "batch_size": 8}
TINY_MAPPER = {"width": 8, "cycles": 1}
CODE_CHANNELS = 4
INT8_CODE_BYTES = GRID[0] * GRID[1] * CODE_CHANNELS
"""Wire bytes of one int8 code of the tiny model's shape (headers aside)."""


def codes(
    n: int, kind: str, channels: int = CODE_CHANNELS, seed: int = 0, grid=GRID, dtype="int8", scan="row-major"
) -> bytes:
    """One wire message of ``n`` random codes."""
    tokens = np.random.default_rng(seed).uniform(-1, 1, (n, grid[0] * grid[1], channels)).astype(np.float32)
    return encode_codes(CodeBatch(tokens, grid, kind, scan=scan), dtype)


def bundle(n_train: int = 16, n_val: int = 4, seed: int = 0, grid=GRID, scan="row-major") -> bytes:
    """A valid dataset upload: train image, train mask, val image, val mask codes."""
    return b"".join(
        [
            codes(n_train, "image", seed=seed, grid=grid, scan=scan),
            codes(n_train, "mask", seed=seed + 1, grid=grid, scan=scan),
            codes(n_val, "image", seed=seed + 2, grid=grid, scan=scan),
            codes(n_val, "mask", seed=seed + 3, grid=grid, scan=scan),
        ]
    )


def bundle_of_size(megabytes: float, seed: int = 0) -> bytes:
    """A valid dataset upload of about ``megabytes`` MiB (a tenth of its codes for validation)."""
    pairs = max(2, round(megabytes * 2**20 / (2 * INT8_CODE_BYTES)))
    n_val = max(1, pairs // 10)
    return bundle(n_train=pairs - n_val, n_val=n_val, seed=seed)


def sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``privacysf server serve`` in a subprocess on a free loopback port (kill -9 is allowed)."""

    def __init__(self, store: Path, *options: str) -> None:
        self.store, self.options, self.port = store, options, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server is not started"
        return self.process.pid

    def start(self, timeout: float = 60.0) -> ServerProcess:
        command = [sys.executable, "-m", "privacysf.cli", "server", "serve", "--store", str(self.store)]
        self.log = (self.store.parent / f"server-{self.port}.log").open("ab")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        command += [*self.options, "--port", str(self.port)]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "the server process exited during start-up"
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
