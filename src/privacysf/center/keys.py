"""The center's secret key and the keyed transform of its codes.

A key is 32 random bytes created on the center and stored only in its own folder (``center/key.json``,
readable by the owner alone). Everything the transform needs is derived from it on the fly, so no
matrix or permutation is ever written next to anything the server holds:

- **channel mixing**: each token is multiplied by a secret orthogonal matrix (one for image codes, one
  for mask codes), then scaled by the matrix's largest absolute row sum so keyed codes stay inside
  [-1, 1] and still quantise to int8;
- **token permutation** (optional): token positions are shuffled by a secret permutation shared by
  image and mask codes, so pairs stay aligned but the server cannot tell which grid cell a token
  came from. Only an order-blind mapper (the transformer) can learn through it.

The transform is linear and fixed. It hides the code space from someone who has no pairs, not from an
attacker holding enough leaked (image, code) pairs: see docs/threat-model.md for the figures.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privacysf.common.runs import SECRET_FILE_MODE, read_secret, write_secret
from privacysf.config import KeyConfig
from privacysf.errors import ConfigError
from privacysf.exchange.wire import KEYED_SCAN, SCAN_ORDER

KEY_BYTES = 32
KEY_FILE_MODE = SECRET_FILE_MODE  # owner read/write only: the key never leaves the center


@dataclass(frozen=True)
class CenterKey:
    """A center's secret: 32 random bytes from the operating system's CSPRNG."""

    secret: bytes

    @classmethod
    def create(cls) -> CenterKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    def rng(self, purpose: str) -> np.random.Generator:
        """A generator seeded from the secret and a purpose, so each derived part is independent."""
        digest = hashlib.sha256(self.secret + purpose.encode()).digest()
        return np.random.default_rng(int.from_bytes(digest, "little"))

    def save(self, path: Path) -> None:
        """Write the key readable by its owner only (``KEY_FILE_MODE``, see ``write_secret``)."""
        write_secret(path, json.dumps({"version": 1, "secret": self.secret.hex()}))

    @classmethod
    def load(cls, path: Path) -> CenterKey:
        record = read_secret(
            path,
            "center key",
            "this run encodes with a secret key and cannot be used without it (keys are never "
            "recoverable from anything the server holds)",
        )
        try:
            secret = bytes.fromhex(record["secret"])
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"center key {path} is malformed") from None
        if len(secret) != KEY_BYTES:
            raise ConfigError(f"center key {path} holds {len(secret)} bytes, expected {KEY_BYTES}")
        return cls(secret)


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A uniformly random orthogonal matrix (QR of a Gaussian matrix with the sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


class KeyedTransform:
    """The keyed transform of (N, L, C) token arrays and its exact inverse, for one center."""

    def __init__(self, key: CenterKey, cfg: KeyConfig, tokens: int, channels: dict[str, int]) -> None:
        self.cfg = cfg
        self.scan = KEYED_SCAN if cfg.permute_tokens else SCAN_ORDER
        self.mixing: dict[str, tuple[np.ndarray, float]] = {}
        for kind, n in channels.items():
            q = (
                _orthogonal(key.rng(f"mix/{kind}/{n}"), n)
                if cfg.mix_channels
                else np.eye(n, dtype=np.float32)
            )
            self.mixing[kind] = (q, float(np.abs(q).sum(axis=0).max()))
        self.permutation = (
            key.rng(f"permute/{tokens}").permutation(tokens) if cfg.permute_tokens else np.arange(tokens)
        )
        self.inverse_permutation = np.argsort(self.permutation)

    def forward(self, tokens: np.ndarray, kind: str) -> np.ndarray:
        """Plain codes -> keyed codes (what is sent)."""
        q, scale = self.mixing[kind]
        return (tokens[:, self.permutation] @ q) / scale

    def inverse(self, tokens: np.ndarray, kind: str) -> np.ndarray:
        """Keyed codes -> plain codes (what the center's decoder reads)."""
        q, scale = self.mixing[kind]
        return ((tokens * scale) @ q.T)[:, self.inverse_permutation]
