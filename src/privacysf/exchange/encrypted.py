"""Encrypted codes on the wire: CKKS ciphertexts of codes, and the public keys a server evaluates with.

With ``encryption.enabled`` a center sends each query's image code as CKKS ciphertexts (Microsoft SEAL
through TenSEAL's ``sealapi``) and receives the mask code as ciphertexts only it can decrypt. This
module is what both sides agree on, and nothing secret:

- :class:`CkksParameters`: ring degree, modulus chain and scale, fixed per grid so both sides build
  the same SEAL context without negotiating;
- the packing: a code of C channels over L tokens goes 4 channels (fewer when 4·L exceeds the
  slots) per ciphertext, channel after channel, each in raster token order, repeated to fill the
  slots (:func:`pack` / :func:`unpack`);
- the rotation steps a ``kernel``-wide convolution over that packing needs (:func:`rotation_steps`):
  the center makes Galois keys for exactly these;
- two message formats, laid out like the plain wire format (``privacysf.exchange.wire``)::

      b"PSFE" | uint16 version | uint32 header length | header (UTF-8 JSON) | ciphertexts
      b"PSFK" | uint16 version | uint32 header length | header (UTF-8 JSON) | relin keys | Galois keys

  ``PSFE`` carries codes (``kind``, ``key_id``, ``codes``, ``grid``, ``channels``, ``scan`` and the
  byte size of each ciphertext); ``PSFK`` carries a center's public evaluation keys under its
  ``key_id``. A secret key has no message format: it cannot be sent.

SEAL checks every ciphertext and key it loads against the context, so malformed or foreign bytes are
refused with a :class:`WireFormatError` before anything is evaluated.
"""

from __future__ import annotations

import json
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from privacysf.errors import WireFormatError

CODES_MAGIC = b"PSFE"
KEYS_MAGIC = b"PSFK"
FORMAT_VERSION = 1
PREFIX = struct.Struct("<4sHI")
MAX_HEADER_BYTES = 1024 * 1024
CODE_FIELDS = frozenset({"version", "kind", "key_id", "codes", "grid", "channels", "scan", "sizes"})
KEY_FIELDS = frozenset({"version", "key_id", "params", "steps", "sizes"})


SETTINGS = ((8192, (50, 35, 35, 35, 50)), (16384, (60, 40, 40, 40, 60)))
"""The only CKKS settings (ring degree, prime sizes) messages may name: those ``for_tokens`` picks.
A message naming another is refused before SEAL sees it, so a sender can neither make SEAL fail
nor have the server build and keep contexts of its choosing."""


@dataclass(frozen=True)
class CkksParameters:
    """A CKKS setting: ring ``degree`` (slots = degree / 2), prime sizes in bits, scale 2^``scale_bits``.

    The default chain holds three rescalings (convolution, square, convolution: the poly mapper's
    depth) between a 50-bit first prime, which bounds the decrypted values' magnitude to
    2^(50 - 35), and a 50-bit special prime; 205 bits at degree 8,192 stays within SEAL's 218-bit
    bound for 128-bit security.
    """

    degree: int = 8192
    moduli_bits: tuple[int, ...] = (50, 35, 35, 35, 50)
    scale_bits: int = 35

    @property
    def slots(self) -> int:
        return self.degree // 2

    @property
    def scale(self) -> float:
        return 2.0**self.scale_bits

    @classmethod
    def for_tokens(cls, tokens: int) -> CkksParameters:
        """The setting for codes of ``tokens`` tokens: the smallest ring whose slots hold one channel.

        Channels are packed in blocks repeated to fill the slots, and a rotation by a multiple of the
        token count moves whole channels only if the block's length divides the slot count, so the
        token count must divide it (a power-of-two grid).
        """
        for degree, chain in SETTINGS:
            if (degree // 2) % tokens == 0:
                return cls(degree, chain, chain[1])
        raise WireFormatError(
            f"encrypted queries pack codes of {tokens} tokens into CKKS slots, which needs a token count "
            "that divides 8,192: a power-of-two token grid (data.size / codec.downsample a power of two, "
            "at most 64x64 tokens)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"degree": self.degree, "moduli_bits": list(self.moduli_bits), "scale_bits": self.scale_bits}

    def context(self) -> seal.SEALContext:
        return _context(self.degree, self.moduli_bits)


@cache
def _context(degree: int, moduli_bits: tuple[int, ...]) -> seal.SEALContext:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(degree)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(degree, list(moduli_bits)))
    return seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)


