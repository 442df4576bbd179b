"""A center's public CKKS evaluation keys, checked whole before they are kept and recorded.

The keys let the server evaluate its mapper on that center's encrypted queries (add, multiply,
rotate ciphertexts) and read none of them: the secret key they belong to has no message format and
never leaves the center (:mod:`privacysf.center.encryption`). SEAL validates every key it loads, so
a corrupt or foreign upload is refused here rather than at the first query.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from privacysf.errors import WireFormatError
from privacysf.exchange.encrypted import EvaluationKeys
from privacysf.server.store.accounts import Caller
from privacysf.server.tables import EvaluationKeyRow

if TYPE_CHECKING:
    from privacysf.server.store import Store


def keep_keys(store: Store, caller: Caller, key_id: str, payload: bytes) -> EvaluationKeyRow:
    """Check ``payload`` as the evaluation keys ``key_id``, write it durably, then record it (replacing
    what the caller had under that id, whose file is deleted only once the new one is recorded)."""
    keys = EvaluationKeys.decode(payload)
    if keys.key_id != key_id:
        raise WireFormatError(
            f"these evaluation keys are {keys.key_id}, sent as {key_id}: PUT /keys/{keys.key_id}"
        )
    keys.load()
    file = f"{uuid.uuid4().hex}.psfk"
    store.files.write_key(file, payload)
    try:
        row, replaced = store.put_keys(caller, key_id, file, len(payload), store.cfg.max_keys_per_center)
    except BaseException:
        store.files.key(file).unlink(missing_ok=True)
        raise
    if replaced:
        store.files.key(replaced).unlink(missing_ok=True)
    return row
