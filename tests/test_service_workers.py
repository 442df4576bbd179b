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
from servicekit import TINY_MAPPER, TINY_TRAIN, bundle, stored_dataset
from sqlalchemy import select, update
from torch import nn

from privacysf.errors import PrivacySFError
from privacysf.server import jobs
from privacysf.server.jobs import JobRunner
from privacysf.server.mapping import MappingServer
from privacysf.server.serving import ModelCache
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


def jobs_of(store: Store) -> list[JobRow]:
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
    dataset = stored_dataset(store, caller, bundle(n_train=192, n_val=16)).id
    settings = {"train": TRAIN, "mapper": TINY_MAPPER}

    with (tmp_path / "workers.log").open("ab") as log:
        workers = [start_worker(tmp_path / "store", db_url, log) for _ in range(2)]
        try:
            # jobs queued once both workers poll, so a slow start cannot leave every job to the other
            def both_started() -> bool:
                return (tmp_path / "workers.log").read_text().count(" started") == 2

            wait_until(both_started, 120, "the two workers never started")
            ids = [store.create_job(caller, "mapper", [dataset], settings).id for _ in range(JOBS)]
            by_pid = {str(w.pid): w for w in workers}

            def mid_job() -> tuple[JobRow, list[JobRow]] | None:
                running = [j for j in jobs_of(store) if j.status == "running"]
                if len({j.worker for j in running}) < 2:  # wait until both workers hold a job
                    return None
                victim = next((j for j in running if j.epoch >= 1), None)
                return (victim, running) if victim else None

            victim, running = wait_until(mid_job, 180, "both workers never held a job at once")
            killed = by_pid[victim.worker.split(":")[1]]  # type: ignore[union-attr]
            killed.send_signal(signal.SIGKILL)
            killed.wait(10)
            survivor_jobs = {j.id for j in running if j.worker != victim.worker}
            wait_until(lambda: all(j.status == "done" for j in jobs_of(store)), 300, "not every job finished")
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.terminate()
                    worker.wait(30)

    final = jobs_of(store)
    assert [(j.id, j.status) for j in final] == [(i, "done") for i in ids]
    with store.session() as s:
        models = list(s.scalars(select(ModelRow)))
    assert sorted(m.job_id for m in models) == ids  # one model per job, none twice
    resumed = next(j for j in final if j.id == victim.id)
    # at or after the last reported epoch (at it when the kill fell before the resume file's rewrite)
    assert resumed.attempts == 2 and resumed.resumed_at_epoch >= victim.epoch  # type: ignore[operator]
    assert resumed.worker != victim.worker
    assert all(j.attempts == 1 for j in final if j.id in survivor_jobs)  # never taken from a live worker
    log = [row.message for row in store.job_log(victim.id)]
    assert f"worker {victim.worker} sent no heartbeat for {LEASE} s; queued again" in log
    assert f"resumed at epoch {resumed.resumed_at_epoch} from the checkpoint" in log
    epochs = [int(m.split(":")[0].split()[1]) for m in log if m.startswith("epoch ")]
    assert sorted(set(epochs)) == list(range(TRAIN["epochs"]))  # every epoch, at most one twice
    assert len(epochs) - len(set(epochs)) <= 1


def one_job(tmp_path) -> Store:
    """A store with one queued job of the tiny mapper."""
    store = Store(ServiceConfig(store=tmp_path / "store"))
    caller = store.authenticate(store.create_center("hospital")[1])
    dataset = stored_dataset(store, caller, bundle()).id
    store.create_job(caller, "mapper", [dataset], {"train": TINY_TRAIN, "mapper": TINY_MAPPER})
    return store


def take_over(store: Store, held: JobRow, worker: str) -> JobRow:
    """``held``'s worker goes silent past its lease and ``worker`` claims the job."""
    with store.session() as s:
        s.execute(update(JobRow).values(heartbeat_at=held.heartbeat_at.replace(year=2000)))  # type: ignore[union-attr]
    assert store.requeue_expired_jobs(LEASE) == [held.id]
    job = store.claim_next_job(worker)
    assert job is not None and job.id == held.id
    return job


def test_a_worker_that_lost_its_job_cannot_fail_it(tmp_path, monkeypatch):
    """Training fails on a worker after its lease expired: the job stays with the worker that took it."""
    store = one_job(tmp_path)
    stalled = JobRunner(store)

    def run(held: JobRow) -> None:
        take_over(store, held, "other-worker")
        stalled.stopping.set()  # one job, then the loop ends
        raise PrivacySFError("the stalled worker's training failed")

    monkeypatch.setattr(stalled, "run", run)
    stalled._loop()
    (job,) = jobs_of(store)
    assert (job.status, job.worker, job.error) == ("running", "other-worker", None)
    assert not [m.message for m in store.job_log(job.id) if m.message.startswith("failed")]


def test_a_stalled_worker_never_writes_the_file_of_the_model_another_worker_recorded(tmp_path, monkeypatch):
    """A live worker stalls past its lease, another finishes the job, then the first one saves its
    model: the model recorded keeps the file the second worker wrote, and the late file is removed."""
    store = one_job(tmp_path)
    stalled = JobRunner(store)
    held = store.claim_next_job(stalled.worker)
    assert held is not None
    late = b"the stalled worker's model"
    real_save, taken_over = MappingServer.save, []

    def save(server: MappingServer, path) -> None:
        if taken_over:  # the worker that took the job over saves its model
            real_save(server, path)
            return
        taken_over.append(held.id)  # the stalled worker's lease expires before it saves
        other = JobRunner(store)
        other.run(take_over(store, held, other.worker))
        path.write_bytes(late)  # then the stalled worker saves, late

    monkeypatch.setattr(MappingServer, "save", save)
    with pytest.raises(jobs._LeaseLost):
        stalled.run(held)
    (done,) = jobs_of(store)
    assert (done.status, done.attempts) == ("done", 2)
    with store.session() as s:
        (model,) = s.scalars(select(ModelRow))
    assert [p.name for p in store.files.models.iterdir()] == [model.file]
    assert store.files.model(model.file).read_bytes() != late


def test_a_job_queued_before_the_activation_setting_trains_and_serves_the_gelu_mapper(tmp_path):
    """The tiny job's settings do not name ``mapper.activation``, as every job queued by a version
    before it: it trains the GELU mapper it meant and the model cache serves that one. Fails if the
    job runner or the cache read the settings with today's ReLU default (``MapperConfig.saved``)."""
    store = one_job(tmp_path)
    runner = JobRunner(store)
    held = store.claim_next_job(runner.worker)
    assert held is not None
    runner.run(held)
    with store.session() as s:
        (model,) = s.scalars(select(ModelRow))
    assert "activation" not in model.mapper
    served = ModelCache(store).get(model)
    assert served.model is not None and any(isinstance(m, nn.GELU) for m in served.model.modules())
