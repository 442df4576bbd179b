"""One streamed dataset upload: size-limited, checksummed, checked as a code dataset, then kept.

The body goes to a temporary file chunk by chunk (never whole in memory); :meth:`DatasetUpload.commit`
verifies the checksum, checks the file with :func:`~privacysf.exchange.check_dataset_stream` (the
rule every dataset path uses, applied message by message and chunk by chunk, so the server's memory
does not grow with the upload's size), makes it durable under its final name and only then records
it, so a crash at any point leaves either nothing or a complete, recorded dataset.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import TYPE_CHECKING

from privacysf.errors import ConfigError, PayloadTooLargeError, WireFormatError
from privacysf.exchange import check_dataset_stream
from privacysf.server.store.accounts import Caller
from privacysf.server.tables import DatasetRow

if TYPE_CHECKING:
    from privacysf.server.store import Store


class DatasetUpload:
    """Write chunks with :meth:`write`, then :meth:`commit` (or :meth:`abort`)."""

    def __init__(self, store: Store, caller: Caller, name: str, sha256: str) -> None:
        name = name.strip()
        if not name or len(name) > 100:
            raise ConfigError("a dataset name must be 1 to 100 characters")
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower()):
            raise ConfigError("send the upload's SHA-256 as 64 hex digits in the X-Content-SHA256 header")
        self.store, self.caller, self.name, self.expected = store, caller, name, sha256.lower()
        self.limit = store.cfg.max_upload_bytes
        self.file = f"{uuid.uuid4().hex}.psfc"
        self.tmp = store.files.temporary(self.file)
        self.handle = self.tmp.open("wb")
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            self.abort()
            raise PayloadTooLargeError(
                f"the upload exceeds this server's limit of {self.limit} bytes; "
                "split the data into several datasets"
            )
        self.hash.update(chunk)
        self.handle.write(chunk)

    def abort(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)

    def commit(self) -> DatasetRow:
        """Check the checksum and the codes, make the file durable, rename it, then record it."""
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            if self.hash.hexdigest() != self.expected:
                raise WireFormatError(
                    f"the upload's SHA-256 is {self.hash.hexdigest()}, the header announced {self.expected}: "
                    "the body was corrupted or truncated in transit; upload again"
                )
            with self.tmp.open("rb") as stream:
                layout = check_dataset_stream(
                    stream,
                    max_values_bytes=self.limit,
                    max_training_bytes=self.store.cfg.max_job_training_bytes,
                )
            self.store.files.keep(self.tmp, self.file)
        except BaseException:
            self.abort()
            raise
        return self.store.add_dataset(self.caller, self.name, self.file, self.expected, self.size, layout)
