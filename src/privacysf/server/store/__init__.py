"""The service's persistent state, shared by every server front end (the web service, the CLI).

:class:`Store` is the one object they hold; its parts each keep one concern:

- :mod:`.database`: the engine, migrations and transactions;
- :mod:`.accounts`: centers and tokens (random, shown once, stored as SHA-256 digests, revocable);
- :mod:`.records`: datasets, jobs and models, each query scoped to the asking center;
- :mod:`.queue`: the job queue shared by worker processes (fair claims, leases, cancel, quotas);
- :mod:`.files`: the store folder, written so that a crash leaves no half file;
- :mod:`.uploads`: a streamed dataset upload, checked before it is kept and recorded.
"""

from __future__ import annotations

from privacysf.server.settings import ServiceConfig
from privacysf.server.store.accounts import Accounts, Caller
from privacysf.server.store.files import Files
from privacysf.server.store.queue import JobQueue
from privacysf.server.store.records import Records
from privacysf.server.store.uploads import DatasetUpload


class Store(Accounts, Records, JobQueue):
    """Database and files of one service instance; safe to share between threads.

    Opening it migrates the database and deletes what a crash mid-upload can have left behind.
    """

    def __init__(self, cfg: ServiceConfig) -> None:
        self.cfg = cfg
        self.files = Files(cfg.store)
        super().__init__(cfg.database_url)
        self.files.remove_datasets_except(self.dataset_files())

    def dataset_upload(self, caller: Caller, name: str, sha256: str) -> DatasetUpload:
        return DatasetUpload(self, caller, name, sha256)


__all__ = ["Caller", "DatasetUpload", "Store"]
