"""Masked federated averaging on the wire: fixed-point weights modulo 2^32, and the server's one sum.

In ``fedavg-codecs`` a center never uploads its weights in the clear. It sends ``fixed(n · w) + pad``
modulo 2^32, where ``n`` is its number of training slices and the pad is drawn from a secret shared by
the centers only (:mod:`privacysf.center.aggregation`). The server adds the masked arrays modulo 2^32
(:func:`sum_uploads`, the only arithmetic it does), adds the clear counts, and sends the masked sum
back with the list of nonces it summed; a center removes every pad and divides by the total count.

Range and precision: a value ``x`` travels as ``round(x · 2^20)`` in 32-bit two's complement, so the
*sum over all centers* of ``n · w`` must stay inside ±2^31 / 2^20 = ±2048 for every weight (a wrapped
sum would unmask to a wrong value without any sign). Each center checks its own part against
``2048 / centers`` (:func:`to_fixed`), which bounds the sum. Rounding costs at most 2^-21 per center
in ``n · w``, so the average is within ``centers · 2^-21 / total`` ≤ 2^-21 of the float64 weighted
average.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from privacysf.errors import FederationError
from privacysf.exchange.flower import field

SCALE_BITS = 20
SCALE = 1 << SCALE_BITS
"""Fixed-point scale: a weight is carried as an integer number of 2^-20."""
LIMIT = 2**31 / SCALE
"""Bound on ``|sum over centers of n · w|`` (2048): what 32-bit two's complement holds at that scale."""
MASK = "mask"
"""Name of an upload's ``ConfigRecord`` holding its nonce (in the clear), beside ``weights``."""


def to_fixed(values: np.ndarray, centers: int, name: str) -> np.ndarray:
    """``values`` as uint32 fixed point, refusing any value outside this center's share of the range.

    ``centers`` is how many centers add into the same sum: each may use ``LIMIT / centers``, so no
    sum of them can wrap.
    """
    limit = LIMIT / centers
    largest = float(np.abs(values).max(initial=0.0))
    if not largest < limit:
        raise FederationError(
            f"masked averaging: {name} holds {largest:.1f} after weighting by training slices, outside "
            f"±{limit:.1f} (±2^31 / 2^{SCALE_BITS} shared by {centers} centers); its sum over the centers "
            "would wrap. Use fewer training slices per center or per-center codecs (--modes pooled)"
        )
    return np.rint(values.astype(np.float64) * SCALE).astype(np.int64).astype(np.uint32)


def from_fixed(values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_fixed` (float64), for a sum that stayed within ``LIMIT``."""
    return values.astype(np.uint32).view(np.int32).astype(np.float64) / SCALE


def sum_records(records: Sequence[ArrayRecord]) -> ArrayRecord:
    """Element-wise sum modulo 2^32 of uint32 records with the same names and shapes."""
    names = list(records[0].keys())
    total = {}
    for name in names:
        arrays = [uint32_array(record, name) for record in records]
        if len({a.shape for a in arrays}) > 1:
            raise FederationError(f"masked uploads disagree on the shape of {name!r}")
        total[name] = Array(np.asarray(np.sum(arrays, axis=0, dtype=np.uint32)))
    return ArrayRecord(total)


def uint32_array(record: ArrayRecord, name: str) -> np.ndarray:
    """``record[name]``, checked to be masked (uint32): a clear float array here is a protocol error."""
    if name not in record:
        raise FederationError(f"a masked record has no array {name!r}")
    array = record[name].numpy()
    if array.dtype != np.uint32:
        raise FederationError(f"masked array {name!r} is {array.dtype}, expected uint32 (a clear upload?)")
    return array


@dataclass(frozen=True)
class MaskedSum:
    """What the server holds after a masked round: the sum, the total count and the nonces summed.

    ``nonces`` are exactly those of the uploads in the sum, so a center that dropped out before the
    server summed leaves no pad behind and the others can still unmask.
    """

    arrays: ArrayRecord
    round: int
    examples: int
    nonces: tuple[bytes, ...]

    def records(self, name: str) -> dict[str, ArrayRecord | ConfigRecord]:
        """The sum as a message's records: ``name`` (arrays) and ``name.mask`` (round, count, nonces)."""
        info = ConfigRecord({"round": self.round, "examples": self.examples, "nonces": list(self.nonces)})
        return {name: self.arrays, f"{name}.{MASK}": info}

    @classmethod
    def from_records(cls, content: RecordDict, name: str) -> MaskedSum | None:
        """The masked sum a message carries under ``name``, or None (round 1 carries none)."""
        if name not in content.array_records:
            return None
        info = content.config_records[f"{name}.{MASK}"]
        nonces = tuple(field(info, "nonces", list))
        if not all(isinstance(nonce, bytes) for nonce in nonces):
            raise FederationError(f"the nonces of masked sum {name!r} are not all bytes")
        round_, examples = field(info, "round", int), field(info, "examples", int)
        return cls(content.array_records[name], round_, examples, nonces)


def sum_uploads(uploads: Sequence[RecordDict], round_: int) -> MaskedSum:
    """The server's whole part in a masked round: add the masked ``weights``, the counts, the nonces."""
    return MaskedSum(
        sum_records([u.array_records["weights"] for u in uploads]),
        round_,
        sum(field(u.metric_records["metrics"], "num-examples", int) for u in uploads),
        tuple(field(u.config_records[MASK], "nonce", bytes) for u in uploads),
    )
