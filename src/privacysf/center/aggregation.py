"""The centers' side of masked federated averaging: the federation secret, the pads, mask and unmask.

FedAvg of codecs must not leave a working mask decoder with the server. The centers of a federation
share one secret of 32 random bytes (``privacysf federation-secret PATH`` makes it; it travels to the
centers out of band and its path is ``federation.secret_file``). In each round a center uploads
``fixed(n · w) + pad`` modulo 2^32 (:mod:`privacysf.exchange.masking`), the pad drawn by SHAKE-256 from
the secret, the run id, the round, a fresh nonce of this upload and the array's name. The nonce and
``n`` travel in the clear. The server only adds; a center recomputes the pads of the nonces it
summed, subtracts them, and divides by the total count. Integer arithmetic makes the result the same
bits at every center.

All centers hold the same secret, so this protects the weights from the server alone, not from a
center that colludes with it (docs/threat-model.md).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from privacysf.config import FederationConfig
from privacysf.errors import ConfigError
from privacysf.exchange import flower, masking

SECRET_BYTES = 32
SECRET_FILE_MODE = 0o600
"""Owner read/write only: the server must never be able to read the federation secret."""
NONCE_BYTES = 16
PAD_DOMAIN = b"privacysf masked fedavg v1"


def secret_path(fed: FederationConfig) -> Path:
    """``federation.secret_file``, refusing to go on without one (masking has no clear fallback)."""
    if not fed.secret_file:
        raise ConfigError(
            "mode fedavg-codecs averages codecs under masks only the centers can remove, and no "
            "federation secret is configured: make one with `privacysf federation-secret PATH`, copy it "
            "to every center out of band, and set federation.secret_file=PATH (or leave fedavg-codecs "
            "out of --modes)"
        )
    return Path(fed.secret_file)


@dataclass(frozen=True)
class FederationSecret:
    """The 32 bytes every center of one federation holds and the server never does."""

    secret: bytes = field(repr=False)  # never in a log line or a test failure's report

    @staticmethod
    def create(path: Path) -> None:
        """Write a fresh secret readable by its owner only, never over an existing file.

        ``O_EXCL`` makes the refusal atomic, and the file is born with mode 0600 (a umask can only take
        bits away), so the secret never sits in a file others can read.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
        except FileExistsError:
            raise ConfigError(
                f"{path} already exists; a federation secret is never overwritten (centers holding the old "
                "one could no longer unmask): choose a new path, or delete the old file first"
            ) from None
        with os.fdopen(fd, "wb") as file:
            file.write(secrets.token_bytes(SECRET_BYTES))

    @classmethod
    def load(cls, fed: FederationConfig) -> FederationSecret:
        path = secret_path(fed)
        if not path.is_file():
            raise ConfigError(
                f"federation.secret_file {path} does not exist here; copy the file that "
                "`privacysf federation-secret` made to every center at this path"
            )
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"federation secret {path} is readable by others (mode {mode:o}); chmod 600 {path}"
            )
        secret = path.read_bytes()
        if len(secret) != SECRET_BYTES:
            raise ConfigError(
                f"federation secret {path} holds {len(secret)} bytes, expected {SECRET_BYTES}: "
                "make it with `privacysf federation-secret`"
            )
        return cls(secret)

    def pad(self, run_id: int, round_: int, nonce: bytes, name: str, size: int) -> np.ndarray:
        """``size`` pseudo-random uint32 from SHAKE-256 over the length-framed inputs."""
        shake = hashlib.shake_256()
        parts = (PAD_DOMAIN, self.secret, run_id.to_bytes(8, "little"), round_.to_bytes(8, "little"))
        for part in (*parts, nonce, name.encode()):
            shake.update(len(part).to_bytes(4, "little") + part)
        return np.frombuffer(shake.digest(4 * size), "<u4").astype(np.uint32)

    def pads(self, run_id: int, round_: int, nonces: tuple[bytes, ...], name: str, size: int) -> np.ndarray:
        """The sum modulo 2^32 of the pads of ``nonces``: what the masked sum of their uploads carries."""
        total = np.zeros(size, np.uint32)
        for nonce in nonces:
            total += self.pad(run_id, round_, nonce, name, size)
        return total


def mask_weights(
    parts: dict[str, dict[str, torch.Tensor]],
    examples: int,
    task: ConfigRecord,
    secret: FederationSecret,
    run_id: int,
) -> dict[str, ArrayRecord | ConfigRecord]:
    """A masked round's upload: ``weights`` (uint32 ``fixed(examples · w) + pad``) and ``mask`` (the nonce).

    ``task`` is the round's task record from the server: its ``round`` and ``centers`` (how many add
    into the sum, which sets each center's share of the fixed-point range).
    """
    round_, centers = flower.field(task, "round", int), flower.field(task, "centers", int)
    nonce = secrets.token_bytes(NONCE_BYTES)
    masked = {}
    for name, array in flower.weights_record(parts).items():
        fixed = masking.to_fixed(array.numpy().astype(np.float64) * examples, centers, name)
        pad = secret.pad(run_id, round_, nonce, name, fixed.size).reshape(fixed.shape)
        masked[name] = Array(np.asarray(fixed + pad))  # a 0-d sum is a numpy scalar, not an array
    return {"weights": ArrayRecord(masked), masking.MASK: ConfigRecord({"nonce": nonce})}


def unmask(
    content: RecordDict, name: str, secret: FederationSecret, run_id: int
) -> dict[str, dict[str, torch.Tensor]] | None:
    """The weighted average behind the masked sum ``content`` carries as ``name`` (None if it has none).

    Every center gets the same float32 bits: the integer sum is exact and the division is the same.
    """
    total = masking.MaskedSum.from_records(content, name)
    if total is None:
        return None
    averaged = {}
    for key in total.arrays:
        masked = masking.uint32_array(total.arrays, key)
        pads = secret.pads(run_id, total.round, total.nonces, key, masked.size).reshape(masked.shape)
        mean = masking.from_fixed(masked - pads) / total.examples
        averaged[key] = Array(np.asarray(mean, dtype=np.float32))
    return flower.record_weights(ArrayRecord(averaged))
