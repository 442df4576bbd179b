"""The service's persistent state, shared by every server front end (the web service, the CLI).

:class:`Store` is the one object they hold; its parts each keep one concern:

- :mod:`.database`: the engine, migrations and transactions;
- :mod:`.accounts`: centers and tokens (random, shown once, stored as SHA-256 digests, revocable);
- :mod:`.records`: datasets, jobs and models, each query scoped to the asking center;
- :mod:`.queue`: the job queue shared by worker processes (fair claims, leases, cancel, quotas);
- :mod:`.files`: the store folder, written so that a crash leaves no half file;
- :mod:`.uploads`: a streamed dataset upload, checked before it is kept and recorded;
- :mod:`.keys`: a center's public CKKS evaluation keys, checked before they are kept and recorded;
- :mod:`.cleanup`: the serving lock, and the removal of what a crash left, at ``serve`` start only.
"""

from __future__ import annotations

import logging

from privacysf.server.settings import ServiceConfig
from privacysf.server.store.accounts import Accounts, Caller
from privacysf.server.store.cleanup import ServingLock, remove_stale
from privacysf.server.store.files import Files
from privacysf.server.store.keys import keep_keys
from privacysf.server.store.queue import JobQueue
from privacysf.server.store.records import Records
from privacysf.server.store.uploads import DatasetUpload
from privacysf.server.tables import EvaluationKeyRow

log = logging.getLogger("privacysf.service")


class Store(Accounts, Records, JobQueue):
    """Database and files of one service instance; safe to share between threads.

    Opening it migrates the database and deletes nothing: operator commands open it beside a live
    server. Only :meth:`start_serving` removes what a crash left behind.
    """

    def __init__(self, cfg: ServiceConfig) -> None:
        self.cfg = cfg
        self.files = Files(cfg.store)
        self.serving = ServingLock(self.files.root)
        super().__init__(cfg.database_url)

    def start_serving(self) -> None:
        """Hold the serving lock until :meth:`stop_serving`; first, if no other server serves this
        store, delete unrecorded dataset and key files older than ``cfg.stale_upload_seconds``."""

        def clean() -> None:
            age = self.cfg.stale_upload_seconds
            removed = remove_stale(self.files.datasets, self.dataset_files(), age)
            removed += remove_stale(self.files.keys, self.key_files(), age)
            if removed:
                log.info("removed %d leftover upload file(s): %s", len(removed), ", ".join(removed))

        self.serving.acquire(clean)

    def stop_serving(self) -> None:
        self.serving.release()

    def delete_dataset(self, caller: Caller, dataset_id: int) -> None:
        """Delete one of the caller's datasets: its row is marked first, then its file removed, so a
        crash between the two leaves a file no row keeps, which :meth:`start_serving` removes."""
        self.files.dataset(self.mark_dataset_deleted(caller, dataset_id)).unlink(missing_ok=True)

    def dataset_upload(self, caller: Caller, name: str, sha256: str) -> DatasetUpload:
        return DatasetUpload(self, caller, name, sha256)

    def keep_keys(self, caller: Caller, key_id: str, payload: bytes) -> EvaluationKeyRow:
        return keep_keys(self, caller, key_id, payload)


__all__ = ["Caller", "DatasetUpload", "Store"]
