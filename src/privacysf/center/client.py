"""The center's HTTP client of the Privacy-SF service (httpx).

It carries wire messages of codes, CKKS ciphertexts of codes with the public evaluation keys that
map them, and small JSON job settings, nothing else: the methods take ``bytes`` already encoded (and
encrypted) by the center, so no pixel, mask, decoder or secret key can reach the network through
here. A login (server URL and token) is kept in a profile file readable by its owner only.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from privacysf.common.runs import write_secret
from privacysf.errors import ConfigError, ServiceError, WireFormatError
from privacysf.exchange import (
    DATASET_PARTS,
    FORMAT_VERSION,
    CodeBatch,
    decode_codes,
    encode_codes,
    read_header,
    split_messages,
)
from privacysf.exchange.encrypted import EvaluationKeys, is_encrypted

CODES = "application/octet-stream"
CHUNK = 1024 * 1024
MAP_BATCH_CODES = 256
"""Most codes sent in one mapping request: within the server's default caps on codes per request
(``max_map_codes``) and on mapping time (``map_seconds``) for the default mapper."""
FINISHED = ("done", "failed", "cancelled")
UPLOAD_TRIES = 6
"""How often an upload refused for lack of a free upload slot (503 with Retry-After) is sent."""
LONGEST_RETRY_WAIT = 60.0


def default_profile() -> Path:
    return Path(os.environ.get("PRIVACYSF_PROFILE", Path.home() / ".config" / "privacysf" / "center.json"))


@dataclass
class Profile:
    url: str
    token: str

    def save(self, path: Path) -> None:
        write_secret(path, json.dumps({"url": self.url, "token": self.token}))

    @classmethod
    def load(cls, path: Path) -> Profile:
        if not path.is_file():
            raise ConfigError(f"no login at {path}; run `privacysf center login URL TOKEN` first")
        values = json.loads(path.read_text())
        return cls(values["url"], values["token"])


class ServiceClient:
    """One center's session with the service; every error comes back as a :class:`ServiceError`."""

    def __init__(self, url: str, token: str, transport: httpx.BaseTransport | None = None, timeout=120.0):
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            transport=transport,
            timeout=timeout,
        )

    @classmethod
    def from_profile(cls, path: Path | None = None) -> ServiceClient:
        profile = Profile.load(path or default_profile())
        return cls(profile.url, profile.token)

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(
                f"cannot reach the server at {self.url} ({exc}); is `privacysf server serve` running?"
            ) from None

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        return _checked(self._send(method, path, **kwargs))

    def me(self) -> dict[str, Any]:
        return self._request("GET", "/me").json()

    def rotate_token(self) -> dict[str, Any]:
        """Replace this client's token with a new one (``token``, ``expires_at``), used from now on;
        the server keeps the old one working for a grace period (``previous_token_ends_at``)."""
        rotated = self._request("POST", "/tokens/rotate").json()
        self.http.headers["Authorization"] = f"Bearer {rotated['token']}"
        return rotated

    def upload_dataset(self, name: str, payload: bytes) -> dict[str, Any]:
        """Stream a dataset bundle (four wire messages); the server checks the SHA-256 sent with it.

        A server receiving as many uploads as it takes answers 503 with Retry-After: the upload is sent
        again after that wait, up to ``UPLOAD_TRIES`` times in all. A server that reads no deflated
        codes (a release before wire format 2) gets the same values again, plain."""
        response = self._upload(name, payload)
        if _refuses_deflated(response):
            response = self._upload(name, as_plain(payload, len(DATASET_PARTS)))
        return _checked(response).json()

    def _upload(self, name: str, payload: bytes) -> httpx.Response:
        """The server's answer to ``payload``, sent again while it answers 503 with Retry-After."""

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(payload), CHUNK):
                yield payload[start : start + CHUNK]

        headers = {
            "Content-Type": CODES,
            "Content-Length": str(len(payload)),
            "X-Content-SHA256": hashlib.sha256(payload).hexdigest(),
        }

        def send() -> httpx.Response:
            return self._send("POST", "/datasets", params={"name": name}, content=chunks(), headers=headers)

        response = send()
        for _ in range(UPLOAD_TRIES - 1):
            wait = response.headers.get("Retry-After", "")
            if response.status_code != 503 or not wait.isdecimal():
                break
            time.sleep(min(int(wait), LONGEST_RETRY_WAIT))  # every upload slot is taken: come back
            response = send()
        return response

    def datasets(self) -> list[dict[str, Any]]:
        return self._request("GET", "/datasets").json()

    def delete_dataset(self, dataset_id: int) -> None:
        """Delete one of this center's datasets on the server (its codes' file goes at once)."""
        self._request("DELETE", f"/datasets/{dataset_id}")

    def start_job(self, dataset_ids: list[int], name: str = "mapper", **settings: dict) -> dict[str, Any]:
        """Queue training; ``settings`` holds optional ``train`` and ``mapper`` sections."""
        return self._request("POST", "/jobs", json={"datasets": dataset_ids, "name": name, **settings}).json()

    def job(self, job_id: int) -> dict[str, Any]:
        return self._request("GET", f"/jobs/{job_id}").json()

    def cancel_job(self, job_id: int) -> dict[str, Any]:
        return self._request("POST", f"/jobs/{job_id}/cancel").json()

    def job_log(self, job_id: int) -> list[dict[str, Any]]:
        return self._request("GET", f"/jobs/{job_id}/log").json()

    def wait_job(self, job_id: int, timeout: float = 3600.0, poll: float = 1.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (job := self.job(job_id))["status"] not in FINISHED:
            if time.monotonic() > deadline:
                raise ServiceError(f"job {job_id} is still {job['status']} after {timeout:.0f} s")
            time.sleep(poll)
        return job

    def models(self) -> list[dict[str, Any]]:
        return self._request("GET", "/models").json()

    def put_keys(self, message: bytes) -> dict[str, Any]:
        """Register the center's public CKKS evaluation keys (a ``PSFK`` message) for its encrypted
        queries; the server keeps them under the key id the message carries."""
        key_id = EvaluationKeys.decode(message).key_id
        headers = {"Content-Type": CODES}
        return self._request("PUT", f"/keys/{key_id}", content=message, headers=headers).json()

    def evaluation_keys(self) -> list[dict[str, Any]]:
        return self._request("GET", "/keys").json()

    def map(self, model_id: int, image_codes: bytes, dtype: str | None = None) -> bytes:
        """Mask codes for ``image_codes``, sent in requests of at most :data:`MAP_BATCH_CODES` codes
        (the server caps the codes of one request so that none holds it for long). Encrypted codes go
        as they are: the center encrypts one image per message."""
        if is_encrypted(image_codes) or read_header(image_codes).shape[0] <= MAP_BATCH_CODES:
            return self._map_request(model_id, image_codes, dtype)
        batch = decode_codes(image_codes)
        parts = [
            decode_codes(
                self._map_request(
                    model_id, encode_codes(part, batch.wire_dtype or "float32", batch.compression), dtype
                )
            )
            for part in _slices(batch, MAP_BATCH_CODES)
        ]
        tokens = np.concatenate([part.tokens for part in parts])
        reply = CodeBatch(tokens, parts[0].grid, parts[0].kind, scan=parts[0].scan)
        return encode_codes(reply, parts[0].wire_dtype or "float32", parts[0].compression)

    def _map_request(self, model_id: int, image_codes: bytes, dtype: str | None) -> bytes:
        params = {"dtype": dtype} if dtype else None
        headers = {"Content-Type": CODES}

        def send(body: bytes) -> httpx.Response:
            return self._send("POST", f"/models/{model_id}/map", content=body, params=params, headers=headers)

        response = send(image_codes)
        if _refuses_deflated(response):  # a server before wire format 2: the same values, plain
            response = send(as_plain(image_codes, 1))
        reply = _checked(response).content
        if not is_encrypted(image_codes):
            sent, got = read_header(image_codes).shape[0], read_header(reply).shape[0]
            if got != sent:  # told from the header, before a deflated reply is inflated
                raise WireFormatError(f"the server replied with {got} mask codes to a query of {sent}")
        return reply

    def mapper(self, model_id: int) -> RemoteMapper:
        return RemoteMapper(self, model_id)


def _refuses_deflated(response: httpx.Response) -> bool:
    """Whether a server refused a request because it reads no deflated codes: its message for a
    version it does not know (every release words it so)."""
    return response.status_code == 400 and f"code format version {FORMAT_VERSION} is not" in response.text


def as_plain(payload: bytes, count: int) -> bytes:
    """``count`` wire messages sent back to back, each again as version 1 (values not deflated): the
    same values, which any release reads."""
    return b"".join(
        encode_codes(batch, batch.wire_dtype or "float32")
        for batch in map(decode_codes, split_messages(payload, count))
    )


def _checked(response: httpx.Response) -> httpx.Response:
    """``response``, or a :class:`ServiceError` with the server's ``detail`` when it is a refusal."""
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ServiceError(f"the server answered {response.status_code}: {detail}")
    return response


def _slices(batch: CodeBatch, size: int) -> Iterator[CodeBatch]:
    """``batch`` in consecutive parts of at most ``size`` codes (same grid, kind and scan order)."""
    for start in range(0, batch.shape[0], size):
        yield CodeBatch(batch.tokens[start : start + size], batch.grid, batch.kind, scan=batch.scan)


@dataclass
class RemoteMapper:
    """A served model, usable wherever the center's workflow takes a mapping server."""

    client: ServiceClient
    model_id: int

    def map(self, image_codes: bytes) -> bytes:
        return self.client.map(self.model_id, image_codes)

    def key_ids(self) -> set[str]:
        """Ids of the evaluation keys the server holds for this center (for any of its models)."""
        return {keys["key_id"] for keys in self.client.evaluation_keys()}

    def register_keys(self, message: bytes) -> str:
        return self.client.put_keys(message)["key_id"]
