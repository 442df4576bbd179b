"""Centers and their API tokens: random, shown once, stored as SHA-256 digests, revocable."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select

from privacysf.errors import AuthError, ConfigError, NotFoundError
from privacysf.server.store.database import Database
from privacysf.server.tables import CenterRow, TokenRow

TOKEN_PREFIX = "psf_"


@dataclass(frozen=True)
class Caller:
    """The authenticated center behind a request."""

    center_id: int
    name: str


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts(Database):
    """The operator's side (create centers, issue and revoke tokens) and the requests' (authenticate)."""

    def create_center(self, name: str) -> tuple[int, str]:
        """A new center and its first token; returns (token id, token). The token is not kept."""
        name = name.strip()
        if not name or len(name) > 100:
            raise ConfigError("a center name must be 1 to 100 characters")
        with self.session() as s:
            if s.scalar(select(CenterRow).where(CenterRow.name == name)) is not None:
                raise ConfigError(f"center {name!r} exists already; issue it a new token with create-token")
            s.add(CenterRow(name=name))
        return self.create_token(name)

    def create_token(self, center_name: str) -> tuple[int, str]:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.session() as s:
            center = s.scalar(select(CenterRow).where(CenterRow.name == center_name))
            if center is None:
                raise NotFoundError(f"no center named {center_name!r}; create it with create-center")
            row = TokenRow(center_id=center.id, digest=digest(token))
            s.add(row)
            s.flush()
            return row.id, token

    def revoke_token(self, token_id: int) -> str:
        """Revoke a token by its id; returns its center's name."""
        with self.session() as s:
            row = s.get(TokenRow, token_id)
            if row is None:
                raise NotFoundError(f"no token with id {token_id}")
            row.revoked_at = row.revoked_at or datetime.now(timezone.utc)
            center = s.get(CenterRow, row.center_id)
            assert center is not None  # a token's center row is never deleted
            return center.name

    def list_tokens(self) -> list[dict]:
        with self.session() as s:
            rows = s.execute(select(TokenRow, CenterRow.name).join(CenterRow)).all()
            return [
                {"id": t.id, "center": name, "created_at": t.created_at, "revoked": t.revoked_at is not None}
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
        if token_row.revoked_at is not None:
            raise AuthError("the token was revoked; ask the server's operator for a new one")
        return Caller(token_row.center_id, name)