CHANNELS_PER_CIPHERTEXT = 4
"""Most channels one ciphertext holds. A convolution rotates each input ciphertext once per channel
it holds and neighbour offset, so packing more channels than a code has (4 image channels) would add
rotations, the costly operation, to save plaintext products, the cheap one."""


def channels_per_ciphertext(params: CkksParameters, tokens: int) -> int:
    return min(params.slots // tokens, CHANNELS_PER_CIPHERTEXT)


def pack(code: np.ndarray, per_ciphertext: int, slots: int) -> list[np.ndarray]:
    """One (L, C) code as slot vectors: ``per_ciphertext`` channels each, channel-major, zero-filled,
    repeated to fill the slots, so a rotation of the vector is a rotation within one repeat."""
    channels = code.shape[1]
    padded = np.zeros((code.shape[0], -(-channels // per_ciphertext) * per_ciphertext), np.float64)
    padded[:, :channels] = code
    blocks = range(0, padded.shape[1], per_ciphertext)
    return [tile(padded[:, i : i + per_ciphertext].T.reshape(-1), slots) for i in blocks]


def tile(vector: np.ndarray, slots: int) -> np.ndarray:
    """``vector`` repeated to ``slots`` values (its length divides ``slots``)."""
    return np.tile(vector, slots // len(vector))


def unpack(vectors: list[np.ndarray], tokens: int, channels: int, per_ciphertext: int) -> np.ndarray:
    """The (L, C) code held by slot vectors packed by :func:`pack`."""
    blocks = [np.asarray(v)[: per_ciphertext * tokens].reshape(per_ciphertext, tokens) for v in vectors]
    return np.concatenate(blocks)[:channels].T.astype(np.float32)


def rotation_steps(grid: tuple[int, int], per_ciphertext: int, kernel: int) -> list[int]:
    """Left rotations a ``kernel``-wide convolution over packed codes needs: each neighbour offset
    (row and column within the kernel) plus each shift by whole channels of the block, taken within
    one repeat of the packing."""
    tokens, half = grid[0] * grid[1], kernel // 2
    steps = {
        (block * tokens + dy * grid[1] + dx) % (per_ciphertext * tokens)
        for block in range(per_ciphertext)
        for dy in range(-half, half + 1)
        for dx in range(-half, half + 1)
    }
    return sorted(steps - {0})


def galois_elements(steps: list[int], degree: int) -> list[int]:
    """SEAL's Galois element of each left rotation (3^step mod 2·degree): keys are made from these."""
    return [pow(3, step, 2 * degree) for step in steps]


def save_bytes(item: Any) -> bytes:
    """A SEAL object's own serialisation (compressed), as bytes."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "item"
        item.save(str(path))
        return path.read_bytes()


def load_bytes(factory: Callable[[], Any], context: seal.SEALContext, data: bytes, what: str) -> Any:
    """A SEAL object read from ``data`` and checked against ``context`` by SEAL itself."""
    item = factory()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "item"
        path.write_bytes(data)
        try:
            item.load(context, str(path))
        except (RuntimeError, ValueError) as exc:
            raise WireFormatError(f"{what} is not valid for these CKKS parameters ({exc})") from None
    return item


@dataclass
class EncryptedCodes:
    """Codes as ciphertexts: ``ciphertexts[i]`` are the serialised ciphertexts of code ``i``."""

    ciphertexts: list[list[bytes]]
    kind: str
    key_id: str
    grid: tuple[int, int]
    channels: int
    scan: str

    def encode(self) -> bytes:
        blobs = [blob for code in self.ciphertexts for blob in code]
        header = {
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "key_id": self.key_id,
            "codes": len(self.ciphertexts),
            "grid": list(self.grid),
            "channels": self.channels,
            "scan": self.scan,
            "sizes": [len(blob) for blob in blobs],
        }
        return _message(CODES_MAGIC, header, blobs)

    @classmethod
    def decode(cls, payload: bytes, expect_kind: str | None = None) -> EncryptedCodes:
        header, blobs = _read(payload, CODES_MAGIC, CODE_FIELDS, "encrypted codes")
        codes, grid, channels = header["codes"], header["grid"], header["channels"]
        if not (isinstance(codes, int) and codes > 0 and len(blobs) % codes == 0):
            raise WireFormatError(
                f"encrypted codes: {len(blobs)} ciphertexts do not split into {codes} codes"
            )
        if not (
            isinstance(grid, list) and len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid)
        ):
            raise WireFormatError(f"encrypted codes: grid {grid!r} is not two positive sizes")
        if not (isinstance(channels, int) and channels > 0):
            raise WireFormatError(f"encrypted codes: channels {channels!r} is not a positive count")
        if header["kind"] not in ("image", "mask") or (expect_kind and header["kind"] != expect_kind):
            raise WireFormatError(
                f"expected encrypted {expect_kind or 'image or mask'} codes, got {header['kind']!r}"
            )
        per = len(blobs) // codes
        return cls(
            [blobs[i : i + per] for i in range(0, len(blobs), per)],
            header["kind"],
            str(header["key_id"]),
            (grid[0], grid[1]),
            channels,
            str(header["scan"]),
        )


@dataclass
class EvaluationKeys:
    """A center's public evaluation keys: relinearisation and Galois keys, no secret key."""

    key_id: str
    params: CkksParameters
    steps: list[int]
    relin_keys: bytes
    galois_keys: bytes

    def encode(self) -> bytes:
        header = {
            "version": FORMAT_VERSION,
            "key_id": self.key_id,
            "params": self.params.to_dict(),
            "steps": self.steps,
            "sizes": [len(self.relin_keys), len(self.galois_keys)],
        }
        return _message(KEYS_MAGIC, header, [self.relin_keys, self.galois_keys])

    @classmethod
    def decode(cls, payload: bytes) -> EvaluationKeys:
        header, blobs = _read(payload, KEYS_MAGIC, KEY_FIELDS, "evaluation keys")
        if len(blobs) != 2:
            raise WireFormatError("evaluation keys: expected relinearisation and Galois keys")
        try:
            p = header["params"]
            params = CkksParameters(
                int(p["degree"]), tuple(int(b) for b in p["moduli_bits"]), int(p["scale_bits"])
            )
            steps = [int(s) for s in header["steps"]]
        except (KeyError, TypeError, ValueError):
            raise WireFormatError("evaluation keys: params or steps are malformed") from None
        if (params.degree, params.moduli_bits) not in SETTINGS or params.scale_bits != params.moduli_bits[1]:
            raise WireFormatError(f"evaluation keys for an unsupported CKKS setting {params.to_dict()}")
        return cls(str(header["key_id"]), params, steps, blobs[0], blobs[1])

    def load(self) -> tuple[seal.RelinKeys, seal.GaloisKeys]:
        """The SEAL key objects, each checked by SEAL against this setting's context."""
        context = self.params.context()
        relin = load_bytes(seal.RelinKeys, context, self.relin_keys, "the relinearisation keys")
        galois = load_bytes(seal.GaloisKeys, context, self.galois_keys, "the Galois keys")
        return relin, galois


def is_encrypted(payload: bytes) -> bool:
    """Whether a message holds encrypted codes (``PSFE``) rather than plain ones."""
    return payload[:4] == CODES_MAGIC


def _message(magic: bytes, header: dict, blobs: list[bytes]) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(magic, FORMAT_VERSION, len(text)) + text + b"".join(blobs)


def _read(payload: bytes, magic: bytes, fields: frozenset[str], what: str) -> tuple[dict, list[bytes]]:
    if len(payload) < PREFIX.size:
        raise WireFormatError(f"{what}: message of {len(payload)} bytes is shorter than its prefix")
    found, version, length = PREFIX.unpack_from(payload)
    if found != magic:
        raise WireFormatError(f"{what}: expected a message starting {magic!r}, got {found!r}")
    if version != FORMAT_VERSION:
        raise WireFormatError(f"{what}: format version {version}, this build reads {FORMAT_VERSION}")
    if length > MAX_HEADER_BYTES or PREFIX.size + length > len(payload):
        raise WireFormatError(f"{what}: header of {length} bytes does not fit the message")
    try:
        header = json.loads(payload[PREFIX.size : PREFIX.size + length])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireFormatError(f"{what}: header is not JSON") from None
    if not isinstance(header, dict) or set(header) != fields:
        raise WireFormatError(f"{what}: header fields must be exactly {sorted(fields)}")
    sizes = header["sizes"]
    if not (isinstance(sizes, list) and all(isinstance(s, int) and s > 0 for s in sizes)):
        raise WireFormatError(f"{what}: sizes must be positive byte counts")
    start = PREFIX.size + length
    if start + sum(sizes) != len(payload):
        raise WireFormatError(
            f"{what}: {len(payload) - start} bytes follow the header, the sizes say {sum(sizes)}"
        )
    blobs, offset = [], start
    for size in sizes:
        blobs.append(payload[offset : offset + size])
        offset += size
    return header, blobs
