"""The service's persistent state: the database (centers, tokens, datasets, jobs, models) and files.

Shared by every server front end (the web service now, a Flower app later), so storage rules live in
one place:

- tokens are random, shown once, stored as SHA-256 digests, and revocable;
- an uploaded dataset is streamed to a temporary file, size-limited, checksummed, validated as wire
  messages, fsynced and renamed into place, and only then recorded in the database; at start-up any
  temporary or unrecorded file is deleted, so a crash mid-upload leaves nothing behind;
- every query for a dataset, job or model is scoped to the asking center: another center's id reads
  exactly like a missing one.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from privacysf.errors import (
    AuthError,
    ConfigError,
    NotFoundError,
    PayloadTooLargeError,
    WireFormatError,
)
from privacysf.exchange import decode_codes, split_messages
from privacysf.server.settings import ServiceConfig
from privacysf.server.tables import (
    CenterRow,
    DatasetRow,
    JobDatasetRow,
    JobLogRow,
    JobRow,
    ModelRow,
    TokenRow,
)

MIGRATIONS = Path(__file__).with_name("migrations")
DATASET_PARTS = ("train image", "train mask", "val image", "val mask")
"""A dataset upload is these four wire messages back to back."""
PART_KINDS = ("image", "mask", "image", "mask")
TOKEN_PREFIX = "psf_"
TMP_SUFFIX = ".part"


@dataclass(frozen=True)
class Caller:
    """The authenticated center behind a request."""

    center_id: int
    name: str


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """WAL lets readers (status polls) run while the job runner writes; foreign keys are enforced."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Store:
    """Database and files of one service instance; safe to share between threads."""

    def __init__(self, cfg: ServiceConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.store)
        for folder in ("datasets", "jobs", "models"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        url = cfg.database_url
        sqlite = url.startswith("sqlite")
        self.engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30} if sqlite else {}
        )
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.migrate()
        self.remove_unrecorded_files()

    def migrate(self) -> None:
        """Bring the schema to the newest migration (a no-op when it is current)."""
        alembic = Config()
        alembic.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            alembic.attributes["connection"] = connection
            command.upgrade(alembic, "head")

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions.begin() as session:
            yield session

    def ping(self) -> None:
        with self.session() as s:
            s.execute(select(1))

    # centers and tokens ------------------------------------------------------------------------

    def create_center(self, name: str) -> tuple[int, str]:
        """A new center and its first token; returns (token id, token). The token is not kept."""
        name = name.strip()
        if not name or len(name) > 100:
            raise ConfigError("a center name must be 1 to 100 characters")
        with self.session() as s:
            if s.scalar(select(CenterRow).where(CenterRow.name == name)) is not None:
                raise ConfigError(f"center {name!r} exists already; issue it a new token with create-token")
            s.add(CenterRow(name=name))
        return self.create_token(name)

    def create_token(self, center_name: str) -> tuple[int, str]:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.session() as s:
            center = s.scalar(select(CenterRow).where(CenterRow.name == center_name))
            if center is None:
                raise NotFoundError(f"no center named {center_name!r}; create it with create-center")
            row = TokenRow(center_id=center.id, digest=digest(token))
            s.add(row)
            s.flush()
            return row.id, token

    def revoke_token(self, token_id: int) -> str:
        """Revoke a token by its id; returns its center's name."""
        with self.session() as s:
            row = s.get(TokenRow, token_id)
            if row is None:
                raise NotFoundError(f"no token with id {token_id}")
            row.revoked_at = row.revoked_at or datetime.now(timezone.utc)
            return s.get(CenterRow, row.center_id).name

    def list_tokens(self) -> list[dict]:
        with self.session() as s:
            rows = s.execute(select(TokenRow, CenterRow.name).join(CenterRow)).all()
            return [
                {"id": t.id, "center": name, "created_at": t.created_at, "revoked": t.revoked_at is not None}
                for t, name in rows
            ]

    def authenticate(self, token: str | None) -> Caller:
        if not token:
            raise AuthError("this endpoint needs a token: send 'Authorization: Bearer <token>'")
        with self.session() as s:
            row = s.execute(
                select(TokenRow, CenterRow.name).join(CenterRow).where(TokenRow.digest == digest(token))
            ).first()
        if row is None:
            raise AuthError("the token is not known; ask the server's operator for a valid one")
        token_row, name = row
        if token_row.revoked_at is not None:
            raise AuthError("the token was revoked; ask the server's operator for a new one")
        return Caller(token_row.center_id, name)

    # datasets ----------------------------------------------------------------------------------

    def dataset_upload(self, caller: Caller, name: str, sha256: str) -> DatasetUpload:
        return DatasetUpload(self, caller, name, sha256)

    def dataset_path(self, row: DatasetRow) -> Path:
        return self.root / "datasets" / row.file

    def datasets(self, caller: Caller) -> list[DatasetRow]:
        with self.session() as s:
            return list(s.scalars(select(DatasetRow).where(DatasetRow.center_id == caller.center_id)))

    def dataset(self, caller: Caller, dataset_id: int) -> DatasetRow:
        with self.session() as s:
            row = s.get(DatasetRow, dataset_id)
        if row is None or row.center_id != caller.center_id:
            raise NotFoundError(f"dataset {dataset_id} does not exist or belongs to another center")
        return row

    def remove_unrecorded_files(self) -> None:
        """Delete temporary uploads and dataset files without a row: what a crash can leave."""
        with self.session() as s:
            recorded = set(s.scalars(select(DatasetRow.file)))
        for path in (self.root / "datasets").iterdir():
            if path.name not in recorded:
                path.unlink()

    # jobs --------------------------------------------------------------------------------------

    def create_job(self, caller: Caller, name: str, dataset_ids: list[int], settings: dict) -> JobRow:
        rows = [self.dataset(caller, i) for i in dict.fromkeys(dataset_ids)]
        if not rows:
            raise ConfigError("a training job needs at least one dataset id")
        shapes = {(tuple(r.grid), r.image_channels, r.mask_channels) for r in rows}
        if len(shapes) > 1:
            raise ConfigError(
                f"datasets {dataset_ids} hold codes of different shapes {sorted(shapes)}; "
                "train on datasets encoded with the same codec"
            )
        with self.session() as s:
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
        return self.job(caller, job.id)

    def job(self, caller: Caller, job_id: int) -> JobRow:
        with self.session() as s:
            row = s.get(JobRow, job_id)
        if row is None or row.center_id != caller.center_id:
            raise NotFoundError(f"job {job_id} does not exist or belongs to another center")
        return row

    def jobs(self, caller: Caller) -> list[JobRow]:
        with self.session() as s:
            return list(s.scalars(select(JobRow).where(JobRow.center_id == caller.center_id)))

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

    def requeue_interrupted_jobs(self) -> list[int]:
        """Jobs left ``running`` by a killed process go back to the queue (they resume from checkpoints)."""
        with self.session() as s:
            ids = list(s.scalars(select(JobRow.id).where(JobRow.status == "running")))
            s.execute(update(JobRow).where(JobRow.id.in_(ids)).values(status="queued"))
            s.add_all(
                [JobLogRow(job_id=i, message="interrupted by a server stop; queued again") for i in ids]
            )
        return ids

    def claim_next_job(self) -> JobRow | None:
        with self.session() as s:
            job = s.scalar(select(JobRow).where(JobRow.status == "queued").order_by(JobRow.id).limit(1))
            if job is not None:
                job.status, job.attempts = "running", job.attempts + 1
            return job

    def update_job(self, job_id: int, **values) -> None:
        with self.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(**values))

    def job_dir(self, job_id: int) -> Path:
        return self.root / "jobs" / str(job_id)

    # models ------------------------------------------------------------------------------------

    def add_model(self, job: JobRow, file: str, signature: dict) -> ModelRow:
        """Record a finished job's mapper as the next version of its name and mark the job done."""
        with self.session() as s:
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
            s.execute(update(JobRow).where(JobRow.id == job.id).values(status="done", model_id=model.id))
            return model

    def models(self, caller: Caller) -> list[ModelRow]:
        """Models whose training data includes a dataset of the caller: the ones it takes part in."""
        with self.session() as s:
            query = (
                select(ModelRow)
                .join(JobDatasetRow, JobDatasetRow.job_id == ModelRow.job_id)
                .join(DatasetRow, DatasetRow.id == JobDatasetRow.dataset_id)
                .where(DatasetRow.center_id == caller.center_id)
                .distinct()
                .order_by(ModelRow.id)
            )
            return list(s.scalars(query))

    def model(self, caller: Caller, model_id: int) -> ModelRow:
        for row in self.models(caller):
            if row.id == model_id:
                return row
        raise NotFoundError(f"model {model_id} does not exist or this center took no part in it")

    def model_path(self, row: ModelRow) -> Path:
        return self.root / "models" / row.file


