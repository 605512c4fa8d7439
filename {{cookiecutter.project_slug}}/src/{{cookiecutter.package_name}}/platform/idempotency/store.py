"""The record of each key, and the statements that move it: claim, complete, release.

One row per (principal, method, route, key). While a request holds the key, `claim` is its token
and `leased_until` bounds how long a holder that died can block the key; once the answer is
stored, `claim` is NULL and the answer (status, headers, body) is replayed until `expires_at`.
Every time is the database's (`now()`), so replicas with skewed clocks agree.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import Response
from sqlalchemy import BigInteger
from sqlalchemy import Boolean
from sqlalchemy import CheckConstraint
from sqlalchemy import DateTime
from sqlalchemy import Index
from sqlalchemy import LargeBinary
from sqlalchemy import Text
from sqlalchemy import Uuid
from sqlalchemy import bindparam
from sqlalchemy import func
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from {{ cookiecutter.package_name }}.db.base import Base

# Headers a replay gives back: what describes the stored body and the created resource.
STORED_HEADERS = ("content-type", "location", "etag", "content-language")


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (
        Index("ix_idempotency_keys_expires_at", "expires_at"),
        # A key is either held by a request (a claim, no answer yet) or answered (no claim).
        CheckConstraint("(claim IS NULL) = (status_code IS NOT NULL)", name="claimed_or_answered"),
    )

    principal: Mapped[str] = mapped_column(Text, primary_key=True)
    method: Mapped[str] = mapped_column(Text, primary_key=True)
    route: Mapped[str] = mapped_column(Text, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(Text)
    claim: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    leased_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status_code: Mapped[int | None] = mapped_column(BigInteger)
    headers: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True, slots=True)
class KeyScope:
    """Whose key it is and for what: one caller's key never touches another's."""

    principal: str
    method: str
    route: str
    key: str


@dataclass(frozen=True, slots=True)
class Found:
    """The key's record when this request could not claim it: answered, or in flight."""

    fingerprint: str
    status_code: int | None  # None: another request holds the key
    headers: dict[str, str] | None
    body: bytes | None


# One round trip: take the key (new, expired, or its holder's lease ran out), else read its record.
# The second branch reads the statement's snapshot; a record committed after it was taken is not
# in it, and `claim` reads it again (`_READ`).
_CLAIM = text("""
WITH claimed AS (
    INSERT INTO idempotency_keys AS k
        (principal, method, route, key, fingerprint, claim, leased_until, expires_at)
    VALUES (:principal, :method, :route, :key, :fingerprint, :claim,
            now() + make_interval(secs => :lease_s), now() + make_interval(secs => :retention_s))
    ON CONFLICT (principal, method, route, key) DO UPDATE SET
        fingerprint = excluded.fingerprint, claim = excluded.claim,
        leased_until = excluded.leased_until, expires_at = excluded.expires_at,
        status_code = NULL, headers = NULL, body = NULL, created_at = now()
    WHERE k.expires_at <= now() OR (k.claim IS NOT NULL AND k.leased_until <= now())
    RETURNING k.claim
)
SELECT true AS claimed, NULL::text AS fingerprint, NULL::bigint AS status_code,
    NULL::jsonb AS headers, NULL::bytea AS body
FROM claimed
UNION ALL
SELECT false, fingerprint, status_code, headers, body FROM idempotency_keys
WHERE principal = :principal AND method = :method AND route = :route AND key = :key
    AND NOT EXISTS (SELECT FROM claimed)
""").columns(claimed=Boolean, fingerprint=Text, status_code=BigInteger, headers=JSONB, body=LargeBinary)

_READ = text(
    "SELECT fingerprint, status_code, headers, body FROM idempotency_keys"
    " WHERE principal = :principal AND method = :method AND route = :route AND key = :key"
).columns(fingerprint=Text, status_code=BigInteger, headers=JSONB, body=LargeBinary)

# Only the holder of the claim stores an answer: a request whose lease ran out and was taken over
# changes nothing (rowcount 0).
_COMPLETE = text("""
UPDATE idempotency_keys SET
    claim = NULL, leased_until = NULL, status_code = :status_code, headers = :headers, body = :body,
    expires_at = now() + make_interval(secs => :retention_s)
WHERE principal = :principal AND method = :method AND route = :route AND key = :key AND claim = :claim
""").bindparams(bindparam("headers", type_=JSONB), bindparam("body", type_=LargeBinary))

_RELEASE = text(
    "DELETE FROM idempotency_keys"
    " WHERE principal = :principal AND method = :method AND route = :route AND key = :key AND claim = :claim"
)


class Store:
    """The key records of one database. `claim`, `complete_now` and `release` each take a pooled
    connection for one statement in autocommit and give it back: a request holds no connection
    for its key while its handler waits on anything else."""

    def __init__(self, engine: AsyncEngine, *, lease_s: float, retention_s: float) -> None:
        self.engine = engine
        self.lease_s = lease_s
        self.retention_s = retention_s

    async def claim(self, scope: KeyScope, fingerprint: str) -> uuid.UUID | Found:
        """The new claim's token, or what holds the key already."""
        token = uuid.uuid4()
        params = {
            **asdict(scope),
            "fingerprint": fingerprint,
            "claim": token,
            "lease_s": self.lease_s,
            "retention_s": self.retention_s,
        }
        async with self._autocommit() as connection:
            row = (await connection.execute(_CLAIM, params)).first()
            if row is None:  # committed by another request after this statement's snapshot
                row = (await connection.execute(_READ, asdict(scope))).first()
        if row is None:  # answered without effect and released in between: as good as in flight
            return Found(fingerprint, None, None, None)
        if getattr(row, "claimed", False):
            return token
        return Found(row.fingerprint, row.status_code, row.headers, row.body)

    async def complete(
        self, session: AsyncSession, scope: KeyScope, token: uuid.UUID, response: Response
    ) -> bool:
        """Store the answer in the request's own transaction: it commits with the effect or not at
        all. False when the claim is no longer this request's."""
        result = await session.execute(_COMPLETE, self._answer(scope, token, response))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def complete_now(self, scope: KeyScope, token: uuid.UUID, response: Response) -> None:
        """Store an answer that has no effect to commit with (the handler refused the request); a
        claim that is no longer this request's is left alone."""
        async with self._autocommit() as connection:
            await connection.execute(_COMPLETE, self._answer(scope, token, response))

    async def release(self, scope: KeyScope, token: uuid.UUID) -> None:
        """Give the key up without an answer: the next request with it runs."""
        async with self._autocommit() as connection:
            await connection.execute(_RELEASE, {**asdict(scope), "claim": token})

    def _answer(self, scope: KeyScope, token: uuid.UUID, response: Response) -> dict[str, Any]:
        headers = {name: response.headers[name] for name in STORED_HEADERS if name in response.headers}
        return {
            **asdict(scope),
            "claim": token,
            "status_code": response.status_code,
            "headers": headers,
            "body": bytes(response.body),
            "retention_s": self.retention_s,
        }

    @asynccontextmanager
    async def _autocommit(self) -> AsyncIterator[AsyncConnection]:
        # Autocommit: one statement is one round trip, with no BEGIN and COMMIT around it.
        async with self.engine.connect() as connection:
            yield await connection.execution_options(isolation_level="AUTOCOMMIT")
