"""Request and response bodies of the service (pydantic); they become its OpenAPI description.

Inputs are bounded (ids, epochs, widths, learning rate) so that a malformed or hostile request is
refused with a 422 naming the field, instead of reaching the database or the trainer.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from privacysf.config import MapperConfig, TrainConfig
from privacysf.errors import ConfigError

Id = Annotated[int, Field(ge=1, le=2**31 - 1)]
KeyId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
"""The id a center's CKKS keys carry (its client draws 16 hex digits)."""
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def center_settings(name: str, config: type[BaseModel], limits: dict[str, Any], doc: str) -> type[BaseModel]:
    """The fields of ``config`` a center may set, as a request body.

    Each field keeps the config's default, description, bounds and validators, so a value the config
    refuses is refused here too; ``limits`` adds only the service's tighter caps (one job may not ask
    for an absurd network or budget). Fields left out are the server's business.
    """
    fields: dict[str, Any] = {}
    for field, limit in limits.items():
        info = config.model_fields[field]
        # a type built at run time: the config's annotation with the service's cap beside its bounds
        annotated = Annotated[(info.annotation, limit, *info.metadata)]  # type: ignore[name-defined]
        fields[field] = (annotated, Field(info.default, description=info.description))
    return create_model(name, __base__=Strict, __doc__=doc, **fields)


if TYPE_CHECKING:  # built at run time by create_model; to a type checker each is just a model
    TrainSettings = BaseModel
    MapperSettings = BaseModel
else:
    TrainSettings = center_settings(
        "TrainSettings",
        TrainConfig,
        {
            "epochs": Field(le=1000),
            "batch_size": Field(le=1024),
            "lr": Field(le=1),
            "patience": Field(le=1000),
            "seed": Field(le=2**31 - 1),
        },
        "The subset of TrainConfig a center may choose; device and threads are the server's business.",
    )
    MapperSettings = center_settings(
        "MapperSettings",
        MapperConfig,
        {
            "kind": Field(),
            "width": Field(le=512),
            "cycles": Field(le=8),
            "kernel": Field(le=15),
            "use_position": Field(),
            "depth": Field(le=8),
            "heads": Field(le=16),
            "latents": Field(le=1024),
            "token_width": Field(le=512),
            "grid_channels": Field(),
            "res_units": Field(),
            "poly_width": Field(le=512),
            "padding": Field(),
            "activation": Field(),
        },
        "MapperConfig's network settings, capped so one job cannot ask for an absurd network; "
        "``kind=transformer`` learns through a secret token permutation (keyed uploads), ``kind=poly`` "
        "serves encrypted queries.",
    )


class JobIn(Strict):
    datasets: list[Id] = Field(min_length=1, max_length=100)
    name: Name = "mapper"
    """Model name: each finished job of this name adds a version."""
    train: TrainSettings = Field(default_factory=TrainSettings)
    mapper: MapperSettings = Field(default_factory=MapperSettings)

    @model_validator(mode="after")
    def _mapper_settings_fit_together(self) -> JobIn:
        """The settings' own fields keep only per-field bounds; rules across fields (heads that split
        the widths) are the mapper config's, checked here so a job that could only fail in the worker is
        refused with 422."""
        try:
            MapperConfig.from_dict(self.mapper.model_dump())
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


class CenterOut(BaseModel):
    id: int
    name: str
    token_expires_at: datetime
    """When the token of this request expires (UTC): rotate it before."""


class RotatedToken(BaseModel):
    id: int
    token: str
    """The new token: shown this once, never stored by the server."""
    expires_at: datetime
    previous_token_ends_at: datetime
    """The token that asked for the rotation works until then (a grace period), then never again."""


class KeysOut(BaseModel):
    id: int
    key_id: str
    """The id this center's encrypted queries carry."""
    size_bytes: int
    created_at: datetime


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
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    cancel_requested: bool
    """A cancel of the running job was asked for; it stops after the epoch in flight."""
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
