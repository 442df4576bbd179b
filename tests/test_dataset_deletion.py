"""Deleting a dataset in the store: never under a job that still needs it, never half done.

The HTTP side (204, 404 for another center's or an already deleted dataset, models kept) is in
``test_service_api.py``, on SQLite and PostgreSQL.
"""

import os
import time

import pytest
from servicekit import bundle, stored_dataset

from privacysf.errors import ConfigError, ConflictError
from privacysf.server.jobs import training_messages
from privacysf.server.settings import ServiceConfig
from privacysf.server.store import Store
from privacysf.server.tables import DatasetRow

SETTINGS = {"train": {"epochs": 1}, "mapper": {}}


@pytest.fixture
def store(tmp_path):
    return Store(ServiceConfig(store=tmp_path / "store", stale_upload_seconds=60))


def test_a_dataset_under_a_queued_job_is_kept_until_the_job_is_cancelled(store):
    caller = store.authenticate(store.create_center("hospital")[1])
    row = stored_dataset(store, caller, bundle())
    job = store.create_job(caller, "mapper", [row.id], SETTINGS)
    with pytest.raises(ConflictError, match=rf"used by job\(s\) \[{job.id}\].*cancel them"):
        store.delete_dataset(caller, row.id)
    assert store.files.dataset(row.file).exists()
    store.cancel_job(job.id)
    store.delete_dataset(caller, row.id)
    assert not store.files.dataset(row.file).exists()
    assert store.visible_rows(DatasetRow, caller) == []


def test_a_job_whose_dataset_was_deleted_meanwhile_fails_saying_so(store):
    """A deletion racing a new job: the worker refuses the job with a message, not a missing file."""
    caller = store.authenticate(store.create_center("hospital")[1])
    row = stored_dataset(store, caller, bundle())
    job = store.create_job(caller, "mapper", [row.id], SETTINGS)
    store.cancel_job(job.id)
    store.delete_dataset(caller, row.id)
    with pytest.raises(ConfigError, match=rf"datasets \[{row.id}\] were deleted after this job was queued"):
        training_messages(store, job.id)


def test_a_deleted_datasets_file_left_by_a_crash_is_removed_at_the_next_start(store):
    """The row is marked before the file goes: a crash between the two leaves a file that no kept
    dataset names, which ``serve`` removes once it is old enough, like any crash leftover."""
    caller = store.authenticate(store.create_center("hospital")[1])
    row, kept = stored_dataset(store, caller, bundle()), stored_dataset(store, caller, bundle())
    store.mark_dataset_deleted(caller, row.id)  # the crash: the file is still there
    leftover = store.files.dataset(row.file)
    assert row.file not in store.dataset_files() and kept.file in store.dataset_files()
    old = time.time() - 120
    for path in (leftover, store.files.dataset(kept.file)):
        os.utime(path, (old, old))
    store.start_serving()
    try:
        assert not leftover.exists()
        assert store.files.dataset(kept.file).exists()
    finally:
        store.stop_serving()
