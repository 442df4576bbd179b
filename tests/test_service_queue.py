"""The shared job queue on SQLite and PostgreSQL: fair order across centers, quotas, cancel, leases.

The store-level tests drive :class:`~privacysf.server.store.queue.JobQueue` as workers would (claims
with worker names); the API test checks the 429 and 409 answers and that a running job stops at its
next epoch when cancelled.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from servicekit import TINY_MAPPER, TINY_TRAIN, LoopbackServer, bundle, sha, stored_dataset
from sqlalchemy import select, update

from privacysf.errors import QuotaError
from privacysf.server.jobs import JobRunner
from privacysf.server.service import create_app
from privacysf.server.settings import ServiceConfig
from privacysf.server.store import Caller, Store, queue
from privacysf.server.tables import JobRow

SETTINGS = {"train": TINY_TRAIN, "mapper": TINY_MAPPER}
SIGNATURE = {"grid": [4, 4], "in_channels": 4, "out_channels": 4}


def database_url(request) -> str | None:
    """None (SQLite in the store folder) or a fresh PostgreSQL database, by the test's parameter."""
    return request.getfixturevalue("postgres_url") if request.param == "postgresql" else None


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Store:
    store = Store(ServiceConfig(store=tmp_path / "store", db_url=database_url(request)))
    assert store.engine.dialect.name == request.param
    return store


def center(store: Store, name: str) -> tuple[Caller, int]:
    """A center with one uploaded dataset: the caller and the dataset id."""
    caller = store.authenticate(store.create_center(name)[1])
    return caller, stored_dataset(store, caller, bundle()).id


def end(store: Store, job: JobRow) -> None:
    store.update_job(job.id, status="done")


def test_one_centers_thirty_jobs_do_not_hold_up_anothers_one(store):
    (a, a_data), (b, b_data) = center(store, "A"), center(store, "B")
    a_jobs = [store.create_job(a, "m", [a_data], SETTINGS).id for _ in range(30)]
    b_job = store.create_job(b, "m", [b_data], SETTINGS).id
    first = store.claim_next_job("only-worker")
    assert first is not None and first.id == a_jobs[0] and first.worker == "only-worker"
    end(store, first)
    second = store.claim_next_job("only-worker")  # A was served last: B's job goes next
    assert second is not None and second.id == b_job
    end(store, second)
    rest = [store.claim_next_job("only-worker") for _ in range(29)]
    assert [job.id for job in rest if job] == a_jobs[1:]
    assert store.claim_next_job("only-worker") is None


def test_the_center_with_fewer_running_jobs_goes_first(store):
    (a, a_data), (b, b_data) = center(store, "A"), center(store, "B")
    ids = [store.create_job(c, "m", [d], SETTINGS).id for c, d in [(a, a_data), (b, b_data)] * 2]
    a1 = store.claim_next_job("w1")
    b1 = store.claim_next_job("w2")
    assert (a1.id, b1.id) == (ids[0], ids[1])  # type: ignore[union-attr]
    end(store, b1)  # B was served last but runs nothing now, A still runs a1
    assert store.claim_next_job("w2").id == ids[3]  # type: ignore[union-attr]


def test_a_job_is_claimed_once_and_an_expired_lease_requeues_it(store, monkeypatch):
    a, data = center(store, "A")
    job = store.create_job(a, "m", [data], SETTINGS)
    held = store.claim_next_job("w1")
    assert held is not None and held.id == job.id and held.attempts == 1
    assert store.claim_next_job("w2") is None  # running for w1: nobody else gets it
    with monkeypatch.context() as m:  # nor a worker whose read is stale (w1 claimed the row since)
        m.setattr(queue, "fair_order", lambda: select(JobRow).where(JobRow.id == job.id))
        assert store.claim_next_job("w2") is None
    assert store.heartbeat(job.id, "w2") is None  # nor can refresh its lease
    assert store.requeue_expired_jobs(lease_seconds=60) == []  # w1's heartbeat is fresh
    with store.session() as s:  # w1 goes silent: its heartbeat ages past the lease
        s.execute(update(JobRow).values(heartbeat_at=held.heartbeat_at.replace(year=2000)))
    assert store.requeue_expired_jobs(lease_seconds=60) == [job.id]
    assert store.heartbeat(job.id, "w1") is None  # w1, should it wake up, has lost the job
    again = store.claim_next_job("w2")
    assert again is not None and (again.worker, again.attempts) == ("w2", 2)
    assert store.add_model(held, "late.pt", SIGNATURE) is None  # w1's late result is not recorded
    log = [row.message for row in store.job_log(job.id)]
    assert any("sent no heartbeat for 60 s; queued again" in m for m in log)


