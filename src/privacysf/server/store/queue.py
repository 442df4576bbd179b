"""The job queue shared by every job worker: fair claims, leases, cancel requests and quotas.

Several workers (the thread of ``serve``, ``privacysf server worker`` processes on any host that
reaches the database and the store folder) take jobs from one table. A claim is a conditional
``UPDATE ... WHERE status = 'queued'``: of two workers reaching for the same job exactly one changes
the row, and the other looks again. On PostgreSQL the candidate is first selected
``FOR UPDATE SKIP LOCKED``, so a worker passes over a row another is claiming instead of waiting.

A worker holds its job by a lease: it refreshes ``heartbeat_at`` while it trains, and any worker
queues a job again once that heartbeat is older than ``job_lease_seconds`` (by the database's clock,
:func:`lease_clock`, so hosts whose clocks disagree still agree on leases). A worker killed with
``kill -9`` thus loses its job after one lease; a live one never does, whatever other workers start.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, case, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from privacysf.errors import ConflictError, QuotaError
from privacysf.server.store.accounts import Caller
from privacysf.server.store.database import Database
from privacysf.server.tables import CenterRow, JobLogRow, JobRow, utcnow


def lease_clock(s: Session) -> datetime:
    """Now, by the clock every worker of this database shares.

    Workers on several hosts compare each other's heartbeats, so they must read one clock: a host
    whose clock ran a lease ahead would otherwise take every live worker's job. On PostgreSQL that is
    the server's (the transaction's start time); SQLite lives on one host, whose clock it is.
    """
    if s.get_bind().dialect.name == "postgresql":
        return s.execute(select(func.now())).scalar_one()
    return utcnow()


CLAIM_TRIES = 5
"""Candidates a worker tries per claim before it waits for the next poll (others won the rest)."""
UNSYNCED = {"synchronize_session": False}


def fair_order() -> Select[Any]:
    """The next queued job: its center has the fewest running jobs, then was served least recently.

    The oldest job breaks ties. One center's many queued jobs therefore take turns with other
    centers' jobs instead of all going first.
    """
    other = aliased(JobRow)
    running = select(func.count()).where(other.center_id == JobRow.center_id, other.status == "running")
    last_served = select(func.max(other.claimed_at)).where(other.center_id == JobRow.center_id)
    return (
        select(JobRow)
        .where(JobRow.status == "queued")
        .order_by(running.scalar_subquery(), last_served.scalar_subquery().asc().nulls_first(), JobRow.id)
        .limit(1)
    )


def refuse_over_quota(s: Session, caller: Caller, limit: int) -> None:
    """Refuse (429) a new job while the center already has ``limit`` queued; call it in the transaction
    that then queues the job.

    The count and the insert must be one step, or two requests at once both take the last free slot.
    The center's row is therefore written first (a no-op update of a non-key column, which blocks no
    insert of rows that refer to the center): PostgreSQL then holds that row's lock, SQLite its
    database's write lock, until the transaction ends, so a second request of the same center counts
    only once the first one's job is in (or rolled back).
    """
    lock = update(CenterRow).where(CenterRow.id == caller.center_id).values(created_at=CenterRow.created_at)
    s.execute(lock, execution_options=UNSYNCED)
    queued = s.scalar(
        select(func.count()).where(JobRow.center_id == caller.center_id, JobRow.status == "queued")
    )
    if queued is not None and queued >= limit:
        raise QuotaError(
            f"center {caller.name!r} already has {queued} queued jobs, this server's limit; "
            "wait for some to start or cancel one"
        )


class JobQueue(Database):
    """Claims, heartbeats and the end of jobs, safe with any number of worker processes."""

    def claim_next_job(self, worker: str) -> JobRow | None:
        """The next job in :func:`fair_order`, now running for ``worker``; None when none is queued."""
        for _ in range(CLAIM_TRIES):
            with self.session() as s:
                job = s.scalar(fair_order().with_for_update(skip_locked=True, of=JobRow))
                if job is None:
                    return None
                now = lease_clock(s)
                claim = (
                    update(JobRow)
                    .where(JobRow.id == job.id, JobRow.status == "queued")
                    .values(
                        status="running",
                        worker=worker,
                        claimed_at=now,
                        heartbeat_at=now,
                        attempts=JobRow.attempts + 1,
                    )
                )
                if s.execute(claim, execution_options=UNSYNCED).rowcount == 1:  # type: ignore[attr-defined]
                    s.refresh(job)
                    return job
        return None

    def heartbeat(self, job_id: int, worker: str) -> JobRow | None:
        """Refresh ``worker``'s lease on a job: the job as it is now, or None if the worker lost it."""
        with self.session() as s:
            beat = (
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.worker == worker, JobRow.status == "running")
                .values(heartbeat_at=lease_clock(s))
            )
            if s.execute(beat, execution_options=UNSYNCED).rowcount == 0:  # type: ignore[attr-defined]
                return None
            return s.get(JobRow, job_id)

    def requeue_expired_jobs(self, lease_seconds: float) -> list[int]:
        """Running jobs whose worker sent no heartbeat for ``lease_seconds`` go back to the queue.

        They resume from their checkpoints; one whose cancel was requested is cancelled instead.
        """
        requeued = []
        with self.session() as s:
            cutoff = lease_clock(s) - timedelta(seconds=lease_seconds)
            expired = (JobRow.status == "running") & or_(
                JobRow.heartbeat_at.is_(None), JobRow.heartbeat_at < cutoff
            )
            for job in s.scalars(select(JobRow).where(expired)):
                release = (
                    update(JobRow)
                    .where(JobRow.id == job.id, expired)
                    .values(status=case((JobRow.cancel_requested, "cancelled"), else_="queued"), worker=None)
                )
                if s.execute(release, execution_options=UNSYNCED).rowcount == 1:  # type: ignore[attr-defined]
                    requeued.append(job.id)
                    s.add(
                        JobLogRow(
                            job_id=job.id,
                            message=f"worker {job.worker} sent no heartbeat for {lease_seconds:g} s; "
                            + ("cancelled" if job.cancel_requested else "queued again"),
                        )
                    )
        return requeued

    def end_job(self, job_id: int, worker: str, status: str, message: str, error: str | None = None) -> bool:
        """Set a job's final ``status`` (failed, cancelled) and log ``message``, only while ``worker``
        holds it: a worker whose lease expired, should its training then fail, leaves the job to the
        worker that took it over. True when the job was ended."""
        with self.session() as s:
            end = (
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.worker == worker, JobRow.status == "running")
                .values(status=status, error=error)
            )
            if s.execute(end, execution_options=UNSYNCED).rowcount == 0:  # type: ignore[attr-defined]
                return False
            s.add(JobLogRow(job_id=job_id, message=message))
        return True

    def release_job(self, job_id: int, worker: str, message: str) -> None:
        """A stopping worker hands its job back to the queue at once (no lease to wait out)."""
        with self.session() as s:
            release = (
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.worker == worker, JobRow.status == "running")
                .values(status="queued", worker=None)
            )
            if s.execute(release, execution_options=UNSYNCED).rowcount == 1:  # type: ignore[attr-defined]
                s.add(JobLogRow(job_id=job_id, message=message))

    def cancel_job(self, job_id: int) -> str:
        """Cancel a queued job at once, or ask a running one's worker to stop after its epoch.

        Returns the log line written; a job already finished is a :class:`ConflictError` (409).
        """
        with self.session() as s:
            at_once = update(JobRow).where(JobRow.id == job_id, JobRow.status == "queued")
            later = update(JobRow).where(JobRow.id == job_id, JobRow.status == "running")
            if s.execute(at_once.values(status="cancelled"), execution_options=UNSYNCED).rowcount:  # type: ignore[attr-defined]
                message = "cancelled while queued"
            elif s.execute(later.values(cancel_requested=True), execution_options=UNSYNCED).rowcount:  # type: ignore[attr-defined]
                message = "cancel requested; the job stops after the epoch in flight"
            else:
                status = s.scalar(select(JobRow.status).where(JobRow.id == job_id))
                raise ConflictError(
                    f"job {job_id} is {status}; only a queued or running job can be cancelled"
                )
            s.add(JobLogRow(job_id=job_id, message=message))
        return message
