"""Helpers of the key-secrecy tests: every byte form a center key could leak in, and a search for them.

A check for "no key bytes on the wire" is only as strong as the list of forms it looks for: searching
for the raw secret and one dtype of each matrix passes even if the key goes out as upper-case hex, the
matrix as float16 or the permutation's inverse as int32. :func:`secret_forms` lists them all.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from privacysf.center.keys import CenterKey, KeyedTransform
from privacysf.errors import WireFormatError
from privacysf.exchange.wire import MAGIC, read_header, value_pieces

MIN_FORM_BYTES = 16
"""Forms shorter than this are not searched: a short pattern can turn up in random code bytes by chance."""

FLOAT_DTYPES = ("float16", "float32", "float64")
INT_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")
ENDIANS = {"le": "<", "be": ">"}


def secret_forms(secret: CenterKey, transform: KeyedTransform) -> dict[str, bytes]:
    """Every byte form of ``secret`` and of the parts ``transform`` derives from it, by a readable name.

    - the secret: raw, lower- and upper-case hex, base64 (standard and urlsafe, with and without
      padding) and the text of its key file;
    - each mixing matrix ``q``, ``q / scale`` and ``q.T`` as float16, float32 and float64, little and
      big endian;
    - the permutation and its inverse in every integer width that holds their values, little and big
      endian, and as JSON lists (default and compact separators).

    Identity parts (mixing off gives identity matrices, no permutation gives ``arange``) are left out:
    they are no secret. So is any form shorter than ``MIN_FORM_BYTES``, to keep chance hits out.
    """
    forms = {**raw_forms(secret.secret), "secret/key-file": _key_file(secret)}
    for kind, (q, scale) in transform.mixing.items():
        if np.array_equal(q, np.eye(len(q))):
            continue
        for variant, matrix in {"q": q, "q/scale": q / scale, "q.T": q.T}.items():
            forms |= _binary(f"mixing/{kind}/{variant}", matrix, FLOAT_DTYPES)
    orders = {"permutation": transform.permutation, "inverse": transform.inverse_permutation}
    for name, order in orders.items():
        if np.array_equal(order, np.arange(len(order))):
            continue
        # indices are >= 0, so a width holds them when it holds the largest
        widths = [dtype for dtype in INT_DTYPES if order.max() <= np.iinfo(dtype).max]
        forms |= _binary(name, order, widths)
        forms[f"{name}/json"] = json.dumps(order.tolist()).encode()
        forms[f"{name}/json-compact"] = json.dumps(order.tolist(), separators=(",", ":")).encode()
    return {name: form for name, form in forms.items() if len(form) >= MIN_FORM_BYTES}


def raw_forms(raw: bytes, name: str = "secret") -> dict[str, bytes]:
    """Secret bytes raw, in lower- and upper-case hex and in base64 (standard and urlsafe, with and
    without padding): the forms a secret takes when someone writes it into a text field."""
    return {
        f"{name}/raw": raw,
        f"{name}/hex": raw.hex().encode(),
        f"{name}/HEX": raw.hex().upper().encode(),
        f"{name}/base64": base64.b64encode(raw),
        f"{name}/base64-unpadded": base64.b64encode(raw).rstrip(b"="),
        f"{name}/urlsafe-base64": base64.urlsafe_b64encode(raw),
        f"{name}/urlsafe-base64-unpadded": base64.urlsafe_b64encode(raw).rstrip(b"="),
    }


def _binary(name: str, array: np.ndarray, dtypes: Sequence[str]) -> dict[str, bytes]:
    """``array``'s raw bytes in each dtype and both byte orders, named ``name/dtype-le`` or ``-be``."""
    return {
        f"{name}/{dtype}-{endian}": array.astype(np.dtype(dtype).newbyteorder(mark)).tobytes()
        for dtype in dtypes
        for endian, mark in ENDIANS.items()
    }


def _key_file(secret: CenterKey) -> bytes:
    """The bytes ``CenterKey.save`` writes, taken from a real save so a format change is followed."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "key.json"
        secret.save(path)
        return path.read_bytes()


def as_read(blob: bytes) -> bytes:
    """``blob`` followed by the inflated values of every deflated code message in it: a search of the
    bytes as sent would miss a secret that a deflated body hides."""
    inflated, offset = [], blob.find(MAGIC)
    while offset >= 0:
        try:
            header = read_header(blob, offset)
            if header.compression == "deflate":
                body = memoryview(blob)[offset + header.body_offset :]
                inflated += value_pieces(io.BytesIO(body).read, header, 1 << 20)
        except WireFormatError:
            pass  # not a message, or a cut one: its bytes are searched as they are
        offset = blob.find(MAGIC, offset + 1)
    return b"".join([blob, *inflated])


def assert_no_secret(blobs: Sequence[bytes], forms: dict[str, bytes]) -> None:
    """Fail, naming the form and the blob's index in ``blobs``, if any form occurs in any blob, or in
    the values of a deflated code message in it."""
    for index, blob in enumerate(map(as_read, blobs)):
        for name, form in forms.items():
            offset = blob.find(form)
            if offset >= 0:
                raise AssertionError(f"key form {name!r} found in blob {index} at byte {offset}")


def ckks_secret_forms(encryption) -> dict[str, bytes]:
    """Byte forms of a center's CKKS secret key (a ``QueryEncryption``'s): serialised, in hex and
    base64 (:func:`raw_forms`), and its first raw coefficients as little-endian uint64."""
    from privacysf.exchange.encrypted import save_bytes

    secret = encryption._secret_key
    forms = raw_forms(save_bytes(secret), "ckks-secret")
    coefficients = secret.data().dyn_array()
    forms["ckks-secret/coefficients"] = np.array([coefficients[i] for i in range(64)], "<u8").tobytes()
    return forms
