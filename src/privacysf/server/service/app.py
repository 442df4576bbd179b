"""The HTTP API: centers upload code datasets, start training jobs and map codes with their models,
plain or CKKS-encrypted (under public evaluation keys the center registered).

Every endpoint but ``/health`` needs a center's bearer token; every dataset, job and model is looked
up within the calling center's own. Request bodies of codes are the wire format itself
(``application/octet-stream``), read with a size limit; errors a client can cause come back as 4xx
with a message saying what was wrong.
"""

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import Enum
from typing import Annotated, Any, TypeVar

import torch
from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from privacysf.config import WireDtype
from privacysf.exchange.encrypted import EncryptedCodes, is_encrypted
from privacysf.nets.onnx_runtime import require_onnx_runtime
from privacysf.server.jobs import JobRunner
from privacysf.server.service.handlers import add_error_handlers
from privacysf.server.service.limits import (
    HeaderLimit,
    UploadGate,
    body_chunks,
    read_limited,
    refuse_big_batch,
    refuse_declared_size,
    uvicorn_options,
)
from privacysf.server.service.schemas import (
    CenterOut,
    DatasetOut,
    Health,
    Id,
    JobIn,
    JobOut,
    KeyId,
    KeysOut,
    LogLine,
    ModelOut,
    Name,
    Readiness,
    RotatedToken,
)
from privacysf.server.serving import ModelCache
from privacysf.server.settings import ServiceConfig
from privacysf.server.store import Caller, Store
from privacysf.server.store.records import Row
from privacysf.server.tables import DatasetRow, EvaluationKeyRow, JobRow, ModelRow

log = logging.getLogger("privacysf.service")
CODES = "application/octet-stream"
BINARY_BODY = {
    "requestBody": {
        "required": True,
        "content": {CODES: {"schema": {"type": "string", "format": "binary"}}},
    }
}
Out = TypeVar("Out", bound=BaseModel)
bearer = HTTPBearer(auto_error=False, description="a center's API token (privacysf server create-center)")


