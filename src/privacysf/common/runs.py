"""Run folders and crash-safe file writes.

Each run gets its own folder holding ``config.json``, ``metrics.json``, figures and checkpoints. All
writes go to a temporary file first and are renamed into place, so an interrupted or failed run never
leaves a half-written file over a good one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from privacysf.errors import ConfigError


def _umask() -> int:
    """The process umask, without changing it where the system can tell us.

    Linux reports it in /proc/self/status; elsewhere it can only be read by setting it and setting it
    back, which is process-global for that instant.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


SECRET_FILE_MODE = 0o600
"""Owner read/write only: center keys, CKKS secret keys and login tokens."""


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only, atomically.

    ``atomic_write`` gives its files the ordinary umask mode, so this chmod is what keeps a secret
    private; it comes before the text is written, so the bytes never sit in a readable file.
    """

    def write(tmp: Path) -> None:
        os.chmod(tmp, SECRET_FILE_MODE)
        tmp.write_text(text)

    atomic_write(path, write)


def read_secret(path: Path, what: str, missing: str) -> dict:
    """The JSON record of a secret file written by :func:`write_secret`, or a :class:`ConfigError`
    naming ``what`` it is and, when the file is absent, why that matters (``missing``)."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} is missing; {missing}")
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{what} {path} is malformed (not JSON)") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{what} {path} is malformed (not a JSON object)")
    return record


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path`` and rename it over ``path``.

    The temporary name ends in ``path``'s suffix, so writers that pick a format from the file name
    (SimpleITK) write the intended one. ``mkstemp`` creates the file owner-only (0600); it is given
    the mode a plainly created file would get (0666 less the umask) before ``write`` runs, so ordinary
    outputs stay readable as usual and a private file (a center key) is private only because its
    writer says so.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """Create ``output_dir/<timestamp>-<name>``, never reusing an existing folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(output_dir) / f"{stamp}-{name}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path
