"""Removing what a crash mid-upload left in the datasets folder, without touching a live upload.

An upload writes ``<name>.part``, renames it to ``<name>`` once it is checked, and only then records
it in the database; a file without a row is therefore either a leftover of a crash or an upload that
is still on its way. Two guards tell them apart:

- the serving lock: every ``serve`` holds a shared :func:`fcntl.flock` on ``<store>/serve.lock`` for
  its lifetime, and cleans only while it can hold that lock exclusively, i.e. while no other server
  serves the same folder. Operator commands (``privacysf server tokens``, ``create-token``, ...) never
  delete anything, so they need no lock;
- the age: only files untouched for ``ServiceConfig.stale_upload_seconds`` go. A live upload rewrites
  its ``.part`` with every chunk and a renamed file is recorded within seconds, so an old file belongs
  to no upload, even one of a server this lock cannot see (another host on a shared folder).
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

log = logging.getLogger("privacysf.service")
LOCK_FILE = "serve.lock"


class ServingLock:
    """The lock a serving process holds on its store folder from start to stop."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / LOCK_FILE
        self.gate = Path(root) / (LOCK_FILE + ".gate")
        self.handle: IO[bytes] | None = None

    def acquire(self, clean: Callable[[], object]) -> bool:
        """Hold the lock shared, after running ``clean()`` if no other server holds it; True if it ran.

        Starts are serialised by a second lock (the gate), held until the shared lock is in place: a
        lock's change from exclusive to shared is not atomic, and no other start may slip between.
        """
        with self.gate.open("ab") as gate:
            fcntl.flock(gate, fcntl.LOCK_EX)
            self.handle = self.path.open("ab")
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("another server serves %s: no clean-up of its uploads", self.path.parent)
                alone = False
            else:
                clean()
                alone = True
            fcntl.flock(self.handle, fcntl.LOCK_SH)
        return alone

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file drops the lock
            self.handle = None


def remove_stale(folder: Path, recorded: set[str], min_age_s: float) -> list[str]:
    """Delete the files of ``folder`` that no row records and that nothing wrote for ``min_age_s``."""
    now = time.time()
    removed = []
    for path in folder.iterdir():
        if path.name not in recorded and now - path.stat().st_mtime >= min_age_s:
            path.unlink()
            removed.append(path.name)
    return removed
