"""What the database records about datasets, jobs, models and evaluation keys, each seen only by the
centers it belongs to.

A center sees its own datasets and jobs, and the models trained on any of its datasets. That rule is
one query, :func:`visible`, behind every list and lookup: another center's id reads exactly like a
missing one.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, func, select, update
from sqlalchemy.exc import IntegrityError

from privacysf.errors import ConfigError, ConflictError, NotFoundError, QuotaError
from privacysf.exchange import DatasetLayout, one_code_space
from privacysf.server.store.accounts import Caller
from privacysf.server.store.database import Database
from privacysf.server.store.queue import refuse_over_quota
from privacysf.server.tables import (
    DatasetRow,
    EvaluationKeyRow,
    JobDatasetRow,
    JobLogRow,
    JobRow,
    ModelRow,
    utcnow,
)

Row = TypeVar("Row", DatasetRow, JobRow, ModelRow, EvaluationKeyRow)
MISSING = {
    DatasetRow: "dataset {id} does not exist or belongs to another center",
    JobRow: "job {id} does not exist or belongs to another center",
    ModelRow: "model {id} does not exist or this center took no part in it",
    EvaluationKeyRow: "evaluation keys {id} do not exist or belong to another center",
}
"""What a lookup of a row the caller may not see says (the same whether it exists or not)."""


def visible(table: type[Row], center_id: int) -> Select[Any]:
    """The rows of ``table`` a center may see: its datasets, jobs and keys, and models trained on its
    data."""
    if issubclass(table, ModelRow):  # IN, not JOIN + DISTINCT: PostgreSQL cannot compare JSON columns
        own_jobs = (
            select(JobDatasetRow.job_id)
            .join(DatasetRow, DatasetRow.id == JobDatasetRow.dataset_id)
            .where(DatasetRow.center_id == center_id)
        )
        return select(ModelRow).where(ModelRow.job_id.in_(own_jobs))
    rows = select(table).where(table.center_id == center_id)
    return rows.where(DatasetRow.deleted_at.is_(None)) if table is DatasetRow else rows


class Records(Database):
    """Datasets, jobs (with their datasets and log) and model versions."""

    # lookups scoped to the caller ---------------------------------------------------------------

    def visible_rows(self, table: type[Row], caller: Caller) -> list[Row]:
        with self.session() as s:
            return list(s.scalars(visible(table, caller.center_id).order_by(table.id)))

    def visible_row(self, table: type[Row], caller: Caller, row_id: int) -> Row:
        with self.session() as s:
            row = s.scalar(visible(table, caller.center_id).where(table.id == row_id))
        if row is None:
            raise NotFoundError(MISSING[table].format(id=row_id))
        return row

    # datasets ----------------------------------------------------------------------------------

    def add_dataset(
        self, caller: Caller, name: str, file: str, sha256: str, size_bytes: int, layout: DatasetLayout
    ) -> DatasetRow:
        space = layout.space
        with self.session() as s:
            row = DatasetRow(
                center_id=caller.center_id,
                name=name,
                file=file,
                sha256=sha256,
                size_bytes=size_bytes,
                grid=list(space.grid),
                scan=space.scan,
                image_channels=space.image_channels,
                mask_channels=space.mask_channels,
                train_count=layout.train_count,
                val_count=layout.val_count,
            )
            s.add(row)
        return row

    def dataset_files(self) -> set[str]:
        """The files of the datasets kept (a deleted dataset's file left by a crash is a leftover)."""
        with self.session() as s:
            return set(s.scalars(select(DatasetRow.file).where(DatasetRow.deleted_at.is_(None))))

    def mark_dataset_deleted(self, caller: Caller, dataset_id: int) -> str:
        """Mark one of the caller's datasets deleted and return its file, for the caller to remove
        (:meth:`privacysf.server.store.Store.delete_dataset`).

        A dataset that a queued or running job trains on is a :class:`ConflictError` (409): cancel the
        job first. The row stays (marked, no longer listed or usable) because the models trained on it
        are the center's through it; those models keep what they learnt from the codes.
        """
        row = self.visible_row(DatasetRow, caller, dataset_id)
        with self.session() as s:
            active = (
                select(JobRow.id)
                .join(JobDatasetRow)
                .where(JobDatasetRow.dataset_id == row.id, JobRow.status.in_(("queued", "running")))
            )
            if jobs := list(s.scalars(active.order_by(JobRow.id))):
                raise ConflictError(
                    f"dataset {row.id} is used by job(s) {jobs}, still queued or running; cancel them "
                    "or wait for them to end, then delete it"
                )
            s.execute(update(DatasetRow).where(DatasetRow.id == row.id).values(deleted_at=utcnow()))
        return row.file

    # jobs --------------------------------------------------------------------------------------

    def create_job(
        self,
        caller: Caller,
        name: str,
        dataset_ids: list[int],
        settings: dict,
        max_queued: int | None = None,
        max_training_bytes: int | None = None,
    ) -> JobRow:
        """Queue a job on some of the caller's datasets, which must all lie in one code space; with
        ``max_queued``, only while the center has fewer queued jobs (else :class:`QuotaError`); with
        ``max_training_bytes``, only if their codes fit in that much memory (:func:`refuse_too_large_job`)."""
        rows = [self.visible_row(DatasetRow, caller, i) for i in dict.fromkeys(dataset_ids)]
        if not rows:
            raise ConfigError("a training job needs at least one dataset id")
        one_code_space([row.space for row in rows], f"datasets {[row.id for row in rows]}")
        if max_training_bytes is not None:
            refuse_too_large_job(rows, max_training_bytes)
        with self.session() as s:
            if max_queued is not None:
                refuse_over_quota(s, caller, max_queued)
            job = JobRow(
                center_id=caller.center_id,
                name=name,
                settings=settings,
                epochs=settings["train"]["epochs"],
            )
            s.add(job)
            s.flush()
            s.add_all([JobDatasetRow(job_id=job.id, dataset_id=r.id) for r in rows])
            s.add(JobLogRow(job_id=job.id, message=f"queued on datasets {[r.id for r in rows]}"))
        return self.visible_row(JobRow, caller, job.id)

    def job_log(self, job_id: int) -> list[JobLogRow]:
        with self.session() as s:
            return list(s.scalars(select(JobLogRow).where(JobLogRow.job_id == job_id).order_by(JobLogRow.id)))

    def log(self, job_id: int, message: str) -> None:
        with self.session() as s:
            s.add(JobLogRow(job_id=job_id, message=message))

    def job_datasets(self, job_id: int) -> list[DatasetRow]:
        with self.session() as s:
            query = select(DatasetRow).join(JobDatasetRow).where(JobDatasetRow.job_id == job_id)
            return list(s.scalars(query.order_by(DatasetRow.id)))

    def update_job(self, job_id: int, note: str | None = None, **values) -> None:
        """Set ``values`` on a job and log ``note`` in the same transaction: the job's progress and its
        log agree, whenever the worker is killed."""
        with self.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(**values))
            if note is not None:
                s.add(JobLogRow(job_id=job_id, message=note))

    # models ------------------------------------------------------------------------------------

    def add_model(self, job: JobRow, file: str, signature: dict) -> ModelRow | None:
        """Record a finished job's mapper as the next version of its name and mark the job done.

        Only while ``job.worker`` still holds the job: a worker whose lease expired (another worker
        took the job over) records nothing and gets None, so each job yields exactly one model.
        """
        with self.session() as s:
            held = (JobRow.id == job.id) & (JobRow.worker == job.worker) & (JobRow.status == "running")
            done = update(JobRow).where(held).values(status="done")
            if s.execute(done, execution_options={"synchronize_session": False}).rowcount == 0:  # type: ignore[attr-defined]
                return None
            latest = s.scalar(
                select(func.max(ModelRow.version))
                .join(JobRow, JobRow.id == ModelRow.job_id)
                .where(ModelRow.name == job.name, JobRow.center_id == job.center_id)
            )
            model = ModelRow(
                job_id=job.id,
                name=job.name,
                version=(latest or 0) + 1,
                file=file,
                grid=signature["grid"],
                in_channels=signature["in_channels"],
                out_channels=signature["out_channels"],
                mapper=job.settings["mapper"],
            )
            s.add(model)
            s.flush()
            s.execute(update(JobRow).where(JobRow.id == job.id).values(model_id=model.id))
            return model

    # evaluation keys ---------------------------------------------------------------------------

    def put_keys(
        self, caller: Caller, key_id: str, file: str, size_bytes: int, max_keys: int
    ) -> tuple[EvaluationKeyRow, str]:
        """Record ``file`` as the caller's evaluation keys ``key_id``, replacing any it had under that
        id; returns the row and the file it replaced ("" when none), for the caller to delete. A new id
        past ``max_keys`` of the caller's is a :class:`QuotaError`."""
        try:
            return self._put_keys(caller, key_id, file, size_bytes, max_keys)
        except IntegrityError:  # the same new id recorded by a concurrent request
            raise ConflictError(
                f"evaluation keys {key_id} were sent twice at once; send them again"
            ) from None

    def _put_keys(
        self, caller: Caller, key_id: str, file: str, size_bytes: int, max_keys: int
    ) -> tuple[EvaluationKeyRow, str]:
        with self.session() as s:
            row = s.scalar(
                visible(EvaluationKeyRow, caller.center_id).where(EvaluationKeyRow.key_id == key_id)
            )
            replaced = row.file if row else ""
            if row is None:
                held = s.scalar(
                    select(func.count()).select_from(visible(EvaluationKeyRow, caller.center_id).subquery())
                )
                if held is not None and held >= max_keys:
                    raise QuotaError(
                        f"this center already registered {held} sets of evaluation keys, the most this "
                        "server keeps; send new keys under an id it holds (GET /keys) to replace them"
                    )
                row = EvaluationKeyRow(
                    center_id=caller.center_id, key_id=key_id, file=file, size_bytes=size_bytes
                )
                s.add(row)
            else:
                row.file, row.size_bytes, row.created_at = file, size_bytes, utcnow()
        return row, replaced

    def evaluation_keys(self, caller: Caller, key_id: str) -> EvaluationKeyRow:
        """The caller's evaluation keys ``key_id``, or :class:`NotFoundError` saying how to register them."""
        with self.session() as s:
            row = s.scalar(
                visible(EvaluationKeyRow, caller.center_id).where(EvaluationKeyRow.key_id == key_id)
            )
        if row is None:
            raise NotFoundError(
                f"no evaluation keys {key_id} registered for this center; send them first "
                f"(PUT /keys/{key_id}; the center's client does so before its first encrypted query)"
            )
        return row

    def key_files(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(EvaluationKeyRow.file)))


def refuse_too_large_job(rows: list[DatasetRow], limit: int, worker: bool = False) -> None:
    """A :class:`ConfigError` when the datasets' codes together take more than ``limit`` bytes in a
    training job, which holds them all at once (``ServiceConfig.max_job_training_bytes``).

    The advice follows who refuses: a center queuing the job can name fewer datasets (or, for one
    dataset stored under a higher bound, upload its codes again in parts); a ``worker`` refusing a
    job the server accepted means its operator runs it with a lower bound than the server's."""
    needed = sum(row.training_bytes for row in rows)
    if needed <= limit:
        return
    if worker:
        advice = (
            "this job worker's limit is lower than the server's that queued the job; its operator must "
            "raise the worker's --max-job-training-mb"
        )
    elif len(rows) > 1:
        advice = "train on fewer datasets"
    else:
        advice = "upload its codes again as several smaller datasets and train on fewer at a time"
    raise ConfigError(
        f"datasets {[row.id for row in rows]} hold codes that take {needed} bytes as float32 in a "
        f"training job, past the limit of {limit} for one job; {advice}"
    )
