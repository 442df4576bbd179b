"""Tokens expire, and a center replaces its own before they do.

Regression (issue 18): tokens never expired. The store's clock is set by each test, so expiry and the
rotation's grace period are tried without waiting.
"""

from datetime import datetime, timedelta, timezone

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from servicekit import LoopbackServer

from privacysf.center.client import Profile
from privacysf.cli import main
from privacysf.server.service import create_app
from privacysf.server.settings import ServiceConfig
from privacysf.server.store import Store
from privacysf.server.store.database import MIGRATIONS

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)


class Clock:
    """The time the store checks tokens against, moved by the test."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    app = create_app(ServiceConfig(store=tmp_path_factory.mktemp("tokens") / "store"))
    server = LoopbackServer(app).start()
    yield app.state.store, server.url
    server.stop()


@pytest.fixture()
def clock(service):
    store, _ = service
    store.clock = Clock()
    yield store.clock
    del store.clock


def _me(url: str, token: str) -> httpx.Response:
    return httpx.get(f"{url}/me", headers={"Authorization": f"Bearer {token}"})


def test_an_expired_token_is_refused_with_how_to_get_a_new_one(service, clock):
    store, url = service
    _, token = store.create_center("expiring", days=30)
    clock.now = NOW + timedelta(days=30) - timedelta(seconds=1)
    assert _me(url, token).json()["token_expires_at"] == "2030-01-31T12:00:00Z"
    clock.now = NOW + timedelta(days=30)
    refused = _me(url, token)
    assert refused.status_code == 401
    detail = refused.json()["detail"]
    assert "expired on 2030-01-31 12:00 UTC" in detail and "privacysf server create-token" in detail


def test_rotation_gives_a_working_token_and_ends_the_old_one_after_the_grace_period(service, clock):
    store, url = service
    _, old = store.create_center("rotating", days=10)
    clock.now = NOW + timedelta(days=9)
    reply = httpx.post(f"{url}/tokens/rotate", headers={"Authorization": f"Bearer {old}"})
    assert reply.status_code == 200, reply.text
    rotated = reply.json()
    assert rotated["expires_at"] == "2030-04-10T12:00:00Z"  # a full 90 days from the rotation
    assert rotated["previous_token_ends_at"] == "2030-01-10T12:10:00Z"  # 600 s of grace
    assert _me(url, rotated["token"]).json()["name"] == "rotating"
    assert _me(url, old).status_code == 200  # a process still holding it finishes its work
    clock.now = NOW + timedelta(days=9, seconds=600)
    refused = _me(url, old)
    assert refused.status_code == 401 and "replaced by a rotation" in refused.json()["detail"]
    assert _me(url, rotated["token"]).status_code == 200


def test_center_rotate_token_updates_the_saved_login(service, clock, tmp_path, capsys):
    store, url = service
    _, old = store.create_center("cli-rotating")
    profile = tmp_path / "login.json"
    assert main(["center", "login", url, old, "--profile", str(profile)]) == 0
    assert main(["center", "rotate-token", "--profile", str(profile)]) == 0
    saved = Profile.load(profile)
    assert saved.url == url and saved.token != old
    assert oct(profile.stat().st_mode & 0o777) == "0o600"
    assert _me(url, saved.token).json()["name"] == "cli-rotating"
    clock.now = NOW + timedelta(hours=1)
    assert _me(url, old).status_code == 401
    assert "previous token stops working at 2030-01-01T12:10:00Z" in capsys.readouterr().out


def test_server_tokens_lists_each_tokens_expiry_and_state(tmp_path, capsys):
    store = ["--store", str(tmp_path / "store")]
    assert main(["server", "create-center", "short", "--days", "7", *store]) == 0
    assert main(["server", "create-token", "short", *store]) == 0
    assert main(["server", "revoke-token", "2", *store]) == 0
    capsys.readouterr()
    assert main(["server", "tokens", *store]) == 0
    lines = capsys.readouterr().out.splitlines()
    today = datetime.now(timezone.utc)
    assert [line.split()[:3] for line in lines] == [["1", "short", "active"], ["2", "short", "revoked"]]
    assert f"expires {today + timedelta(days=7):%Y-%m-%d}" in lines[0]
    assert f"expires {today + timedelta(days=90):%Y-%m-%d}" in lines[1]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_an_upgrade_from_0002_keeps_the_rows_and_lets_old_tokens_and_jobs_go_on(database, request, tmp_path):
    """Migrations 0003 (token expiry), 0004 (job workers) and 0005 (64-bit dataset sizes) on a database
    holding rows of 0002."""
    db_url = request.getfixturevalue("postgres_url") if database == "postgresql" else None
    cfg = ServiceConfig(store=tmp_path / "store", db_url=db_url)
    cfg.store.mkdir()
    engine = sa.create_engine(cfg.database_url)
    alembic = Config()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    then = {"sqlite": "'2020-01-01'", "postgresql": "'2020-01-01 00:00:00+00'"}[database]
    with engine.begin() as connection:
        alembic.attributes["connection"] = connection
        command.upgrade(alembic, "0002")
        connection.execute(sa.text(f"INSERT INTO centers (id, name, created_at) VALUES (1, 'old', {then})"))
        connection.execute(
            sa.text(f"INSERT INTO tokens (center_id, digest, created_at) VALUES (1, 'd', {then})")
        )
        connection.execute(
            sa.text(
                "INSERT INTO jobs (id, center_id, name, status, settings, epochs, epoch, attempts, "
                f"created_at, updated_at) VALUES (7, 1, 'm', 'running', '{{}}', 4, 2, 1, {then}, {then})"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO datasets (id, center_id, name, file, sha256, size_bytes, grid, scan, "
                "image_channels, mask_channels, train_count, val_count, created_at) VALUES "
                f"(3, 1, 'd', 'f.psfc', 'ab', 1, '[4, 4]', 'row-major', 4, 4, 16, 4, {then})"
            )
        )
    engine.dispose()
    store = Store(cfg)
    assert store.engine.dialect.name == database
    (token,) = store.list_tokens()
    lifetime = token["expires_at"] - datetime.now(timezone.utc)
    assert timedelta(days=89) < lifetime <= timedelta(days=90)
    assert token["created_at"] == datetime(2020, 1, 1, tzinfo=timezone.utc)  # read back as aware UTC
    assert token["state"] == "active"
    assert store.requeue_expired_jobs(lease_seconds=60) == [7]  # running before workers had leases
    with store.session() as s:
        job = s.execute(sa.text("SELECT status, epoch, worker, cancel_requested FROM jobs")).one()
    assert tuple(job) == ("queued", 2, None, False)
    with store.session() as s:  # an upload past 2 GiB (an operator may raise max_upload_bytes)
        s.execute(sa.text(f"UPDATE datasets SET size_bytes = {3 * 2**30} WHERE id = 3"))
    with store.session() as s:
        assert s.execute(sa.text("SELECT size_bytes FROM datasets")).scalar_one() == 3 * 2**30