def create_app(cfg: ServiceConfig) -> FastAPI:
    if cfg.mapper_runtime == "onnxruntime":  # refuse now, not at the first mapping request
        require_onnx_runtime()
    store = Store(cfg)
    runner = JobRunner(store) if cfg.in_process_worker else None
    cache = ModelCache(store)
    uploads = UploadGate(cfg.max_concurrent_uploads)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(cfg.threads)
        store.start_serving()  # the only place that deletes crash leftovers: operator commands never do
        if runner:
            runner.start()
        yield
        if runner:
            await run_in_threadpool(runner.stop)
        store.stop_serving()

    app = FastAPI(
        title="Privacy-SF server",
        version="1",
        description="Stores code datasets, trains mapping networks on them and maps image codes to "
        "mask codes. It never receives a pixel, a mask, a decoder or a key.",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.store, app.state.runner = store, runner
    app.add_middleware(HeaderLimit, limit=cfg.max_header_bytes)
    add_error_handlers(app)

    def caller(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
        return store.authenticate(credentials.credentials if credentials else None)

    Center = Annotated[Caller, Depends(caller)]
    unauthorised: dict[int | str, dict[str, Any]] = {
        401: {"description": "missing, unknown or revoked token"}
    }

    @app.get("/health", response_model=Health, tags=["service"])
    def health() -> Health:
        """Liveness: the process answers (the only endpoint without a token)."""
        return Health(status="ok")

    @app.get("/ready", response_model=Readiness, tags=["service"], responses=unauthorised)
    def ready(_center: Center, response: Response) -> Readiness:
        """Readiness: the database answers, the store folder is writable and the job runner runs
        (when ``serve`` runs one; with ``--no-worker`` separate worker processes do)."""
        state = Readiness(
            database=_database_ok(store),
            store=os.access(store.files.root, os.W_OK),
            job_runner=runner is None or runner.alive,
        )
        if not all(state.model_dump().values()):
            response.status_code = 503
        return state

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_center: Center) -> dict:
        return app.openapi()

    @app.get("/me", response_model=CenterOut, tags=["centers"], responses=unauthorised)
    def me(center: Center) -> CenterOut:
        """The center this token belongs to (a client checks its login with it)."""
        return CenterOut(id=center.center_id, name=center.name, token_expires_at=center.token_expires_at)

    @app.post("/tokens/rotate", response_model=RotatedToken, tags=["centers"], responses=unauthorised)
    def rotate_token(center: Center) -> RotatedToken:
        """Replace this request's token: a new one of a full lifetime, while the old one keeps working
        for the server's grace period (a lost reply can be retried with it), then stops."""
        token_id, token, old_ends = store.rotate_token(center)
        expires = store.authenticate(token).token_expires_at
        return RotatedToken(id=token_id, token=token, expires_at=expires, previous_token_ends_at=old_ends)

    @app.post(
        "/datasets",
        response_model=DatasetOut,
        status_code=201,
        tags=["datasets"],
        openapi_extra=BINARY_BODY,
        responses={
            **unauthorised,
            400: {"description": "bad codes or checksum"},
            408: {"description": "the body stalled"},
            413: {"description": "too big"},
            503: {"description": "too many uploads at once; retry after Retry-After seconds"},
        },
    )
    async def upload_dataset(
        center: Center,
        request: Request,
        name: Annotated[Name, Query(description="a label for the dataset")],
        sha256: Annotated[str, Header(alias="X-Content-SHA256", description="SHA-256 of the body, hex")],
    ) -> DatasetOut:
        """Stream a dataset: train image, train mask, val image, val mask codes, four wire messages back
        to back. Stored only once complete, checksum-verified and valid."""
        refuse_declared_size(request, cfg.max_upload_bytes)
        async with uploads.slot(request):
            upload = store.dataset_upload(center, name, sha256)
            try:
                async for chunk in body_chunks(request, cfg.body_timeout_seconds):
                    upload.write(chunk)
            except BaseException:
                upload.abort()
                raise
            row = await run_in_threadpool(upload.commit)
        return _from_row(DatasetOut)(row)

    def list_and_get(
        kind: str, table: type[Row], out: type[BaseModel], show: Callable[[Row], BaseModel], about: str
    ) -> None:
        """``GET /<kind>s`` and ``GET /<kind>s/{<kind>_id}``: the rows of ``table`` the caller may see."""
        tags: list[str | Enum] = [f"{kind}s"]
        many = list[out]  # type: ignore[valid-type]  # a response model built per kind

        @app.get(
            f"/{kind}s",
            response_model=many,
            name=f"list_{kind}s",
            description=about,
            tags=tags,
            responses=unauthorised,
        )
        def list_rows(center: Center) -> list[BaseModel]:
            return [show(row) for row in store.visible_rows(table, center)]

        @app.get(
            f"/{kind}s/{{{kind}_id}}",
            response_model=out,
            name=f"get_{kind}",
            description=about,
            tags=tags,
            responses=unauthorised,
        )
        def get_row(center: Center, row_id: Annotated[Id, Path(alias=f"{kind}_id")]) -> BaseModel:
            return show(store.visible_row(table, center, row_id))

    list_and_get(
        "dataset", DatasetRow, DatasetOut, _from_row(DatasetOut), "Code datasets this center uploaded."
    )

    @app.delete(
        "/datasets/{dataset_id}",
        status_code=204,
        response_class=Response,
        tags=["datasets"],
        responses={**unauthorised, 409: {"description": "a queued or running job trains on it"}},
    )
    def delete_dataset(center: Center, dataset_id: Annotated[Id, Path()]) -> Response:
        """Delete one of this center's datasets: its codes' file is removed at once and it is no
        longer listed or usable. Models already trained on it stay, with what they learnt from the
        codes; a queued or running job on it must be cancelled first (409)."""
        store.delete_dataset(center, dataset_id)
        return Response(status_code=204)

    list_and_get(
        "job",
        JobRow,
        JobOut,
        lambda job: _job_out(store, job),
        "Training jobs of this center: status and progress (last finished epoch, best validation score).",
    )
    list_and_get(
        "model", ModelRow, ModelOut, _from_row(ModelOut), "Model versions trained on data of this center."
    )

    @app.get("/keys", response_model=list[KeysOut], tags=["keys"], responses=unauthorised)
    def list_keys(center: Center) -> list[KeysOut]:
        """Public CKKS evaluation keys this center registered for its encrypted queries."""
        return [_from_row(KeysOut)(row) for row in store.visible_rows(EvaluationKeyRow, center)]

    @app.put(
        "/keys/{key_id}",
        response_model=KeysOut,
        tags=["keys"],
        openapi_extra=BINARY_BODY,
        responses={
            **unauthorised,
            400: {"description": "not evaluation keys, or keys of another id"},
            408: {"description": "the body stalled"},
            409: {"description": "the same new keys sent twice at once"},
            413: {"description": "too big"},
            429: {"description": "the center holds as many sets of keys as the server keeps"},
            503: {"description": "too many uploads at once; retry after Retry-After seconds"},
        },
    )
    async def put_keys(center: Center, request: Request, key_id: Annotated[KeyId, Path()]) -> KeysOut:
        """Register this center's public CKKS evaluation keys (one ``PSFK`` message) under the id its
        encrypted queries carry, replacing any it registered under that id. They let the server map
        those queries and read none of them; the secret key is never sent."""
        refuse_declared_size(request, cfg.max_key_bytes)
        async with uploads.slot(request):  # up to max_key_bytes in memory each: as many at once as uploads
            body = await read_limited(request, cfg.max_key_bytes, cfg.body_timeout_seconds)
            row = await run_in_threadpool(store.keep_keys, center, key_id, body)
        return _from_row(KeysOut)(row)

    @app.post(
        "/jobs",
        response_model=JobOut,
        status_code=201,
        tags=["jobs"],
        responses={
            **unauthorised,
            400: {"description": "datasets of different code spaces, or codes past the job memory limit"},
            429: {"description": "too many queued jobs"},
        },
    )
    def create_job(center: Center, body: JobIn) -> JobOut:
        """Queue training of a mapping network on some of the center's datasets (whose codes must fit
        the server's memory limit for one job, ``max_job_training_bytes``)."""
        settings = {"train": body.train.model_dump(), "mapper": body.mapper.model_dump()}
        job = store.create_job(
            center,
            body.name,
            body.datasets,
            settings,
            cfg.max_queued_jobs_per_center,
            cfg.max_job_training_bytes,
        )
        return _job_out(store, job)

    @app.post(
        "/jobs/{job_id}/cancel",
        response_model=JobOut,
        tags=["jobs"],
        responses={**unauthorised, 409: {"description": "the job already ended"}},
    )
    def cancel_job(center: Center, job_id: Annotated[Id, Path()]) -> JobOut:
        """Cancel a job: a queued one at once, a running one after the epoch in flight."""
        store.visible_row(JobRow, center, job_id)
        store.cancel_job(job_id)
        return _job_out(store, store.visible_row(JobRow, center, job_id))

    @app.get("/jobs/{job_id}/log", response_model=list[LogLine], tags=["jobs"], responses=unauthorised)
    def job_log(center: Center, job_id: Annotated[Id, Path()]) -> list[LogLine]:
        store.visible_row(JobRow, center, job_id)
        return [LogLine(at=r.at, message=r.message) for r in store.job_log(job_id)]

    @app.post(
        "/models/{model_id}/map",
        tags=["models"],
        openapi_extra=BINARY_BODY,
        response_class=Response,
        responses={
            **unauthorised,
            200: {"content": {CODES: {"schema": {"type": "string", "format": "binary"}}}},
            400: {"description": "codes that do not fit the model"},
            408: {"description": "the body stalled"},
            413: {"description": "too many bytes or codes: split the batch"},
        },
    )
    async def map_codes(
        center: Center,
        request: Request,
        model_id: Annotated[Id, Path()],
        dtype: Annotated[WireDtype | None, Query(description="wire dtype of the reply")] = None,
    ) -> Response:
        """Image codes in (one wire message of at most ``max_map_codes`` codes), mask codes out, in the
        same order. Codes encrypted under the center's CKKS keys (a ``PSFE`` message of at most
        ``max_encrypted_codes``) are mapped as ciphertexts, with the evaluation keys it registered, by a
        model trained with ``mapper.kind=poly``; the reply is ciphertext only the center can read."""
        refuse_declared_size(request, cfg.max_map_bytes)
        row = store.visible_row(ModelRow, center, model_id)
        body = await read_limited(request, cfg.max_map_bytes, cfg.body_timeout_seconds)
        refuse_big_batch(body, cfg.max_map_codes, cfg.max_encrypted_codes)
        if is_encrypted(body):
            keys = store.evaluation_keys(center, EncryptedCodes.decode(body).key_id)
            mapper = await run_in_threadpool(cache.with_keys, row, keys)
        else:
            mapper = await run_in_threadpool(cache.get, row)
        deadline = time.monotonic() + cfg.map_seconds
        return Response(await run_in_threadpool(mapper.map, body, dtype, deadline=deadline), media_type=CODES)

    return app


def _database_ok(store: Store) -> bool:
    try:
        store.ping()
    except Exception:
        log.exception("database check failed")
        return False
    return True


def _from_row(out: type[Out]) -> Callable[[object], Out]:
    """``out`` read from a database row's attributes of the same names."""
    return lambda row: out.model_validate(row, from_attributes=True)


def _job_out(store: Store, job: JobRow) -> JobOut:
    datasets = [row.id for row in store.job_datasets(job.id)]
    fields = {name: getattr(job, name) for name in JobOut.model_fields if name != "datasets"}
    return JobOut.model_validate({**fields, "datasets": datasets})


def serve(cfg: ServiceConfig) -> None:
    """Run the service with uvicorn until interrupted (one process: SQLite and the job runner)."""
    import uvicorn

    # no WebSocket endpoints: ws="none" keeps uvicorn from loading the websockets package (which
    # Flower's uvicorn[standard] installs) and its deprecated legacy protocol
    uvicorn.run(
        create_app(cfg), host=cfg.host, port=cfg.port, log_level="info", ws="none", **uvicorn_options(cfg)
    )


__all__ = ["create_app", "serve"]
