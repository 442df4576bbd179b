"""Centers and their API tokens: random, shown once, stored as SHA-256 digests, expiring, revocable.

A token lives ``ServiceConfig.token_days`` (or the days the operator gives); its center replaces it
before then with :meth:`Accounts.rotate_token`, which keeps the old one working for
``token_grace_seconds`` more, so a rotation whose reply was lost can simply be retried.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from privacysf.errors import AuthError, ConfigError, NotFoundError
from privacysf.server.store.database import Database
from privacysf.server.tables import CenterRow, TokenRow, utcnow

if TYPE_CHECKING:
    from privacysf.server.settings import ServiceConfig

TOKEN_PREFIX = "psf_"
NEW_TOKEN = "ask the server's operator for a new one (privacysf server create-token CENTER)"


@dataclass(frozen=True)
class Caller:
    """The authenticated center behind a request."""

    center_id: int
    name: str
    token_id: int
    token_expires_at: datetime


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts(Database):
    """The operator's side (create centers, issue and revoke tokens) and the requests' (authenticate)."""

    cfg: ServiceConfig
    clock: Callable[[], datetime] = staticmethod(utcnow)
    """The time tokens are checked against (aware UTC); tests set it to try expiry without waiting."""

    def create_center(self, name: str, days: int | None = None) -> tuple[int, str]:
        """A new center and its first token, valid ``days`` (default ``cfg.token_days``); returns
        (token id, token). The token is not kept."""
        name = name.strip()
        if not name or len(name) > 100:
            raise ConfigError("a center name must be 1 to 100 characters")
        with self.session() as s:
            if s.scalar(select(CenterRow).where(CenterRow.name == name)) is not None:
                raise ConfigError(f"center {name!r} exists already; issue it a new token with create-token")
            s.add(CenterRow(name=name))
        return self.create_token(name, days)

    def create_token(self, center_name: str, days: int | None = None) -> tuple[int, str]:
        with self.session() as s:
            center = s.scalar(select(CenterRow).where(CenterRow.name == center_name))
            if center is None:
                raise NotFoundError(f"no center named {center_name!r}; create it with create-center")
            return self._issue(s, center.id, days)

    def _issue(self, s: Session, center_id: int, days: int | None) -> tuple[int, str]:
        days = self.cfg.token_days if days is None else days
        if not 1 <= days <= 3650:
            raise ConfigError(f"a token lives 1 to 3650 days, not {days}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self.clock()
        row = TokenRow(
            center_id=center_id, digest=digest(token), created_at=now, expires_at=now + timedelta(days=days)
        )
        s.add(row)
        s.flush()
        return row.id, token

    def rotate_token(self, caller: Caller) -> tuple[int, str, datetime]:
        """A new token for the caller's center, of a full lifetime; the caller's token stops working
        ``cfg.token_grace_seconds`` from now (or at its expiry, if sooner). Returns (new token id,
        new token, when the old one stops)."""
        with self.session() as s:
            old = s.get(TokenRow, caller.token_id)
            assert old is not None  # the caller was just authenticated with it
            end = self.clock() + timedelta(seconds=self.cfg.token_grace_seconds)
            old.revoked_at = min(end, old.revoked_at or end, old.expires_at)
            return (*self._issue(s, caller.center_id, None), old.revoked_at)

    def revoke_token(self, token_id: int) -> str:
        """Revoke a token by its id, at once; returns its center's name."""
        with self.session() as s:
            row = s.get(TokenRow, token_id)
            if row is None:
                raise NotFoundError(f"no token with id {token_id}")
            now = self.clock()
            row.revoked_at = min(row.revoked_at or now, now)
            center = s.get(CenterRow, row.center_id)
            assert center is not None  # a token's center row is never deleted
            return center.name

    def list_tokens(self) -> list[dict]:
        """Every token's id, center, creation and expiry, and state: active, ending (rotated, in its
        grace period), revoked or expired."""
        now = self.clock()
        with self.session() as s:
            rows = s.execute(select(TokenRow, CenterRow.name).join(CenterRow).order_by(TokenRow.id)).all()
            return [
                {
                    "id": t.id,
                    "center": name,
                    "created_at": t.created_at,
                    "expires_at": t.expires_at,
                    "state": _state(t, now),
                }
                for t, name in rows
            ]

    def authenticate(self, token: str | None) -> Caller:
        if not token:
            raise AuthError("this endpoint needs a token: send 'Authorization: Bearer <token>'")
        with self.session() as s:
            row = s.execute(
                select(TokenRow, CenterRow.name).join(CenterRow).where(TokenRow.digest == digest(token))
            ).first()
        if row is None:
            raise AuthError("the token is not known; ask the server's operator for a valid one")
        token_row, name = row
        now = self.clock()
        if token_row.revoked_at is not None and token_row.revoked_at <= now:
            raise AuthError(
                f"the token was revoked or replaced by a rotation on {token_row.revoked_at:%Y-%m-%d %H:%M} "
                f"UTC; use the newer token, or {NEW_TOKEN}"
            )
        if token_row.expires_at <= now:
            raise AuthError(
                f"the token expired on {token_row.expires_at:%Y-%m-%d %H:%M} UTC; {NEW_TOKEN}, "
                "and rotate it before it ends next time (privacysf center rotate-token)"
            )
        return Caller(token_row.center_id, name, token_row.id, token_row.expires_at)


def _state(token: TokenRow, now: datetime) -> str:
    if token.revoked_at is not None:
        return "revoked" if token.revoked_at <= now else "ending"
    return "expired" if token.expires_at <= now else "active"
