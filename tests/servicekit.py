"""Helpers of the service tests: code datasets made of random codes, and a real server process."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from privacysf.exchange import CodeBatch, encode_codes

GRID = (4, 4)
TINY_TRAIN = {"epochs": 2, "batch_size": 8}
TINY_MAPPER = {"width": 8, "cycles": 1}


def codes(
    n: int, kind: str, channels: int = 4, seed: int = 0, grid=GRID, dtype="int8", scan="row-major"
) -> bytes:
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


def sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackServer:
    """An app served by uvicorn in a thread of the test process: real HTTP, in-process state."""

    def __init__(self, app, **options) -> None:
        """``options`` are more uvicorn settings (the service's bounds: ``uvicorn_options(cfg)``)."""
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", ws="none", **options
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class ServerProcess:
    """``privacysf server serve`` in a subprocess on a free loopback port (kill -9 is allowed)."""

    def __init__(self, store: Path) -> None:
        self.store, self.port = store, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> ServerProcess:
        command = [sys.executable, "-m", "privacysf.cli", "server", "serve", "--store", str(self.store)]
        self.log = (self.store.parent / f"server-{self.port}.log").open("ab")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT, env=env
        )
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
