"""Peak memory of the server while it receives and checks one big dataset upload.

Starts ``privacysf server serve`` on a free port with a fresh store, uploads a small dataset (so
imports and first-use allocations are done), then streams a valid dataset of ``--mib`` MiB of
float16 codes (whose values the server checks for NaN and infinity) and samples the server
process's resident memory every 5 ms until the upload is committed. Writes idle and peak RSS and
their difference (MiB) as JSON. The client never holds the dataset: it is generated chunk by chunk,
twice (once for its SHA-256, once to send it).

    .venv/bin/python tools/bench_upload_memory.py --mib 512
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

from privacysf.exchange import encode_header
from privacysf.server.settings import ServiceConfig
from privacysf.server.store import Store

MiB = 1024 * 1024
GRID, CHANNELS = (4, 4), 64
DTYPE = "float16"
CODE_BYTES = GRID[0] * GRID[1] * CHANNELS * 2  # one float16 code


def dataset(mib: int) -> Iterator[bytes]:
    """A valid dataset of about ``mib`` MiB, in chunks of at most 1 MiB (train : val = 7 : 1)."""
    codes = mib * MiB // CODE_BYTES
    n_val = codes // 16
    n_train = (codes - 2 * n_val) // 2
    for n, kind in ((n_train, "image"), (n_train, "mask"), (n_val, "image"), (n_val, "mask")):
        yield encode_header(kind, DTYPE, (n, GRID[0] * GRID[1], CHANNELS), GRID, "row-major")
        left = n * CODE_BYTES
        while left:
            yield bytes(min(MiB, left))
            left -= min(MiB, left)


def measure(mib: int, root: Path) -> dict:
    store = root / "store"
    token = Store(ServiceConfig(store=store)).create_center("bench")[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "privacysf.cli", "server", "serve", "--store", str(store)]
    command += ["--port", str(port), "--max-upload-mb", str(mib + 16)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=600)
        deadline = time.monotonic() + 60
        while True:
            try:
                if http.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        small = b"".join(dataset(1))
        warm = http.post("/datasets?name=warm", content=small, headers=_checksum(iter([small])))
        warm.raise_for_status()
        process = psutil.Process(server.pid)
        idle, peak, done = process.memory_info().rss, 0, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, process.memory_info().rss)
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.perf_counter()
        headers = _checksum(dataset(mib))
        response = http.post("/datasets?name=big", content=dataset(mib), headers=headers)
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        response.raise_for_status()
    finally:
        server.terminate()
        server.wait(30)
    return {
        "upload_mib": round(response.json()["size_bytes"] / MiB, 1),
        "idle_rss_mib": round(idle / MiB, 1),
        "peak_rss_mib": round(peak / MiB, 1),
        "peak_above_idle_mib": round((peak - idle) / MiB, 1),
        "upload_and_commit_seconds": round(seconds, 1),
    }


def _checksum(chunks: Iterator[bytes]) -> dict[str, str]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return {"X-Content-SHA256": digest.hexdigest(), "Content-Length": str(size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="size of the dataset uploaded (MiB)")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        figures = measure(args.mib, Path(root))
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
