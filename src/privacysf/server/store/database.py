"""The service's database: one engine, migrated to the newest schema, handing out transactions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, make_url, select
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent.parent / "migrations"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """WAL lets readers (status polls) run while the job runner writes; foreign keys are enforced."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """An engine on ``url`` whose schema is brought to the newest migration when it is opened."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        if parsed.drivername == "postgresql":  # psycopg 3 is the driver the server extra installs
            parsed = parsed.set(drivername="postgresql+psycopg")
        sqlite = parsed.get_backend_name() == "sqlite"
        self.engine = create_engine(
            parsed, connect_args={"check_same_thread": False, "timeout": 30} if sqlite else {}
        )
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.migrate()

    def migrate(self) -> None:
        """Bring the schema to the newest migration (a no-op when it is current)."""
        alembic = Config()
        alembic.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            alembic.attributes["connection"] = connection
            command.upgrade(alembic, "head")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self.sessions.begin() as session:
            yield session

    def ping(self) -> None:
        with self.session() as s:
            s.execute(select(1))
