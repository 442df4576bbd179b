"""The server as a web service (FastAPI): the store, job runner and mapper behind an HTTP API."""

from privacysf.server.service.app import create_app

__all__ = ["create_app"]
