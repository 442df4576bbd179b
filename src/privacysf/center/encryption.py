"""The center's CKKS keys: it encrypts its queries' codes and alone can decrypt the replies.

A :class:`QueryEncryption` is made on the center and saved in its folder only
(``center/ckks_secret.bin``, readable by the owner alone, like the keyed transform's key). The
server receives :meth:`QueryEncryption.evaluation_keys`, which carry relinearisation and Galois keys
and no secret: with them it can add, multiply and rotate ciphertexts, never read one. Keys are
generated for the rotations one configured mapper needs (``privacysf.exchange.encrypted.rotation_steps``)
and no others.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import numpy as np
import tenseal.sealapi as seal

from privacysf.common.runs import read_secret, write_secret
from privacysf.errors import ConfigError, WireFormatError
from privacysf.exchange.encrypted import (
    CkksParameters,
    EncryptedCodes,
    EvaluationKeys,
    channels_per_ciphertext,
    galois_elements,
    load_bytes,
    pack,
    rotation_steps,
    save_bytes,
    unpack,
)
from privacysf.exchange.wire import SCAN_ORDER


class QueryEncryption:
    """One center's CKKS secret key, with what it encrypts and decrypts for codes on ``grid``."""

    def __init__(
        self,
        params: CkksParameters,
        grid: tuple[int, int],
        kernel: int,
        key_id: str,
        secret_key: seal.SecretKey,
        public_key: seal.PublicKey,
    ) -> None:
        self.params, self.grid, self.kernel, self.key_id = params, grid, kernel, key_id
        self.tokens = grid[0] * grid[1]
        self.per_ciphertext = channels_per_ciphertext(params, self.tokens)
        context = params.context()
        self._secret_key, self._public_key = secret_key, public_key
        self._encoder = seal.CKKSEncoder(context)
        self._encryptor = seal.Encryptor(context, public_key)
        self._decryptor = seal.Decryptor(context, secret_key)

    @classmethod
    def create(cls, grid: tuple[int, int], kernel: int) -> QueryEncryption:
        """Fresh keys (SEAL's CSPRNG) for codes on ``grid`` and a mapper of ``kernel``-wide convolutions."""
        params = CkksParameters.for_tokens(grid[0] * grid[1])
        generator = seal.KeyGenerator(params.context())
        public = seal.PublicKey()
        generator.create_public_key(public)
        return cls(params, grid, kernel, secrets.token_hex(8), generator.secret_key(), public)

    def evaluation_keys(self) -> EvaluationKeys:
        """The public keys a server needs to map this center's ciphertexts (made afresh: ~90 MB at 128²)."""
        context = self.params.context()
        generator = seal.KeyGenerator(context, self._secret_key)
        relin, galois = seal.RelinKeys(), seal.GaloisKeys()
        generator.create_relin_keys(relin)
        steps = rotation_steps(self.grid, self.per_ciphertext, self.kernel)
        generator.create_galois_keys(galois_elements(steps, self.params.degree), galois)
        return EvaluationKeys(self.key_id, self.params, steps, save_bytes(relin), save_bytes(galois))

    def encrypt(self, tokens: np.ndarray, kind: str, scan: str = SCAN_ORDER) -> bytes:
        """(N, L, C) codes -> one ``PSFE`` message of their ciphertexts under this center's public key."""
        context = self.params.context()
        codes = []
        for code in tokens:
            blobs = []
            for vector in pack(code, self.per_ciphertext, self.params.slots):
                plain, cipher = seal.Plaintext(), seal.Ciphertext()
                self._encoder.encode(vector.tolist(), context.first_parms_id(), self.params.scale, plain)
                self._encryptor.encrypt(plain, cipher)
                blobs.append(save_bytes(cipher))
            codes.append(blobs)
        return EncryptedCodes(codes, kind, self.key_id, self.grid, tokens.shape[2], scan).encode()

    def decrypt(self, message: bytes, expect_kind: str = "mask") -> np.ndarray:
        """A ``PSFE`` reply -> (N, L, C) float32 codes, clipped to the codes' range [-1, 1]."""
        encrypted = EncryptedCodes.decode(message, expect_kind)
        if encrypted.key_id != self.key_id or encrypted.grid != self.grid:
            raise WireFormatError(
                f"encrypted codes under key {encrypted.key_id} on a {encrypted.grid} grid cannot be "
                f"decrypted with key {self.key_id} ({self.grid} grid)"
            )
        context, codes = self.params.context(), []
        for blobs in encrypted.ciphertexts:
            vectors = []
            for blob in blobs:
                cipher = load_bytes(seal.Ciphertext, context, blob, "an encrypted code")
                plain = seal.Plaintext()
                self._decryptor.decrypt(cipher, plain)
                vectors.append(np.asarray(self._encoder.decode_double(plain)))
            codes.append(unpack(vectors, self.tokens, encrypted.channels, self.per_ciphertext))
        return np.clip(np.stack(codes), -1.0, 1.0)

    def save(self, path: Path) -> None:
        """Write the secret and public keys readable by the owner only (``write_secret``)."""
        record = {
            "version": 1,
            "key_id": self.key_id,
            "params": self.params.to_dict(),
            "grid": list(self.grid),
            "kernel": self.kernel,
            "secret_key": save_bytes(self._secret_key).hex(),
            "public_key": save_bytes(self._public_key).hex(),
        }

        write_secret(path, json.dumps(record))

    @classmethod
    def load(cls, path: Path) -> QueryEncryption:
        record = read_secret(
            path,
            "CKKS key",
            "this run encrypts its queries and cannot decrypt a reply without it (nothing the server "
            "holds can recover it)",
        )
        try:
            p = record["params"]
            params = CkksParameters(p["degree"], tuple(p["moduli_bits"]), p["scale_bits"])
            context = params.context()
            secret = load_bytes(
                seal.SecretKey, context, bytes.fromhex(record["secret_key"]), "the secret key"
            )
            public = load_bytes(
                seal.PublicKey, context, bytes.fromhex(record["public_key"]), "the public key"
            )
            grid = (int(record["grid"][0]), int(record["grid"][1]))
            return cls(params, grid, int(record["kernel"]), str(record["key_id"]), secret, public)
        except (ValueError, KeyError, TypeError, WireFormatError) as exc:
            raise ConfigError(f"CKKS key {path} is malformed ({exc})") from None
