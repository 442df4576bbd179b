"""A live service to measure: ``privacysf server serve`` on a fresh store, one center, a tiny mapper.

The bench's service jobs and ``tools/hostile_table.py`` talk to a real server process over loopback
through one keep-alive client, as a center would.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from privacysf.benchmark.fuzzing import FuzzTally, WireFuzzer, fuzz_service, valid_codes
from privacysf.server.settings import ServiceConfig
from privacysf.server.store import Store

TINY_JOB = {"train": {"epochs": 2, "batch_size": 8}, "mapper": {"width": 8, "cycles": 1}}
"""A mapper trained in seconds: map requests need one to reach, not a good one."""


def prepare_model(client: httpx.Client, seed: int = 0) -> int:
    """Upload one valid dataset of the fuzzer's code space, train a tiny mapper on it; its model id."""
    fuzzer = WireFuzzer(seed)
    parts = [
        valid_codes(n, kind, fuzzer.grid, fuzzer.channels, "int8", seed + index)
        for index, (n, kind) in enumerate(((16, "image"), (16, "mask"), (4, "image"), (4, "mask")))
    ]
    data = b"".join(parts)
    headers = {"X-Content-SHA256": hashlib.sha256(data).hexdigest()}
    dataset = client.post("/datasets", params={"name": "fuzz"}, content=data, headers=headers)
    dataset.raise_for_status()
    job = client.post("/jobs", json={"datasets": [dataset.json()["id"]], **TINY_JOB}).json()
    deadline = time.monotonic() + 300
    while (job := client.get(f"/jobs/{job['id']}").json())["status"] not in ("done", "failed"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the fuzz target's mapper did not train in time: {job}")
        time.sleep(0.1)
    if job["status"] != "done":
        raise RuntimeError(f"the fuzz target's mapper failed to train: {job}")
    return int(job["model_id"])


@contextmanager
def server_process(root: Path, env: dict[str, str] | None = None) -> Iterator[httpx.Client]:
    """``privacysf server serve`` on a fresh store under ``root``, and a keep-alive client of its one
    center; the server's output goes to ``root/server.log``. ``env`` replaces the server's environment
    (to serve another source tree through ``PYTHONPATH``)."""
    store = root / "store"
    _, token = Store(ServiceConfig(store=store)).create_center("fuzz")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "privacysf.cli", "server", "serve", "--store", str(store)]
    with (root / "server.log").open("ab") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=url, headers=auth, timeout=120) as client:
            _wait_for_health(client, process)
            yield client
    finally:
        process.terminate()
        process.wait(30)


def _wait_for_health(client: httpx.Client, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server process exited during start-up; see its server.log")
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError("the server did not answer /health")


def fuzz_server_process(root: Path, count: int, seed: int) -> tuple[FuzzTally, float]:
    """The tally of ``count`` requests to a server process, and the seconds they took."""
    with server_process(root) as client:
        model_id = prepare_model(client)
        started = time.perf_counter()
        tally = fuzz_service(client, model_id, count, seed)
        return tally, time.perf_counter() - started
