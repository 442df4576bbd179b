"""Background training of mapping networks: one worker thread working through the job queue.

A job trains :class:`~privacysf.server.mapping.MappingServer` (the same code the in-process pipeline
uses) on the code datasets it names. The training loop rewrites a resume file after every epoch, so a
job interrupted by a crash or a ``kill -9`` is queued again at the next start and continues after the
last finished epoch instead of starting over.
"""

from __future__ import annotations

import threading
import traceback

import numpy as np

from privacysf.config import AugmentConfig, MapperConfig, TrainConfig
from privacysf.errors import PrivacySFError
from privacysf.exchange import DATASET_PARTS, merge_datasets, split_dataset, split_messages
from privacysf.server.mapping import MappingServer
from privacysf.server.store import Store
from privacysf.server.tables import JobRow

BEST = "best.pt"
RESUME = "resume.pt"


def training_messages(store: Store, job_id: int) -> tuple[bytes, bytes, bytes, bytes]:
    """The four messages MappingServer.fit takes, over all of the job's datasets.

    One dataset is passed through untouched; several are read with the upload rule, merged code by
    code in their shared code space (grid, channels and scan order: keyed codes stay keyed) and
    re-encoded as float32, which represents every wire dtype's values exactly.
    """
    payloads = [store.files.dataset(row.file).read_bytes() for row in store.job_datasets(job_id)]
    if len(payloads) == 1:
        x, y, vx, vy = split_messages(payloads[0], len(DATASET_PARTS))
        return x, y, vx, vy
    return merge_datasets([split_dataset(payload) for payload in payloads]).messages("float32")


class JobRunner:
    """Runs queued jobs one at a time in a daemon thread; :meth:`stop` waits for the current epoch."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="privacysf-jobs", daemon=True)

    def start(self) -> None:
        for job_id in self.store.requeue_interrupted_jobs():
            self.store.log(job_id, "will resume from its last checkpoint")
        self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        self.thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            job = self.store.claim_next_job()
            if job is None:
                self.stopping.wait(self.store.cfg.poll_seconds)
                continue
            try:
                self.run(job)
            except _Stopped:
                self.store.update_job(job.id, status="queued")
                self.store.log(job.id, "server stopping; queued again")
            except PrivacySFError as exc:
                self._fail(job, str(exc))
            except Exception as exc:  # a bug must fail the job, never kill the runner
                traceback.print_exc()
                self._fail(job, f"internal error ({type(exc).__name__}); the server log has the details")

    def _fail(self, job: JobRow, message: str) -> None:
        self.store.update_job(job.id, status="failed", error=message)
        self.store.log(job.id, f"failed: {message}")

    def run(self, job: JobRow) -> None:
        settings = job.settings
        train = TrainConfig(**settings["train"], device="cpu", progress=False)
        server = MappingServer(MapperConfig(**settings["mapper"]), AugmentConfig(), train)
        folder = self.store.files.job_dir(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        resuming = (folder / RESUME).is_file()
        self.store.log(job.id, f"attempt {job.attempts}: {'resuming' if resuming else 'starting'} training")
        first_epoch = True

        def on_epoch(record: dict[str, float]) -> None:
            nonlocal first_epoch
            epoch = int(record["epoch"])
            values = {"epoch": epoch, "best_score": max(record["val_score"], job.best_score or -np.inf)}
            if first_epoch and resuming:
                values["resumed_at_epoch"] = epoch
                self.store.log(job.id, f"resumed at epoch {epoch} from the checkpoint")
            first_epoch = False
            job.best_score = values["best_score"]
            self.store.update_job(job.id, **values)
            self.store.log(
                job.id,
                f"epoch {epoch}: train loss {record['train_loss']:.5f}, val score {record['val_score']:.5f}",
            )
            if self.stopping.is_set():
                raise _Stopped

        result = server.fit(
            *training_messages(self.store, job.id),
            checkpoint=folder / BEST,
            resume=folder / RESUME,
            on_epoch=on_epoch,
        )
        model_file = f"job-{job.id}.pt"
        server.save(self.store.files.model(model_file))
        model = self.store.add_model(job, model_file, server.signature)
        self.store.update_job(job.id, best_score=result.best_score)
        self.store.log(
            job.id,
            f"done: best val score {result.best_score:.5f} at epoch {result.best_epoch}; "
            f"model {model.id} ({model.name} v{model.version})",
        )
        (folder / RESUME).unlink(missing_ok=True)


class _Stopped(Exception):
    """Raised from the epoch hook to leave training when the service shuts down."""
