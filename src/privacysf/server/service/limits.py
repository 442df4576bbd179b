"""Bounds on what one request may hold: its head, its body's size and pace, upload slots and codes.

uvicorn bounds the head's size (with the h11 parser, whose limit it exposes) and idle connections;
:class:`IdleClosingH11Protocol` adds a deadline for the whole head. uvicorn has no read timeout for a
body: :func:`body_chunks` puts one on every read, so a client that stops sending
is answered 408 and whatever it had started (an upload's temporary file) is cleaned up by the caller.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import h11
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from privacysf.errors import PayloadTooLargeError
from privacysf.exchange import read_header
from privacysf.exchange.encrypted import EncryptedCodes, is_encrypted
from privacysf.server.settings import ServiceConfig

RETRY_AFTER_SECONDS = 5
"""What a client refused for lack of an upload slot is told to wait before trying again."""
DRAIN_BYTES = 64 * 1024
"""A refused request's body is read first up to this size (see :meth:`UploadGate.slot`)."""
DRAIN_SECONDS = 1.0
"""How long a refused request's body is awaited per chunk before the 503 goes out anyway."""


class UploadGate:
    """At most ``limit`` uploads in progress; one more is refused at once rather than queued.

    Refusing (503 with Retry-After) keeps a burst of uploads from holding connections, temporary files
    and commit threads; the center's client retries later. Used from the event loop only, so a plain
    counter needs no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.active = limit, 0

    @asynccontextmanager
    async def slot(self, request: Request) -> AsyncIterator[None]:
        """One upload slot for ``request`` while the block runs, or 503 with Retry-After when all are
        taken. A refused body of at most :data:`DRAIN_BYTES` is read first: a socket closed with the
        client's bytes unread is reset by TCP, and the reset can destroy the 503 before the client
        reads it (the client then sees a dropped connection, not Retry-After)."""
        if self.active >= self.limit:
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) <= DRAIN_BYTES:
                with suppress(HTTPException):  # a client that stalls is refused all the same
                    async for _ in body_chunks(request, DRAIN_SECONDS):
                        pass
            raise HTTPException(  # even if a slot freed meanwhile: this body is already read
                503,
                detail=f"this server already receives {self.limit} uploads at once; "
                f"retry in {RETRY_AFTER_SECONDS} s",
                # closed, not kept alive: the client comes back after Retry-After, about when the server's
                # idle timeout closes a kept connection, and a request sent as it closes is lost
                headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Connection": "close"},
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


def refuse_declared_size(request: Request, limit: int) -> None:
    """413 before reading a byte when the declared ``Content-Length`` already passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"the request body of {declared} bytes exceeds this server's limit of {limit}"
        )


async def body_chunks(request: Request, timeout: float) -> AsyncIterator[bytes]:
    """The body's chunks, each awaited at most ``timeout`` seconds (408 when the client stalls)."""
    chunks = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), timeout)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise HTTPException(
                408,
                detail=f"no part of the request body arrived for {timeout:g} s; send it again",
                headers={"Connection": "close"},
            ) from None
        yield chunk


async def read_limited(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` (never buffered beyond it)."""
    parts, size = [], 0
    async for chunk in body_chunks(request, timeout):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"the request body exceeds this server's limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def refuse_big_batch(body: bytes, max_codes: int, max_encrypted: int) -> None:
    """413 for a mapping batch of more than ``max_codes`` codes (``max_encrypted`` when they are
    encrypted), told from its header before any work.

    Mapping time grows with the codes, so a cap on codes is a cap on how long a request holds a worker.
    """
    if is_encrypted(body):
        codes, max_codes = len(EncryptedCodes.decode(body).ciphertexts), max_encrypted
    else:
        codes = read_header(body).shape[0]
    if codes > max_codes:
        raise PayloadTooLargeError(
            f"the batch holds {codes} codes, this server maps at most {max_codes} per request; "
            "split the batch into several requests"
        )


class IdleClosingH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with two more timers: idle before the first request, and a whole-head
    deadline.

    uvicorn starts its idle timer only after a response, so a client that connects and sends nothing
    would hold its connection (and a file descriptor) for ever. And every byte received stops that
    timer, while uvicorn has no timeout for a request head: a client sending its head a byte at a time
    would be held for ever too. Here the first byte received while no request is being answered starts
    a deadline of ``header_timeout`` seconds, cleared when a complete head starts a request; past it
    the connection is answered 408 (when no answer was started) and closed. The same deadline ends a
    client that keeps trickling the rest of a body the server has already answered.
    """

    header_timeout: float = 10.0
    head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def data_received(self, data: bytes) -> None:
        answering = self.cycle is not None and not self.cycle.response_complete
        if self.head_deadline is None and not answering:
            self.head_deadline = self.loop.call_later(self.header_timeout, self._head_too_slow)
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:  # a head started a request
            self._clear_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._clear_head_deadline()
        super().connection_lost(exc)

    def _clear_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _head_too_slow(self) -> None:
        self.head_deadline = None
        if self.transport.is_closing():
            return
        if self.conn.our_state is h11.IDLE:  # nothing answered yet on this request
            detail = f"the request head did not arrive within {self.header_timeout:g} s"
            body = json.dumps({"detail": detail}).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            self.transport.write(self.conn.send(h11.Response(status_code=408, headers=headers)))
            self.transport.write(self.conn.send(h11.Data(data=body)) or b"")
            self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
        self.transport.close()


def protocol(cfg: ServiceConfig) -> type[IdleClosingH11Protocol]:
    """:class:`IdleClosingH11Protocol` with ``cfg``'s head deadline (uvicorn builds the instances)."""
    deadline = {"header_timeout": cfg.header_timeout_seconds}
    return type("ServiceH11Protocol", (IdleClosingH11Protocol,), deadline)


def uvicorn_options(cfg: ServiceConfig) -> dict[str, Any]:
    """uvicorn's settings for the service's bounds: head size and time, idle time, connections in
    progress.

    The h11 parser is chosen because it bounds the request head (httptools, uvicorn's default when
    installed, reads any size of header).
    """
    return {
        "http": protocol(cfg),
        "h11_max_incomplete_event_size": cfg.max_header_bytes,
        "timeout_keep_alive": cfg.idle_timeout_seconds,
        "limit_concurrency": cfg.max_connections,
    }


class HeaderLimit:
    """ASGI middleware: 431 for a request whose headers together pass ``limit`` bytes.

    h11's limit (:func:`uvicorn_options`) bounds only a head still arriving, so a head that comes in
    one read may pass it; this makes the same bound a rule for every request, before any handler runs.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and sum(len(k) + len(v) for k, v in scope["headers"]) > self.limit:
            detail = f"the request's headers exceed this server's limit of {self.limit} bytes"
            await JSONResponse({"detail": detail}, 431)(scope, receive, send)
            return
        await self.app(scope, receive, send)
