"""Background training of mapping networks: job workers working through the shared job queue.

A job trains :class:`~privacysf.server.mapping.MappingServer` (the same code the in-process pipeline
uses) on the code datasets it names. The training loop rewrites a resume file after every epoch, so a
job whose worker crashed or was killed with ``kill -9`` is queued again once its lease expires
(:mod:`privacysf.server.store.queue`) and continues after the last finished epoch, on any worker.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import threading
import traceback

import numpy as np
import torch

from privacysf.config import AugmentConfig, MapperConfig, TrainConfig
from privacysf.errors import ConfigError, PrivacySFError
from privacysf.exchange import DATASET_PARTS, merge_datasets, split_dataset, split_messages
from privacysf.server.mapping import MappingServer
from privacysf.server.settings import ServiceConfig
from privacysf.server.store import Store
from privacysf.server.store.records import refuse_too_large_job
from privacysf.server.tables import JobRow

BEST = "best.pt"
RESUME = "resume.pt"


def training_messages(store: Store, job_id: int) -> tuple[bytes, bytes, bytes, bytes]:
    """The four messages MappingServer.fit takes, over all of the job's datasets.

    Its datasets must fit the worker's ``max_job_training_bytes``: a job queued under a higher bound
    fails here, before any file is read. One dataset is passed through untouched; several are read
    with the upload rule, merged code by code in their shared code space (grid, channels and scan
    order: keyed codes stay keyed) and re-encoded as float32, which represents every wire dtype's
    values exactly.
    """
    rows = store.job_datasets(job_id)
    if deleted := [row.id for row in rows if row.deleted_at is not None]:
        raise ConfigError(f"datasets {deleted} were deleted after this job was queued; queue it again")
    refuse_too_large_job(rows, store.cfg.max_job_training_bytes, worker=True)
    payloads = [store.files.dataset(row.file).read_bytes() for row in rows]
    if len(payloads) == 1:
        x, y, vx, vy = split_messages(payloads[0], len(DATASET_PARTS))
        return x, y, vx, vy
    return merge_datasets([split_dataset(payload) for payload in payloads]).messages("float32")


def worker_name() -> str:
    """``host:pid:nonce``: which process holds a job, unique even when a pid is reused."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class JobRunner:
    """One job worker: runs queued jobs one at a time in a daemon thread, holding each by a lease.

    Any number of runners (threads of ``serve``, ``privacysf server worker`` processes) can share one
    database and store folder. Each looks for expired leases before it claims the next job, so a job
    of a killed worker is taken over by whichever worker looks first. :meth:`stop` waits for the
    current epoch and hands the job back to the queue.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.worker = worker_name()
        self.lease = store.cfg.job_lease_seconds
        self.stopping = threading.Event()
        self.holding: int | None = None
        self.thread = threading.Thread(target=self._loop, name="privacysf-jobs", daemon=True)
        self.heart = threading.Thread(target=self._beat, name="privacysf-heartbeat", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.heart.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        self.thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def _beat(self) -> None:
        """Refresh the lease of the job in hand several times per lease, whatever an epoch takes."""
        while not self.stopping.wait(self.lease / 4):
            if (job_id := self.holding) is not None:
                self.store.heartbeat(job_id, self.worker)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.store.requeue_expired_jobs(self.lease)
            job = self.store.claim_next_job(self.worker)
            if job is None:
                self.stopping.wait(self.store.cfg.poll_seconds)
                continue
            self.holding = job.id
            try:
                self.run(job)
            except _Stopped:
                self.store.release_job(job.id, self.worker, "worker stopping; queued again")
            except _Cancelled:
                self.store.end_job(job.id, self.worker, "cancelled", f"cancelled after epoch {job.epoch}")
            except _LeaseLost:
                pass  # another worker holds the job now and writes its log
            except PrivacySFError as exc:
                self._fail(job, str(exc))
            except Exception as exc:  # a bug must fail the job, never kill the runner
                traceback.print_exc()
                self._fail(job, f"internal error ({type(exc).__name__}); the server log has the details")
            finally:
                self.holding = None

    def _fail(self, job: JobRow, message: str) -> None:
        self.store.end_job(job.id, self.worker, "failed", f"failed: {message}", error=message)

    def run(self, job: JobRow) -> None:
        settings = job.settings
        train = TrainConfig(**settings["train"], device="cpu", progress=False)
        server = MappingServer(MapperConfig.saved(settings["mapper"]), AugmentConfig(), train)
        folder = self.store.files.job_dir(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        resuming = (folder / RESUME).is_file()
        start = "resuming" if resuming else "starting"
        self.store.log(job.id, f"attempt {job.attempts} on worker {self.worker}: {start} training")
        first_epoch = True

        def on_epoch(record: dict[str, float]) -> None:
            nonlocal first_epoch
            epoch = int(record["epoch"])
            values = {"epoch": epoch, "best_score": max(record["val_score"], job.best_score or -np.inf)}
            if first_epoch and resuming:
                values["resumed_at_epoch"] = epoch
                self.store.log(job.id, f"resumed at epoch {epoch} from the checkpoint")
            first_epoch = False
            job.best_score, job.epoch = values["best_score"], epoch
            held = self.store.heartbeat(job.id, self.worker)
            if held is None:
                raise _LeaseLost
            progress = (
                f"epoch {epoch}: train loss {record['train_loss']:.5f}, val score {record['val_score']:.5f}"
            )
            self.store.update_job(job.id, progress, **values)
            if held.cancel_requested:
                raise _Cancelled
            if self.stopping.is_set():
                raise _Stopped

        result = server.fit(
            *training_messages(self.store, job.id),
            checkpoint=folder / BEST,
            resume=folder / RESUME,
            on_epoch=on_epoch,
        )
        model_file = f"job-{job.id}-attempt-{job.attempts}.pt"  # a stalled worker's own file
        server.save(self.store.files.model(model_file))
        model = self.store.add_model(job, model_file, server.signature)
        if model is None:
            self.store.files.model(model_file).unlink(missing_ok=True)
            raise _LeaseLost
        self.store.update_job(job.id, best_score=result.best_score)
        self.store.log(
            job.id,
            f"done: best val score {result.best_score:.5f} at epoch {result.best_epoch}; "
            f"model {model.id} ({model.name} v{model.version})",
        )
        (folder / RESUME).unlink(missing_ok=True)


class _Stopped(Exception):
    """Raised from the epoch hook to leave training when the worker shuts down."""


class _Cancelled(Exception):
    """Raised from the epoch hook when the job's center asked to cancel it."""


class _LeaseLost(Exception):
    """The worker's lease expired and another worker took the job over: leave it without a trace."""


def run_worker(cfg: ServiceConfig) -> None:
    """``privacysf server worker``: one job worker in the foreground until SIGTERM or Ctrl-C."""
    torch.set_num_threads(cfg.threads)
    runner = JobRunner(Store(cfg))
    signal.signal(signal.SIGTERM, lambda *_: runner.stopping.set())
    runner.start()
    print(f"job worker {runner.worker} started", flush=True)
    try:
        while runner.alive:
            runner.thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        runner.stop()
