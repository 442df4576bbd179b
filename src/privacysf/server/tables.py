"""The service's database tables (SQLAlchemy 2); their history lives in ``server/migrations``.

Only metadata about codes is stored here: who the centers are, hashes of their tokens, where each
uploaded code dataset lies with its checksum and shape, jobs with their progress and log, model
versions, and where each center's public CKKS evaluation keys lie. The code values and keys themselves
are files in the store folder.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from privacysf.exchange import CodeSpace, training_bytes


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp written and read back as an aware UTC datetime on every engine.

    SQLite keeps no time zone: a value read there is naive, and comparing it with an aware one (a
    token's expiry with the clock) would fail. Values are converted to UTC on the way in, and a naive
    value read back is UTC by this rule.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"a naive timestamp {value} cannot be stored: give it a time zone")
        return None if value is None else value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class CenterRow(Base):
    __tablename__ = "centers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class TokenRow(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    center_id: Mapped[int] = mapped_column(ForeignKey("centers.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    """SHA-256 of the token: the token itself is shown once and never stored."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    """After this the token is refused; a center rotates it before (``POST /tokens/rotate``)."""
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    """When the token stopped or stops working: now for the operator's revoke, a grace period after
    a rotation."""


class DatasetRow(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    center_id: Mapped[int] = mapped_column(ForeignKey("centers.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    file: Mapped[str] = mapped_column(String(200))
    """File name inside ``<store>/datasets``."""
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    grid: Mapped[list] = mapped_column(JSON)
    scan: Mapped[str] = mapped_column(String(16))
    """Token order of the codes: ``row-major``, or ``keyed`` (the center's secret permutation)."""
    image_channels: Mapped[int] = mapped_column(Integer)
    mask_channels: Mapped[int] = mapped_column(Integer)
    train_count: Mapped[int] = mapped_column(Integer)
    val_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    """When the center deleted the dataset: its file is gone, and the row is kept only so that the
    models trained on it stay visible to the center (migration 0007)."""

    @property
    def space(self) -> CodeSpace:
        """The code space of the dataset: what every dataset of one job must share."""
        return CodeSpace((self.grid[0], self.grid[1]), self.scan, self.image_channels, self.mask_channels)

    @property
    def training_bytes(self) -> int:
        """What the dataset's codes take in a training job's memory."""
        return training_bytes(self.space, self.train_count + self.val_count)


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    center_id: Mapped[int] = mapped_column(ForeignKey("centers.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    """queued -> running -> done | failed | cancelled; a running job whose lease expired is queued again."""
    settings: Mapped[dict] = mapped_column(JSON)
    """``train`` and ``mapper`` sections, as accepted by TrainConfig and MapperConfig."""
    epochs: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer, default=-1)
    """Last finished epoch (-1 before the first)."""
    best_score: Mapped[float | None] = mapped_column(nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    resumed_at_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    """The worker running the job (host:pid:nonce); it holds the job while its heartbeat is fresh."""
    claimed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    """Set by a cancel of a running job; its worker stops it after the epoch in flight."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class JobDatasetRow(Base):
    __tablename__ = "job_datasets"
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), primary_key=True)


class JobLogRow(Base):
    __tablename__ = "job_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    message: Mapped[str] = mapped_column(Text)


class ModelRow(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    """1, 2, … per model name: each finished job of that name adds a version."""
    file: Mapped[str] = mapped_column(String(200))
    grid: Mapped[list] = mapped_column(JSON)
    in_channels: Mapped[int] = mapped_column(Integer)
    out_channels: Mapped[int] = mapped_column(Integer)
    mapper: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class EvaluationKeyRow(Base):
    """A center's public CKKS evaluation keys (``PSFK``), with which the server maps that center's
    encrypted queries and reads none of them. The keys are a file under ``<store>/keys``; the secret
    key they belong to never leaves the center."""

    __tablename__ = "evaluation_keys"
    __table_args__ = (UniqueConstraint("center_id", "key_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    center_id: Mapped[int] = mapped_column(ForeignKey("centers.id"), index=True)
    key_id: Mapped[str] = mapped_column(String(64))
    """The id the center's encrypted queries carry (random, drawn by the center with its keys)."""
    file: Mapped[str] = mapped_column(String(200))
    """File name inside ``<store>/keys``."""
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
