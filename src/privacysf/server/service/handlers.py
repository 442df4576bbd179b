"""Answers for requests that fail: a client's error (the project's own exceptions, a body cut short,
a body that does not validate) as a 4xx with a ``detail``, and a bug as a 500.

FastAPI's own 422 echoes each offending input back, and cannot write it when the input is NaN or an
infinity (the JSON encoder refuses them), so a ``{"lr": NaN}`` became a 500; here a refusal quotes
only inputs that are plain JSON scalars. An unexpected exception is logged with its traceback and
answered with a 500 that says ``Connection: close``: the server drops the connection after a failed
request, and a keep-alive client that is told so opens a new one instead of reusing a dead one.
"""

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from privacysf.errors import (
    AuthError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    PrivacySFError,
    QuotaError,
)

log = logging.getLogger("privacysf.service")
QUOTED_INPUT_CHARS = 200
STATUS = {AuthError: 401, NotFoundError: 404, ConflictError: 409, PayloadTooLargeError: 413, QuotaError: 429}
"""The status of each client error the library raises; any other :class:`PrivacySFError` is a 400."""


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PrivacySFError, client_error)  # type: ignore[arg-type]
    app.add_exception_handler(ClientDisconnect, disconnected)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, internal_error)


async def client_error(_request: Request, exc: PrivacySFError) -> JSONResponse:
    status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 400)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


async def disconnected(_request: Request, _exc: ClientDisconnect) -> JSONResponse:
    return JSONResponse({"detail": "the client closed the connection before the body ended"}, 400)


async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each invalid field; every value in the body is JSON (no NaN, no objects)."""
    return JSONResponse({"detail": [_safe_error(error) for error in exc.errors()]}, status_code=422)


def _safe_error(error: dict) -> dict:
    """``loc``, ``msg`` and ``type`` of a pydantic error, and its input when that is a short scalar."""
    safe: dict[str, object] = {
        "loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
        "msg": str(error.get("msg", "")),
        "type": str(error.get("type", "")),
    }
    value = error.get("input")
    if isinstance(value, str):
        safe["input"] = value[:QUOTED_INPUT_CHARS]
    elif value is None or isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        safe["input"] = value
    return safe


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": "internal server error; the server's log has the details"},
        status_code=500,
        headers={"Connection": "close"},
    )
