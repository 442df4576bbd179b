"""A PostgreSQL server for the tests: the one ``PSF_TEST_POSTGRES_URL`` names, or a throwaway cluster.

The throwaway cluster is Debian's ``postgresql`` package run from a temporary folder: ``initdb`` with
trust authentication, a unix socket in that folder and a free loopback port, stopped and deleted
after the session. PostgreSQL refuses to run as root, so under root (here and in CI) it runs as the
``postgres`` user the package creates. Each test gets a database of its own in that server.
Tests that need PostgreSQL fail with instructions when it is missing; ``PSF_SKIP_POSTGRES=1`` is the
only way to skip them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from servicekit import free_port
from sqlalchemy import create_engine, make_url, text

INSTALL = (
    "PostgreSQL is needed by this test: install it (`apt-get install -y postgresql`, which .ci/run "
    "does as root), or set PSF_TEST_POSTGRES_URL=postgresql://user@host/db to a server where that "
    "user may create databases, or set PSF_SKIP_POSTGRES=1 to skip these tests"
)


def _binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: Debian's versioned one, else the PATH's."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    found = debian[-1] if debian else shutil.which("initdb")
    return Path(found).parent if found else None


class Cluster:
    """A PostgreSQL cluster in a temporary folder, run by an unprivileged user."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir, self.port = bin_dir, free_port()
        self.root = Path(tempfile.mkdtemp(prefix="psf-pg-"))
        self.user = pwd.getpwuid(os.getuid())
        if os.getuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail(f"running as root and there is no 'postgres' user. {INSTALL}")
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self.user.pw_name, "--"] if os.getuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, cwd=self.root)

    def start(self) -> str:
        data = str(self.root / "data")
        self._run(str(self.bin_dir / "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            data,
            "-l",
            str(self.root / "log"),
            "-o",
            options,
            "-w",
            "start",
        )
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server whose user may create databases."""
    if os.environ.get("PSF_SKIP_POSTGRES") == "1":
        pytest.skip("PSF_SKIP_POSTGRES=1")
    if url := os.environ.get("PSF_TEST_POSTGRES_URL"):
        yield url
        return
    bin_dir = _binaries()
    if bin_dir is None:
        pytest.fail(f"no PostgreSQL binaries (initdb) found. {INSTALL}")
    cluster = Cluster(bin_dir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def fresh_database(server_url: str) -> str:
    """A new, empty database on the server, as a URL (psycopg 3 driver)."""
    name = f"psf_{uuid.uuid4().hex[:12]}"
    engine = create_engine(
        make_url(server_url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return (
        make_url(server_url)
        .set(drivername="postgresql+psycopg", database=name)
        .render_as_string(hide_password=False)
    )


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh database for one test."""
    return fresh_database(postgres_server)