def test_on_postgresql_leases_hold_between_hosts_whose_clocks_disagree(postgres_url, tmp_path, monkeypatch):
    """w1's host runs an hour behind, w2's an hour ahead: w2 still finds w1's fresh heartbeat fresh."""
    store = Store(ServiceConfig(store=tmp_path / "store", db_url=postgres_url))
    a, data = center(store, "A")
    job = store.create_job(a, "m", [data], SETTINGS)

    def host_clock(offset: timedelta) -> None:
        monkeypatch.setattr(queue, "utcnow", lambda: datetime.now(timezone.utc) + offset)

    host_clock(timedelta(hours=-1))
    assert store.claim_next_job("w1") is not None
    assert store.heartbeat(job.id, "w1") is not None
    host_clock(timedelta(hours=1))
    assert store.requeue_expired_jobs(lease_seconds=60) == []
    assert store.claim_next_job("w2") is None


def test_simultaneous_requests_never_pass_the_quota(store):
    """Eight requests for the last three slots at once: exactly three jobs are queued."""
    a, data = center(store, "A")
    limit, requests = 3, 8
    start = threading.Barrier(requests)

    def request_job(_) -> int | None:
        start.wait()
        try:
            return store.create_job(a, "m", [data], SETTINGS, max_queued=limit).id
        except QuotaError:
            return None

    with ThreadPoolExecutor(requests) as pool:
        created = [job for job in pool.map(request_job, range(requests)) if job is not None]
    assert len(created) == limit
    assert [job.id for job in store.visible_rows(JobRow, a)] == sorted(created)


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request, tmp_path):
    cfg = ServiceConfig(
        store=tmp_path / "store",
        db_url=database_url(request),
        poll_seconds=0.05,
        max_queued_jobs_per_center=2,
    )
    app = create_app(cfg)
    assert app.state.store.engine.dialect.name == request.param
    tokens = {name: app.state.store.create_center(name)[1] for name in ("A", "B")}
    server = LoopbackServer(app).start()
    clients = {
        name: httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {t}"}, timeout=60)
        for name, t in tokens.items()
    }
    yield clients
    server.stop()


def upload(client: httpx.Client, payload: bytes) -> int:
    response = client.post(
        "/datasets", params={"name": "d"}, content=payload, headers={"X-Content-SHA256": sha(payload)}
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def wait_for(client: httpx.Client, job_id: int, done) -> dict:
    deadline = time.monotonic() + 120
    while not done(job := client.get(f"/jobs/{job_id}").json()):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def test_quota_and_cancel_through_the_api(api):
    a = api["A"]
    data = upload(a, bundle(n_train=512, n_val=32))
    long = {
        "datasets": [data],
        "train": {"epochs": 40, "patience": 40, "batch_size": 8},
        "mapper": TINY_MAPPER,
    }
    running = a.post("/jobs", json=long).json()
    wait_for(a, running["id"], lambda job: job["epoch"] >= 1)
    queued = [a.post("/jobs", json=long) for _ in range(3)]
    assert [r.status_code for r in queued] == [201, 201, 429]
    assert "already has 2 queued jobs" in queued[2].json()["detail"]

    assert api["B"].post(f"/jobs/{running['id']}/cancel").status_code == 404  # not B's job
    cancelled = a.post(f"/jobs/{queued[0].json()['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"  # a queued job: at once
    assert a.post("/jobs", json=long).status_code == 201  # the slot is free again

    asked = a.post(f"/jobs/{running['id']}/cancel").json()
    assert asked["status"] == "running" and asked["cancel_requested"]
    stopped = wait_for(a, running["id"], lambda job: job["status"] != "running")
    assert stopped["status"] == "cancelled" and stopped["model_id"] is None
    assert stopped["epoch"] < 39
    log = [line["message"] for line in a.get(f"/jobs/{running['id']}/log").json()]
    assert log[-1] == f"cancelled after epoch {stopped['epoch']}"
    again = a.post(f"/jobs/{running['id']}/cancel")
    assert again.status_code == 409 and "is cancelled" in again.json()["detail"]
    for job in a.get("/jobs").json():  # nothing left running on the way out
        if job["status"] in ("queued", "running"):
            a.post(f"/jobs/{job['id']}/cancel")


def test_serve_without_a_worker_leaves_jobs_to_a_worker_of_its_own(tmp_path):
    """``serve --no-worker`` queues jobs and stays ready; a separate worker on the store runs them."""
    app = create_app(ServiceConfig(store=tmp_path / "store", poll_seconds=0.05, in_process_worker=False))
    token = app.state.store.create_center("A")[1]
    server = LoopbackServer(app).start()
    try:
        client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"})
        job = client.post("/jobs", json={"datasets": [upload(client, bundle())], **SETTINGS}).json()
        assert client.get("/ready").status_code == 200
        time.sleep(0.5)  # ten polls of a worker, had serve started one
        assert client.get(f"/jobs/{job['id']}").json()["status"] == "queued"
        worker = JobRunner(Store(app.state.store.cfg))
        worker.start()
        assert wait_for(client, job["id"], lambda j: j["status"] == "done")["attempts"] == 1
        worker.stop()
    finally:
        server.stop()
