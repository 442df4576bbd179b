"""Load figures of the service: latency percentiles, throughput, errors and the server's peak memory.

A ``privacysf server serve`` process (its own store under the bench folder, a free loopback port) is
driven by concurrent clients, each a thread with its own keep-alive ``httpx`` connection, so the figures
include HTTP, authentication, the database and the wire format, as a hospital sees them. The clients run
on the same machine as the server: on a small machine they compete with it for the CPU, which the
published figures state by naming the machine.

Memory is the server process's resident set, sampled every 50 ms while a scenario runs (every 5 ms
during the one large upload); "above idle" is the rise over its RSS just before the scenario (the
server is idle between scenarios).
"""

from __future__ import annotations

import hashlib
import math
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from privacysf.common.resources import MemoryUse, PeakMemory

from .service_process import (
    ServerProcess,
    bundle,
    center_auth,
    codes,
    sha,
    streamed_dataset,
    train_tiny_model,
)

CLIENT_TIMEOUT = 300.0
"""Seconds a client waits for one reply; a slower reply counts as a transport error."""
TRANSPORT_ERROR = "transport"
LARGE_UPLOAD_SAMPLE_SECONDS = 0.005
"""The server's RSS is sampled this often during the large upload: its peak may last a moment."""
"""The status recorded for a request that got no HTTP reply (refused, reset, timed out)."""


@dataclass(frozen=True)
class Call:
    """One request a scenario repeats, and the status that means it succeeded."""

    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    expect: int = 200

    def send(self, http: httpx.Client) -> httpx.Response:
        return http.request(
            self.method, self.path, content=self.body, headers=self.headers, params=self.params
        )


@dataclass
class Timings:
    latencies_ms: list[float]
    statuses: Counter[str]
    """Replies by HTTP status (as text), plus :data:`TRANSPORT_ERROR` for requests that got none."""
    seconds: float
    """Wall time from the first client's start to the last client's end."""