class DatasetUpload:
    """One streamed dataset upload: write chunks, then :meth:`commit` (or :meth:`abort`)."""

    def __init__(self, store: Store, caller: Caller, name: str, sha256: str) -> None:
        name = name.strip()
        if not name or len(name) > 100:
            raise ConfigError("a dataset name must be 1 to 100 characters")
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower()):
            raise ConfigError("send the upload's SHA-256 as 64 hex digits in the X-Content-SHA256 header")
        self.store, self.caller, self.name, self.expected = store, caller, name, sha256.lower()
        self.file = f"{uuid.uuid4().hex}.psfc"
        self.tmp = store.root / "datasets" / (self.file + TMP_SUFFIX)
        self.handle = self.tmp.open("wb")
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.store.cfg.max_upload_bytes:
            self.abort()
            raise PayloadTooLargeError(
                f"the upload exceeds this server's limit of {self.store.cfg.max_upload_bytes} bytes; "
                "split the data into several datasets"
            )
        self.hash.update(chunk)
        self.handle.write(chunk)

    def abort(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)

    def commit(self) -> DatasetRow:
        """Check the checksum and the codes, make the file durable, rename it, then record it."""
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            if self.hash.hexdigest() != self.expected:
                raise WireFormatError(
                    f"the upload's SHA-256 is {self.hash.hexdigest()}, the header announced {self.expected}: "
                    "the body was corrupted or truncated in transit; upload again"
                )
            shape = describe_dataset(self.tmp.read_bytes())
            final = self.store.root / "datasets" / self.file
            os.replace(self.tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            self.abort()
            raise
        with self.store.session() as s:
            row = DatasetRow(
                center_id=self.caller.center_id,
                name=self.name,
                file=self.file,
                sha256=self.expected,
                size_bytes=self.size,
                **shape,
            )
            s.add(row)
        return row


def describe_dataset(payload: bytes) -> dict:
    """Check an upload holds paired train/val image and mask codes on one grid; return its shape."""
    messages = split_messages(payload, len(DATASET_PARTS))
    batches = [decode_codes(m, expect_kind=kind) for m, kind in zip(messages, PART_KINDS, strict=True)]
    x, y, vx, vy = batches
    if len({b.grid for b in batches}) > 1 or x.shape[2] != vx.shape[2] or y.shape[2] != vy.shape[2]:
        raise WireFormatError("the four code messages of a dataset must share one grid and channel counts")
    if x.shape[0] != y.shape[0] or vx.shape[0] != vy.shape[0]:
        raise WireFormatError(
            f"image and mask codes must pair up: {x.shape[0]}/{y.shape[0]} train, "
            f"{vx.shape[0]}/{vy.shape[0]} validation"
        )
    return {
        "grid": list(x.grid),
        "image_channels": x.shape[2],
        "mask_channels": y.shape[2],
        "train_count": x.shape[0],
        "val_count": vx.shape[0],
    }


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: the directory entry is data too."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
