"""The store folder: dataset files, job checkpoints and model files, written so a crash leaves no half.

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
        self.datasets, self.jobs, self.models = (self.root / f for f in ("datasets", "jobs", "models"))
        for folder in (self.datasets, self.jobs, self.models):
            folder.mkdir(parents=True, exist_ok=True)

    def dataset(self, file: str) -> Path:
        return self.datasets / file

    def model(self, file: str) -> Path:
        return self.models / file

    def job_dir(self, job_id: int) -> Path:
        return self.jobs / str(job_id)

    def temporary(self, file: str) -> Path:
        """Where an upload of ``file`` is written until it is checked and kept."""
        return self.datasets / (file + TMP_SUFFIX)

    def keep(self, temporary: Path, file: str) -> Path:
        """Move a complete temporary file to its final name durably: the rename survives a crash."""
        final = self.dataset(file)
        os.replace(temporary, final)
        fd = os.open(final.parent, os.O_RDONLY)  # the directory entry is data too
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return final
