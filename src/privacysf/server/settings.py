"""The one configuration object of the server service (web layer, store and job runner)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024


@dataclass
class ServiceConfig:
    """Where the service keeps its state and the limits it enforces on what centers send."""

    store: Path = Path("psf-store")
    """Folder of uploaded code datasets, job checkpoints and model files."""
    db_url: str | None = None
    """SQLAlchemy URL; default ``sqlite:///<store>/service.db`` (WAL mode). Migrations manage any engine."""
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 512 * MiB
    """Largest dataset upload; bigger bodies are cut off with 413 before they fill the disk."""
    max_map_bytes: int = 32 * MiB
    """Largest mapping request (a batch of image codes)."""
    threads: int = 1
    """torch CPU threads for training and mapping, so the service stays a polite neighbour."""
    poll_seconds: float = 0.5
    """How often the job runner looks for queued jobs."""
    model_cache: int = 4
    """Trained mappers kept loaded in memory for the mapping endpoint."""
    token_days: int = 90
    """Lifetime of a new token (``server create-token --days`` sets another); centers rotate theirs
    before it ends with ``privacysf center rotate-token``."""
    token_grace_seconds: float = 600.0
    """How long a rotated token still works, so that a rotation whose reply was lost can be retried
    and a process still holding the old token finishes its request; 0 ends it at once."""
    stale_upload_seconds: float = 3600.0
    """At ``serve`` start, unrecorded dataset files untouched this long are deleted as crash leftovers.
    A live upload rewrites its file with every chunk and a kept one is recorded within seconds, so an
    hour spares any upload in flight, even a slow one, or one of a server on another host."""
    max_queued_jobs_per_center: int = 20
    """Queued jobs one center may have; more are refused with 429 so one center cannot fill the queue."""
    job_lease_seconds: float = 60.0
    """A running job whose worker sent no heartbeat for this long is taken as lost and queued again."""
    in_process_worker: bool = True
    """``serve`` runs a job worker thread; off when separate ``privacysf server worker`` processes do."""

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{Path(self.store).resolve() / 'service.db'}"
