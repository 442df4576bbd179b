"""Load figures of the service: latency percentiles, throughput, errors and the server's peak memory.

A ``privacysf server serve`` process (its own store under the bench folder, a free loopback port) is
driven by concurrent clients, each a thread with its own keep-alive ``httpx`` connection, so the figures
include HTTP, authentication, the database and the wire format, as a hospital sees them. The clients run
on the same machine as the server: on a small machine they compete with it for the CPU, which the
published figures state by naming the machine.

Memory is the server process's resident set, sampled every 50 ms while a scenario runs; "above idle" is
the rise over its RSS just before the scenario (the server is idle between scenarios).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from privacysf.common.resources import PeakMemory
from privacysf.server.settings import ServiceConfig
from privacysf.server.store import Store

from .service_process import TINY_MAPPER, TINY_TRAIN, ServerProcess, bundle, bundle_of_size, codes, sha

CLIENT_TIMEOUT = 300.0
"""Seconds a client waits for one reply; a slower reply counts as a transport error."""
TRANSPORT_ERROR = "transport"
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
    with httpx.Client(base_url=server.url, headers=auth, timeout=CLIENT_TIMEOUT) as http:
        warm = warmup.send(http)
    if warm.status_code != warmup.expect:
        raise RuntimeError(f"{name}: the warm-up call got {warm.status_code}: {warm.text[:300]}")
    with PeakMemory(pid=server.pid) as memory:
        timings = drive(server.url, auth, call, clients, requests)
    assert memory.result is not None
    return {
        "scenario": name,
        "clients": clients,
        "body_bytes": len(call.body or b""),
        **summary(timings, call.expect),
        "idle_rss_mb": memory.result.peak_rss_mb - memory.result.rss_growth_mb,
        "peak_rss_mb": memory.result.peak_rss_mb,
        "peak_above_idle_mb": memory.result.rss_growth_mb,
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


def center_auth(store: Path, name: str = "load") -> dict[str, str]:
    """A center created by the operator before the server starts, as its bearer header."""
    _, token = Store(ServiceConfig(store=store)).create_center(name)
    return {"Authorization": f"Bearer {token}"}


def upload_call(payload: bytes) -> Call:
    return Call(
        "POST", "/datasets", payload, {"X-Content-SHA256": sha(payload)}, {"name": "load"}, expect=201
    )


def trained_model(server: ServerProcess, auth: dict[str, str], timeout: float = 600.0) -> int:
    """Upload a tiny dataset, train a tiny mapper on it through the service, and return its model id."""
    with httpx.Client(base_url=server.url, headers=auth, timeout=CLIENT_TIMEOUT) as http:
        dataset = upload_call(bundle()).send(http).raise_for_status().json()
        body = {"datasets": [dataset["id"]], "train": TINY_TRAIN, "mapper": TINY_MAPPER}
        job = http.post("/jobs", json=body).raise_for_status().json()
        deadline = time.monotonic() + timeout
        while (state := http.get(f"/jobs/{job['id']}").raise_for_status().json())["status"] != "done":
            if state["status"] == "failed" or time.monotonic() > deadline:
                raise RuntimeError(f"the load bench's model did not train: {state}")
            time.sleep(0.2)
        return state["model_id"]


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
    upload = (f"upload {upload_mb:g} MiB", upload_call(bundle_of_size(upload_mb)), uploads)
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
        scenarios = load_scenarios(trained_model(server, auth), batches, upload_mb, requests, uploads)
        return [
            measure(server, auth, name, call, count, n) for name, call, n in scenarios for count in clients
        ]


def large_upload_row(folder: Path, megabytes: float) -> dict:
    """The server's memory during one upload of ``megabytes`` MiB, on a fresh server."""
    fresh(folder)
    auth = center_auth(folder / "store")
    payload = bundle_of_size(megabytes, seed=7)
    with ServerProcess(folder / "store") as server:
        name, small = f"large upload {megabytes:g} MiB", upload_call(bundle())
        return measure(server, auth, name, upload_call(payload), 1, 1, warmup=small)
