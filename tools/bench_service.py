"""Load test of the mapping endpoint on loopback: several client processes, bounded count and time.

Starts ``privacysf server serve`` on a free port with a fresh store, uploads random codes, trains a
small mapper, then sends ``--requests`` mapping requests from ``--processes`` processes with
``--threads`` connections each, and writes requests/s, p50/p99 latency and the error count to a JSON
file. Stops by itself: every request has a timeout and the whole run a deadline.

    .venv/bin/python tools/bench_service.py --out docs/bench_service.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from privacysf.exchange import CodeBatch, encode_codes
from privacysf.server.settings import ServiceConfig
from privacysf.server.store import Store


def codes(n: int, kind: str, grid: tuple[int, int], channels: int, seed: int) -> bytes:
    tokens = np.random.default_rng(seed).uniform(-1, 1, (n, grid[0] * grid[1], channels)).astype(np.float32)
    return encode_codes(CodeBatch(tokens, grid, kind), "int8")


def client_process(args: tuple[str, str, int, bytes, int, int, float]) -> tuple[list[float], int]:
    url, token, model_id, body, requests, threads, deadline = args
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
    latencies: list[float] = []
    errors = 0
    with httpx.Client(
        base_url=url, headers=headers, timeout=30, limits=httpx.Limits(max_connections=threads)
    ) as http:

        def one(_):
            if time.monotonic() > deadline:
                return None
            start = time.perf_counter()
            response = http.post(f"/models/{model_id}/map", content=body)
            return time.perf_counter() - start, response.status_code

        with ThreadPoolExecutor(threads) as pool:
            for result in pool.map(one, range(requests)):
                if result is None:
                    errors += 1
                    continue
                latency, status = result
                latencies.append(latency)
                errors += status != 200
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4, help="concurrent connections per process")
    parser.add_argument("--requests", type=int, default=2000, help="total mapping requests")
    parser.add_argument("--batch", type=int, default=1, help="codes per request")
    parser.add_argument(
        "--grid", type=int, default=16, help="token grid side (16: a 64² image, downsample 4)"
    )
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--out", default="bench_service.json")
    args = parser.parse_args()

    grid, channels = (args.grid, args.grid), 4
    store_dir = Path(tempfile.mkdtemp(prefix="psf-bench-")) / "store"
    _, token = Store(ServiceConfig(store=store_dir)).create_center("bench")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "privacysf.cli",
            "server",
            "serve",
            "--store",
            str(store_dir),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        for _ in range(600):
            try:
                if http.get("/me").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        data = b"".join(
            codes(n, k, grid, channels, i)
            for i, (n, k) in enumerate([(64, "image"), (64, "mask"), (16, "image"), (16, "mask")])
        )
        dataset = http.post(
            "/datasets",
            params={"name": "bench"},
            content=data,
            headers={"X-Content-SHA256": hashlib.sha256(data).hexdigest()},
        ).json()
        mapper = {"width": 64, "cycles": 2}
        job = http.post(
            "/jobs", json={"datasets": [dataset["id"]], "train": {"epochs": 2}, "mapper": mapper}
        ).json()
        while (job := http.get(f"/jobs/{job['id']}").json())["status"] not in ("done", "failed"):
            time.sleep(0.2)
        assert job["status"] == "done", job
        body = codes(args.batch, "image", grid, channels, 99)
        per_process = args.requests // args.processes
        deadline = time.monotonic() + args.max_seconds
        work = [(url, token, job["model_id"], body, per_process, args.threads, deadline)] * args.processes
        started = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
            results = pool.map(client_process, work)
        seconds = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(30)
    latencies = np.array([x for lat, _ in results for x in lat]) * 1000
    report = {
        "command": "python tools/bench_service.py " + " ".join(sys.argv[1:]),
        "processes": args.processes,
        "connections_per_process": args.threads,
        "requests": int(latencies.size),
        "codes_per_request": args.batch,
        "request_bytes": len(body),
        "grid": list(grid),
        "mapper": mapper,
        "seconds": round(seconds, 2),
        "requests_per_second": round(latencies.size / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "errors": int(sum(e for _, e in results)),
        "cpu_count": os.cpu_count(),
        "server_torch_threads": 1,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
