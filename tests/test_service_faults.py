"""kill -9 of a real server process during an upload and during training, then a restart.

After the restart no partial dataset may exist, everything acknowledged (an earlier upload, a queued
job) must still be there, and the interrupted job must resume after its last finished epoch.
"""

import contextlib
import os
import threading
import time

import httpx
from servicekit import TINY_MAPPER, ServerProcess, bundle, sha

from privacysf.server.settings import ServiceConfig
from privacysf.server.store import Store

LEASE = ("--job-lease", "3")
"""The killed server's job is queued again 3 s after its last heartbeat (the default lease is 60 s)."""


def _center(store_dir) -> dict:
    _, token = Store(ServiceConfig(store=store_dir)).create_center("hospital")
    return {"Authorization": f"Bearer {token}"}


def _upload(http: httpx.Client, payload: bytes, name: str = "codes") -> httpx.Response:
    headers = {"X-Content-SHA256": sha(payload)}
    return http.post("/datasets", params={"name": name}, content=payload, headers=headers)


def test_kill_during_an_upload_leaves_no_partial_dataset(tmp_path):
    store = tmp_path / "store"
    auth = _center(store)
    server = ServerProcess(store).start()
    acknowledged = _upload(httpx.Client(base_url=server.url, headers=auth), bundle()).json()
    payload = bundle(n_train=4000, seed=5)
    half_sent = threading.Event()

    def slow_body():
        yield payload[: len(payload) // 2]
        half_sent.set()
        time.sleep(30)  # the server dies while waiting for the rest
        yield payload[len(payload) // 2 :]

    def upload():
        headers = {**auth, "X-Content-SHA256": sha(payload), "Content-Length": str(len(payload))}
        with contextlib.suppress(httpx.HTTPError):  # the connection drops with the server
            httpx.post(f"{server.url}/datasets?name=big", content=slow_body(), headers=headers, timeout=60)

    threading.Thread(target=upload, daemon=True).start()
    assert half_sent.wait(30)
    deadline = time.monotonic() + 30
    while not list((store / "datasets").glob("*.part")):
        assert time.monotonic() < deadline, "the upload never reached the server's temporary file"
        time.sleep(0.05)
    server.kill9()
    parts = list((store / "datasets").glob("*.part"))
    assert parts, "the partial upload should be on disk at the kill"
    long_ago = time.time() - 2 * ServiceConfig().stale_upload_seconds
    os.utime(parts[0], (long_ago, long_ago))  # the restart comes after the stale-upload age

    server = ServerProcess(store).start()
    try:
        with httpx.Client(base_url=server.url, headers=auth) as http:
            datasets = http.get("/datasets").json()
            assert [d["id"] for d in datasets] == [acknowledged["id"]]
            files = list((store / "datasets").iterdir())
            assert [f.name for f in files] == [
                datasets[0]["file"] if "file" in datasets[0] else files[0].name
            ]
            assert sha(files[0].read_bytes()) == acknowledged["sha256"]
            again = _upload(http, payload, "big")  # the center simply uploads again
            assert again.status_code == 201, again.text
    finally:
        server.stop()


def test_kill_during_training_resumes_from_the_last_checkpoint(tmp_path):
    store = tmp_path / "store"
    auth = _center(store)
    server = ServerProcess(store, *LEASE).start()
    http = httpx.Client(base_url=server.url, headers=auth, timeout=60)
    dataset = _upload(http, bundle(n_train=512, n_val=32)).json()
    body = {
        "datasets": [dataset["id"]],
        "train": {"epochs": 40, "patience": 40, "batch_size": 8},
        "mapper": TINY_MAPPER,
    }
    job = http.post("/jobs", json=body).json()
    deadline = time.monotonic() + 120
    while (progress := http.get(f"/jobs/{job['id']}").json())["epoch"] < 2:
        assert time.monotonic() < deadline and progress["status"] != "failed", progress
        time.sleep(0.05)
    server.kill9()
    killed_at = progress["epoch"]
    assert killed_at < 39, "training finished before the kill; make the job longer"

    server = ServerProcess(store, *LEASE).start()
    try:
        http = httpx.Client(base_url=server.url, headers=auth, timeout=60)
        deadline = time.monotonic() + 180
        while (done := http.get(f"/jobs/{job['id']}").json())["status"] not in ("done", "failed"):
            assert time.monotonic() < deadline, done
            time.sleep(0.2)
        assert done["status"] == "done", done
        assert done["attempts"] == 2
        # continued from the kill, not from epoch 0: at the epoch the job reported last, when the kill
        # fell between that report and the resume file's rewrite (the epoch then runs twice)
        assert done["resumed_at_epoch"] >= killed_at > 0
        log = [line["message"] for line in http.get(f"/jobs/{job['id']}/log").json()]
        assert any("sent no heartbeat for 3 s; queued again" in m for m in log)
        assert any(m == f"resumed at epoch {done['resumed_at_epoch']} from the checkpoint" for m in log)
        epochs = [int(m.split(":")[0].split()[1]) for m in log if m.startswith("epoch ")]
        assert sorted(set(epochs)) == list(range(40))  # every epoch ran; at most the one in flight twice
        assert len(epochs) - len(set(epochs)) <= 1
        model = http.get(f"/models/{done['model_id']}").json()
        assert model["job_id"] == job["id"]
    finally:
        server.stop()
