"""The one configuration object of the server service (web layer, store and job runner)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from privacysf.config import MapperRuntime

MiB = 1024 * 1024
GiB = 1024 * MiB


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
    max_job_training_bytes: int = 4 * GiB
    """Most memory the codes of one training job may take: image and mask codes of all its datasets,
    training and validation, counted as the float32 tensors a job trains on
    (``exchange.training_bytes``). The job also holds the messages they were read from while it
    trains: its one dataset's stored bytes, or, when it merges several, their float32 messages, up to
    about twice this in all. A dataset past it is refused with 413 from its headers, before the
    message that crosses it is inflated and before anything is kept; a job past it is refused with
    400 when it is queued, and fails if a worker with a lower bound picks it up. Deflated codes make
    this, not ``max_upload_bytes``, the bound on what an upload can cost: half a megabyte of deflated
    codes can hold half a gibibyte of ``uint4`` values, 4 GiB as float32, and before this bound a job
    could name any number of such datasets. The default holds one upload of ``max_upload_bytes`` of
    ``uint4`` codes."""
    max_map_bytes: int = 32 * MiB
    """Largest mapping request (a batch of image codes)."""
    max_map_codes: int = 1024
    """Most codes in one mapping request. Mapping costs CPU time per code, so this bounds how long one
    request holds a worker: a bigger batch is refused with 413 and the client sends it in parts."""
    max_encrypted_codes: int = 16
    """Most encrypted codes in one mapping request: each costs the default poly mapper over a second of
    CPU (1.2 s at 128², 2.5 s at 256² on two threads, docs/benchmarks/encrypted_queries.md), and a
    wider one more, so ``map_seconds`` is checked between codes too; the center's client sends one
    image per request."""
    max_keys_per_center: int = 4
    """Sets of evaluation keys one center may register (each held in memory by every model it queries,
    72 MB at 128²); more are refused with 429 until it replaces one under the same id."""
    max_key_bytes: int = 256 * MiB
    """Largest upload of a center's CKKS evaluation keys (72 MB for a 16x16 token grid, 18 MB for 32x32)."""
    map_seconds: float = 60.0
    """Longest a mapping request may compute (checked between batches of 64 codes): past it the rest
    is refused with 413 saying how many codes fit, so no request holds a worker past its clients'
    timeout (120 s), whatever the model's cost per code."""
    max_concurrent_uploads: int = 4
    """Uploads received at once; more are refused with 503 and Retry-After before anything is written,
    so many slow uploads cannot exhaust file descriptors, disk bandwidth or commit threads."""
    body_timeout_seconds: float = 30.0
    """Longest wait for the next piece of a request body; a stalled client is cut off with 408 (its
    partial upload removed) instead of holding a connection and a temporary file forever."""
    idle_timeout_seconds: int = 5
    """How long a connection may stay open without sending a request (keep-alive included)."""
    header_timeout_seconds: float = 10.0
    """Longest a request head may take to arrive, counted from its first byte however the bytes
    trickle in; past it the client gets 408 and the connection is closed."""
    max_header_bytes: int = 64 * 1024
    """Largest request head (request line and headers); a bigger one is refused with 400 unread."""
    max_connections: int = 256
    """Connections and requests in progress at once; past it uvicorn answers 503 at once."""
    threads: int = 1
    """torch CPU threads for training and mapping, so the service stays a polite neighbour."""
    poll_seconds: float = 0.5
    """How often the job runner looks for queued jobs."""
    model_cache: int = 4
    """Trained mappers kept loaded in memory for the mapping endpoint."""
    mapper_runtime: MapperRuntime = "onnxruntime"
    """What answers mapping requests for the models ONNX Runtime can serve (``mapper.runtime``; unet
    and cnn mappers without a center embedding; the others always answer in torch). ``onnxruntime``
    (the default since 2026-12-06) mapped a query's code in 0.64-0.79 of torch's time at batch 1 and
    took a whole 256² query from 0.99-1.00 to 0.87-0.89 × the raw U-Net's time there, at about 1.04 ×
    torch's at 256², batch 32 (docs/results.md, "The service maps in ONNX Runtime"). A model is exported
    once, about 3 s, and the export is kept beside the model file for later loads. ``torch`` needs no
    ONNX packages."""
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
