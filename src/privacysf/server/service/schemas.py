"""Request and response bodies of the service (pydantic); they become its OpenAPI description.

Inputs are bounded (ids, epochs, widths, learning rate) so that a malformed or hostile request is
refused with a 422 naming the field, instead of reaching the database or the trainer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Id = Annotated[int, Field(ge=1, le=2**31 - 1)]
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
WireDtype = Literal["float32", "float16", "int8"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainSettings(Strict):
    """The subset of TrainConfig a center may choose; device and threads are the server's business."""

    epochs: int = Field(30, ge=1, le=1000)
    batch_size: int = Field(8, ge=1, le=1024)
    lr: float = Field(3e-3, gt=0, le=1, allow_inf_nan=False)
    patience: int = Field(10, ge=1, le=1000)
    seed: int = Field(0, ge=0, le=2**31 - 1)


class MapperSettings(Strict):
    """MapperConfig, bounded so one job cannot ask for an absurd network."""

    width: int = Field(128, ge=8, le=512, multiple_of=8)
    cycles: int = Field(2, ge=1, le=8)
    kernel: int = Field(3, ge=1, le=15)
    use_position: bool = True

    @field_validator("kernel")
    @classmethod
    def odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("kernel must be odd")
        return value


class JobIn(Strict):
    datasets: list[Id] = Field(min_length=1, max_length=100)
    name: Name = "mapper"
    """Model name: each finished job of this name adds a version."""
    train: TrainSettings = TrainSettings()
    mapper: MapperSettings = MapperSettings()


class CenterOut(BaseModel):
    id: int
    name: str


class DatasetOut(BaseModel):
    id: int
    name: str
    sha256: str
    size_bytes: int
    grid: list[int]
    image_channels: int
    mask_channels: int
    train_count: int
    val_count: int
    created_at: datetime


class JobOut(BaseModel):
    id: int
    name: str
    status: Literal["queued", "running", "done", "failed"]
    epoch: int
    """Last finished epoch, counted from 0 (-1: none yet)."""
    epochs: int
    best_score: float | None
    attempts: int
    resumed_at_epoch: int | None
    error: str | None
    model_id: int | None
    datasets: list[int]
    created_at: datetime
    updated_at: datetime


class LogLine(BaseModel):
    at: datetime
    message: str


class ModelOut(BaseModel):
    id: int
    name: str
    version: int
    job_id: int
    grid: list[int]
    in_channels: int
    out_channels: int
    created_at: datetime


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    database: bool
    store: bool
    job_runner: bool
