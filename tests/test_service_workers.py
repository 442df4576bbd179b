"""Two ``privacysf server worker`` processes share one queue; one is killed with kill -9 mid-job.

Every job must finish exactly once (one model each), the killed worker's job must resume from its
checkpoint on the other worker once its lease expires, and no job of the live worker may be taken
from it. Run on PostgreSQL (SKIP LOCKED claims) and on SQLite (conditional-UPDATE claims).
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from servicekit import TINY_MAPPER, bundle, sha
from sqlalchemy import select

from privacysf.server.settings import ServiceConfig
from privacysf.server.store import Store
from privacysf.server.tables import JobRow, ModelRow

LEASE = 3
JOBS = 3
TRAIN = {"epochs": 8, "patience": 8, "batch_size": 8}


def start_worker(store_dir, db_url: str | None, log) -> subprocess.Popen:
    command = [sys.executable, "-m", "privacysf.cli", "server", "worker", "--store", str(store_dir)]
    command += ["--job-lease", str(LEASE)] + (["--db", db_url] if db_url else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def jobs(store: Store) -> list[JobRow]:
    with store.session() as s:
        return list(s.scalars(select(JobRow).order_by(JobRow.id)))


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return result


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_two_workers_and_a_kill9_every_job_finishes_once(database, request, tmp_path):
    db_url = request.getfixturevalue("postgres_url") if database == "postgresql" else None
    store = Store(ServiceConfig(store=tmp_path / "store", db_url=db_url))
    assert store.engine.dialect.name == database
    caller = store.authenticate(store.create_center("hospital")[1])
    upload = store.dataset_upload(caller, "codes", sha(payload := bundle(n_train=192, n_val=16)))
    upload.write(payload)
    dataset = upload.commit().id
    settings = {"train": TRAIN, "mapper": TINY_MAPPER}
    ids = [store.create_job(caller, "mapper", [dataset], settings).id for _ in range(JOBS)]

    with (tmp_path / "workers.log").open("ab") as log:
        workers = [start_worker(tmp_path / "store", db_url, log) for _ in range(2)]
        try:
            by_pid = {str(w.pid): w for w in workers}

            def mid_job() -> tuple[JobRow, list[JobRow]] | None:
                running = [j for j in jobs(store) if j.status == "running"]
                if len({j.worker for j in running}) < 2:  # wait until both workers hold a job
                    return None
                victim = next((j for j in running if j.epoch >= 1), None)
                return (victim, running) if victim else None

            victim, running = wait_until(mid_job, 180, "both workers never held a job at once")
            killed = by_pid[victim.worker.split(":")[1]]  # type: ignore[union-attr]
            killed.send_signal(signal.SIGKILL)
            killed.wait(10)
            survivor_jobs = {j.id for j in running if j.worker != victim.worker}
            wait_until(lambda: all(j.status == "done" for j in jobs(store)), 300, "not every job finished")
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.terminate()
                    worker.wait(30)

    final = jobs(store)
    assert [(j.id, j.status) for j in final] == [(i, "done") for i in ids]
    with store.session() as s:
        models = list(s.scalars(select(ModelRow)))
    assert sorted(m.job_id for m in models) == ids  # one model per job, none twice
    resumed = next(j for j in final if j.id == victim.id)
    assert resumed.attempts == 2 and resumed.resumed_at_epoch > victim.epoch  # type: ignore[operator]
    assert resumed.worker != victim.worker
    assert all(j.attempts == 1 for j in final if j.id in survivor_jobs)  # never taken from a live worker
    log = [row.message for row in store.job_log(victim.id)]
    assert f"worker {victim.worker} sent no heartbeat for {LEASE} s; queued again" in log
    assert f"resumed at epoch {resumed.resumed_at_epoch} from the checkpoint" in log
    epochs = [int(m.split(":")[0].split()[1]) for m in log if m.startswith("epoch ")]
    assert sorted(set(epochs)) == list(range(TRAIN["epochs"]))  # every epoch, at most one twice
    assert len(epochs) - len(set(epochs)) <= 1
