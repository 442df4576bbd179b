"""The store folder: dataset, job checkpoint, model and evaluation-key files, written so a crash leaves
no half.

A file becomes visible under its final name only once it is complete and on disk (fsync, rename,
fsync of the folder); what a crash leaves in the datasets folder is removed at ``serve`` start
(:mod:`.cleanup`).
"""

from __future__ import annotations

import os
from pathlib import Path

TMP_SUFFIX = ".part"


class Files:
    """Paths inside the store folder ``root`` (created on first use)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        folders = ("datasets", "jobs", "models", "keys")
        self.datasets, self.jobs, self.models, self.keys = (self.root / f for f in folders)
        for folder in (self.datasets, self.jobs, self.models, self.keys):
            folder.mkdir(parents=True, exist_ok=True)

    def dataset(self, file: str) -> Path:
        return self.datasets / file

    def model(self, file: str) -> Path:
        return self.models / file

    def key(self, file: str) -> Path:
        return self.keys / file

    def job_dir(self, job_id: int) -> Path:
        return self.jobs / str(job_id)

    def temporary(self, file: str) -> Path:
        """Where an upload of ``file`` is written until it is checked and kept."""
        return self.datasets / (file + TMP_SUFFIX)

    def keep(self, temporary: Path, file: str) -> Path:
        """Move a complete temporary dataset file to its final name durably: the rename survives a crash."""
        return _rename_durably(temporary, self.dataset(file))

    def write_key(self, file: str, data: bytes) -> Path:
        """Write an evaluation-key file whole and durably, under its final name only once complete."""
        temporary = self.key(file + TMP_SUFFIX)
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return _rename_durably(temporary, self.key(file))


def _rename_durably(temporary: Path, final: Path) -> Path:
    os.replace(temporary, final)
    fd = os.open(final.parent, os.O_RDONLY)  # the directory entry is data too
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final
