"""Answers for requests that fail outside the endpoints' own checks: a body that does not validate, and
a bug.

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

log = logging.getLogger("privacysf.service")
QUOTED_INPUT_CHARS = 200


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, internal_error)


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