def drive(url: str, auth: dict[str, str], call: Call, clients: int, requests: int) -> Timings:
    """``requests`` calls shared among ``clients`` threads started together, each on one connection."""
    shares = [requests // clients + (i < requests % clients) for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in shares]
    statuses: list[Counter[str]] = [Counter() for _ in shares]
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * clients
    start = threading.Barrier(clients)

    def client(index: int) -> None:
        with httpx.Client(base_url=url, headers=auth, timeout=CLIENT_TIMEOUT) as http:
            start.wait()
            began = time.perf_counter()
            for _ in range(shares[index]):
                sent = time.perf_counter()
                try:
                    status = str(call.send(http).status_code)
                except httpx.TransportError:
                    status = TRANSPORT_ERROR
                latencies[index].append((time.perf_counter() - sent) * 1000)
                statuses[index][status] += 1
            spans[index] = (began, time.perf_counter())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Timings(
        [ms for per_client in latencies for ms in per_client],
        sum(statuses, Counter()),
        max(end for _, end in spans) - min(began for began, _ in spans),
    )


def measure(
    server: ServerProcess,
    auth: dict[str, str],
    name: str,
    call: Call,
    clients: int,
    requests: int,
    warmup: Call | None = None,
) -> dict:
    """One scenario's row: one untimed warm-up call (``call`` itself unless given: it loads the model
    into the server's cache), then the load."""
    warmup = warmup or call
    with server.client(auth, CLIENT_TIMEOUT) as http:
        warm_up(http, name, warmup)
    with PeakMemory(pid=server.pid) as memory:
        timings = drive(server.url, auth, call, clients, requests)
    assert memory.result is not None
    return {
        "scenario": name,
        "clients": clients,
        "body_bytes": len(call.body or b""),
        **summary(timings, call.expect),
        **memory_figures(memory.result),
    }


def warm_up(http: httpx.Client, name: str, call: Call) -> None:
    warm = call.send(http)
    if warm.status_code != call.expect:
        raise RuntimeError(f"{name}: the warm-up call got {warm.status_code}: {warm.text[:300]}")


def memory_figures(memory: MemoryUse) -> dict:
    return {
        "idle_rss_mb": memory.peak_rss_mb - memory.rss_growth_mb,
        "peak_rss_mb": memory.peak_rss_mb,
        "peak_above_idle_mb": memory.rss_growth_mb,
    }


def summary(timings: Timings, expect: int) -> dict:
    """Latency percentiles, throughput and the replies of one scenario, errors counted by kind."""
    p50, p95, p99 = np.percentile(timings.latencies_ms, [50, 95, 99])
    requests = len(timings.latencies_ms)
    return {
        "requests": requests,
        "seconds": timings.seconds,
        "throughput_rps": requests / timings.seconds,
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "statuses": dict(sorted(timings.statuses.items())),
        "ok": timings.statuses[str(expect)],
        "errors_5xx": sum(n for status, n in timings.statuses.items() if status.startswith("5")),
        "errors_transport": timings.statuses[TRANSPORT_ERROR],
    }


def fresh(folder: Path) -> None:
    """An empty folder for the job's store: a job that is run again starts from no center and no data."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def upload_call(payload: bytes) -> Call:
    return Call(
        "POST", "/datasets", payload, {"X-Content-SHA256": sha(payload)}, {"name": "load"}, expect=201
    )


def load_scenarios(
    model_id: int, batches: tuple[int, ...], upload_mb: float, requests: int, uploads: int
) -> list[tuple[str, Call, int]]:
    """(name, call, number of requests) of each scenario: mapping, a mid-size upload, job polling."""
    maps = [
        (
            f"map b{batch}",
            Call("POST", f"/models/{model_id}/map", codes(batch, "image", seed=batch)),
            requests,
        )
        for batch in batches
    ]
    upload = (f"upload {upload_mb:g} MiB", upload_call(b"".join(streamed_dataset(upload_mb))), uploads)
    return [*maps, upload, ("GET /jobs", Call("GET", "/jobs"), requests)]


def service_load_rows(
    folder: Path,
    clients: tuple[int, ...],
    batches: tuple[int, ...],
    requests: int,
    uploads: int,
    upload_mb: float,
) -> list[dict]:
    """Every scenario at every client count, against one server with one trained model.

    The server accepts as many uploads at once as there are clients: the figures measure its answers
    under load, not the ``max_concurrent_uploads`` back-pressure (tested in the service's tests)."""
    fresh(folder)
    auth = center_auth(folder / "store")
    with ServerProcess(folder / "store", "--max-concurrent-uploads", str(max(clients))) as server:
        with server.client(auth, CLIENT_TIMEOUT) as http:
            model_id = train_tiny_model(http)
        scenarios = load_scenarios(model_id, batches, upload_mb, requests, uploads)
        return [
            measure(server, auth, name, call, count, n) for name, call, n in scenarios for count in clients
        ]


def large_upload_row(folder: Path, megabytes: float) -> dict:
    """The server's memory during one upload of ``megabytes`` MiB of float16 codes, on a fresh server.

    The client makes the dataset piece by piece as it sends it (and once before, for its SHA-256), so
    it never holds it: on a small machine, the bench's memory does not crowd the server's. One small
    upload first loads what the first upload imports and allocates: the peak is the upload's own."""
    fresh(folder)
    auth = center_auth(folder / "store")
    digest, size = hashlib.sha256(), 0
    for piece in streamed_dataset(megabytes):
        digest.update(piece)
        size += len(piece)
    headers = {"X-Content-SHA256": digest.hexdigest(), "Content-Length": str(size)}
    name, limit = f"large upload {megabytes:g} MiB", str(math.ceil(megabytes) + 16)
    with ServerProcess(folder / "store", "--max-upload-mb", limit) as server, server.client(auth) as http:
        warm_up(http, name, upload_call(bundle()))
        with PeakMemory(pid=server.pid, interval=LARGE_UPLOAD_SAMPLE_SECONDS) as memory:
            started = time.perf_counter()
            try:
                reply = http.post(
                    "/datasets",
                    params={"name": "large"},
                    content=streamed_dataset(megabytes),
                    headers=headers,
                )
                status = str(reply.status_code)
            except httpx.TransportError:
                status = TRANSPORT_ERROR
            seconds = time.perf_counter() - started
    assert memory.result is not None
    timings = Timings([seconds * 1000], Counter([status]), seconds)
    return {
        "scenario": name,
        "upload_mb": megabytes,
        "clients": 1,
        "body_bytes": size,
        **summary(timings, expect=201),
        **memory_figures(memory.result),
    }
