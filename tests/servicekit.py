"""Helpers of the service tests: an in-process server, and (from the bench, which needs them too) code
datasets made of random codes and a real server process."""

from __future__ import annotations

import threading
import time

import httpx

from privacysf.benchmark.service_process import (  # noqa: F401 (re-exported to the service tests)
    GRID,
    TINY_MAPPER,
    TINY_TRAIN,
    ServerProcess,
    bundle,
    codes,
    free_port,
    sha,
)
from privacysf.server.store import Caller, Store
from privacysf.server.tables import DatasetRow


def stored_dataset(store: Store, caller: Caller, payload: bytes) -> DatasetRow:
    """``payload`` uploaded to ``store`` by ``caller`` as the service takes an upload: written,
    checked, kept and recorded (the store's side of ``POST /datasets``, without HTTP)."""
    upload = store.dataset_upload(caller, "codes", sha(payload))
    upload.write(payload)
    return upload.commit()


class LoopbackServer:
    """An app served by uvicorn in a thread of the test process: real HTTP, in-process state."""

    def __init__(self, app, **options) -> None:
        """``options`` are more uvicorn settings (the service's bounds: ``uvicorn_options(cfg)``)."""
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", ws="none", **options
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class RecordingTransport(httpx.BaseTransport):
    """An httpx transport that keeps each request (method, path, content type, body) it forwards."""

    def __init__(self):
        self.inner = httpx.HTTPTransport()
        self.sent: list[tuple[str, str, str, bytes]] = []

    def handle_request(self, request):
        body = request.read()
        self.sent.append((request.method, request.url.path, request.headers.get("content-type", ""), body))
        return self.inner.handle_request(request)

    def close(self):
        self.inner.close()
