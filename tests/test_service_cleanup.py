"""Clean-up of crash leftovers never costs a live upload.

Regression (issue 18): every ``privacysf server ...`` command, even ``server tokens``, opened a store
that deleted each dataset file without a database row, so an upload in progress lost its ``.part``
file and failed with a 500; the same clean-up could delete a file renamed into place a moment before
its row was written.
"""

import os
import threading
import time

import httpx
from servicekit import ServerProcess, bundle, sha

from privacysf.cli import main
from privacysf.server.settings import ServiceConfig
from privacysf.server.store import Store

HOURS_AGO = time.time() - 2 * 3600


def _parts(store_dir) -> list:
    return list((store_dir / "datasets").glob("*.part"))


def test_operator_commands_beside_a_live_upload_lose_nothing(tmp_path):
    store_dir = tmp_path / "store"
    _, token = Store(ServiceConfig(store=store_dir)).create_center("hospital")
    server = ServerProcess(store_dir).start()
    payload = bundle(n_train=2000, seed=3)
    half_sent, resume = threading.Event(), threading.Event()
    answer: list[httpx.Response] = []

    def slow_body():
        yield payload[: len(payload) // 2]
        half_sent.set()
        resume.wait(60)  # the upload stays in flight while the operator works
        yield payload[len(payload) // 2 :]

    def upload():
        headers = {
            "Authorization": f"Bearer {token}",
            "X-Content-SHA256": sha(payload),
            "Content-Length": str(len(payload)),
        }
        answer.append(
            httpx.post(f"{server.url}/datasets?name=live", content=slow_body(), headers=headers, timeout=60)
        )

    sender = threading.Thread(target=upload, daemon=True)
    try:
        sender.start()
        assert half_sent.wait(30)
        deadline = time.monotonic() + 30
        while not _parts(store_dir):
            assert time.monotonic() < deadline, "the upload never reached the server's temporary file"
            time.sleep(0.05)
        part = _parts(store_dir)[0]
        store = ["--store", str(store_dir)]
        for command in (
            ["server", "tokens", *store],
            ["server", "create-center", "other", *store],
            ["server", "create-token", "hospital", *store],
            ["server", "revoke-token", "3", *store],
            ["server", "tokens", *store],
        ):
            assert main(command) == 0, command
            assert part.exists(), f"{command} deleted the live upload's file"
        resume.set()
        sender.join(60)
        assert answer and answer[0].status_code == 201, answer and answer[0].text
        row = answer[0].json()
        assert row["sha256"] == sha(payload) and row["train_count"] == 2000
        kept = list((store_dir / "datasets").iterdir())
        assert [sha(f.read_bytes()) for f in kept] == [sha(payload)]  # complete, and nothing else
    finally:
        resume.set()
        server.stop()


def test_a_kept_file_not_yet_recorded_survives_a_serve_start(tmp_path):
    cfg = ServiceConfig(store=tmp_path / "store")
    store = Store(cfg)
    payload = bundle()
    upload = store.dataset_upload(
        store.authenticate(store.create_center("hospital")[1]), "codes", sha(payload)
    )
    upload.write(payload)
    record = store.add_dataset

    def serve_start_between_rename_and_row(*args):
        assert not upload.tmp.exists() and store.files.dataset(upload.file).exists()  # renamed, no row
        starting = Store(cfg)
        starting.start_serving()  # alone on the store: it cleans
        starting.stop_serving()
        return record(*args)

    store.add_dataset = serve_start_between_rename_and_row  # type: ignore[method-assign]
    row = upload.commit()
    assert sha(store.files.dataset(row.file).read_bytes()) == sha(payload)


def test_serve_start_removes_old_leftovers_unless_another_server_holds_the_store(tmp_path):
    cfg = ServiceConfig(store=tmp_path / "store")
    live = Store(cfg)
    live.start_serving()
    leftovers = [live.files.temporary("crashed.psfc"), live.files.dataset("unrecorded.psfc")]
    young = live.files.temporary("in-flight.psfc")
    for path in (*leftovers, young):
        path.write_bytes(b"codes")
    for path in leftovers:
        os.utime(path, (HOURS_AGO, HOURS_AGO))

    second = Store(cfg)
    second.start_serving()  # another server is live: its files are not this one's to judge
    assert all(path.exists() for path in (*leftovers, young))
    second.stop_serving()
    live.stop_serving()

    restarted = Store(cfg)
    restarted.start_serving()
    try:
        assert [path.exists() for path in leftovers] == [False, False]
        assert young.exists()  # written within the hour: possibly an upload still on its way
    finally:
        restarted.stop_serving()
