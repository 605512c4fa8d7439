"""`Idempotency-Key` on unsafe requests: a retried POST takes effect once, and gets the first answer.

Standard: Reliability / Idempotency (IETF httpapi draft "The Idempotency-Key HTTP Header Field",
Stripe's documented behaviour). Tuned by `IDEMPOTENCY_RETENTION_S` (default 24 h) and
`IDEMPOTENCY_PURGE_INTERVAL_S`.

A route opts in with one declaration, `dependencies=[RequireIdempotencyKey]`, on a router whose
`route_class` is `IdempotentRoute`. Then, inside the request's one transaction (`SessionDep`):

1. The key is read (a bare token or an RFC 8941 quoted string; 1-255 safe characters; missing or
   malformed: 400) and scoped by principal, method and route template.
2. A stored response for the key (not expired) is replayed byte for byte, status, body and the
   stored headers, with `Idempotent-Replayed: true`; if the request's fingerprint (SHA-256 of method,
   path, query and canonical JSON body) differs, 422. This lookup takes no lock.
3. Otherwise the handler runs. At the first statement of its transaction, a PostgreSQL advisory
   lock on the key's scope is taken without waiting (held by another request: the key is in
   flight, 409 with `Retry-After`). The lock lives in the database, so it holds across processes
   and replicas, and is released when the transaction ends, whatever ends it. Work before the
   first statement (an upstream call) holds no connection.
4. The response the handler returns is stored in the same transaction as its effect: both
   commit, or neither. The store replaces only an expired record: if another request with the
   key committed between step 2 and the lock, the store finds its row, this transaction rolls
   back (its effect with it) and the other's answer is replayed. So an effect commits once.
   The guarantee covers effects in this database.

What is stored: every response the handler returns with a status below 500. Not stored: validation
failures before the handler, errors the handler raises (problem+json 4xx) and every 5xx or crash:
the transaction rolls back with them, so no record blocks a retry and the retry runs the handler
again, which is safe since the failed attempt had no effect. (Stripe also stores raised 4xx; not
storing them keeps one transaction per request, and a retry may then succeed once the cause, e.g.
missing stock, is gone.)

Records expire after the retention; `purge_expired` deletes them in small batches (a periodic task
of the app, and `python -m <package> purge-idempotency-keys`).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable
from collections.abc import Coroutine
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from typing import Annotated
from typing import Any

import orjson
import structlog
from fastapi import Depends
from fastapi import FastAPI
from fastapi import Header
from fastapi import Request
from fastapi import Response
from fastapi.routing import APIRoute
from sqlalchemy import BigInteger
from sqlalchemy import Connection
from sqlalchemy import DateTime
from sqlalchemy import Index
from sqlalchemy import LargeBinary
from sqlalchemy import Row
from sqlalchemy import Text
from sqlalchemy import event
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import Session
from sqlalchemy.orm import SessionTransaction
from sqlalchemy.orm import mapped_column
from sqlalchemy.sql import Executable

from {{ cookiecutter.package_name }}.db.base import Base
from {{ cookiecutter.package_name }}.db.session import SessionDep
from {{ cookiecutter.package_name }}.platform.errors import BadRequest
from {{ cookiecutter.package_name }}.platform.errors import Conflict
from {{ cookiecutter.package_name }}.platform.errors import ServiceError
from {{ cookiecutter.package_name }}.platform.metrics import Metrics

log = structlog.get_logger(__name__)

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# Characters a key may have: what UUIDs, ULIDs and base64url tokens use, nothing that needs quoting.
_SAFE_KEY = re.compile(r"[A-Za-z0-9._:~+/=-]{1,255}")
# Headers a replay gives back: what describes the stored body and the created resource.
STORED_HEADERS = ("content-type", "location", "etag", "content-language")
PURGE_BATCH = 1000
ANONYMOUS = "-"


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_expires_at", "expires_at"),)

    principal: Mapped[str] = mapped_column(Text, primary_key=True)
    method: Mapped[str] = mapped_column(Text, primary_key=True)
    route: Mapped[str] = mapped_column(Text, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int] = mapped_column(BigInteger)
    headers: Mapped[dict[str, str]] = mapped_column(JSONB)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class KeyInFlight(Conflict):
    slug = "idempotency-key-in-use"


class KeyReused(ServiceError):
    status, slug = 422, "idempotency-key-reused"


class _Replay(Exception):
    """The stored answer, raised so that the request's transaction rolls back (it wrote nothing),
    and sent by the handler `install` registers."""

    def __init__(self, response: Response) -> None:
        self.response = response


async def _send_replay(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _Replay)
    return exc.response


def install(app: FastAPI) -> None:
    app.add_exception_handler(_Replay, _send_replay)


class _Claim:
    """A request's hold on its key. The key's lock is taken at the first statement of the
    request's transaction (`after_begin`), not before the handler runs: work the handler does
    before touching the database (the example's stock check upstream) holds no connection."""

    def __init__(
        self,
        session: AsyncSession,
        identity: dict[str, str],
        fingerprint: str,
        expires_at: datetime,
        metrics: Metrics,
    ) -> None:
        self.session = session
        self.identity = identity
        self.fingerprint = fingerprint
        self.expires_at = expires_at
        self.metrics = metrics
        event.listen(session.sync_session, "after_begin", self._lock, once=True)

    def _lock(self, _session: Session, _transaction: SessionTransaction, connection: Connection) -> None:
        lock_name = "\x1f".join(self.identity.values())
        locked = connection.scalar(
            select(func.pg_try_advisory_xact_lock(func.hashtextextended(lock_name, 0)))
        )
        if not locked:
            self.metrics.idempotency.labels("conflict").inc()
            log.info("idempotency_conflict", route=self.identity["route"], method=self.identity["method"])
            raise KeyInFlight(
                "A request with this Idempotency-Key is still in progress; retry later.",
                headers={"Retry-After": "1"},
            )

    async def store(self, response: Response) -> None:
        headers = {name: response.headers[name] for name in STORED_HEADERS if name in response.headers}
        values = {
            **self.identity,
            "fingerprint": self.fingerprint,
            "status_code": response.status_code,
            "headers": headers,
            "body": bytes(response.body),
            "expires_at": self.expires_at,
        }
        new = insert(IdempotencyRecord).values(values)
        # Only an expired record of the key may be replaced. A live one is another request's,
        # committed after this one's lock-free lookup and before it took the lock: this request's
        # effect must not commit. Its answer is raised (its transaction rolls back) instead.
        upsert = new.on_conflict_do_update(
            index_elements=["principal", "method", "route", "key"],
            set_={name: new.excluded[name] for name in values if name not in self.identity},
            where=IdempotencyRecord.expires_at <= func.now(),
        ).returning(IdempotencyRecord.key)
        if (await self.session.execute(upsert)).first() is None:
            record = (await self.session.execute(_lookup(self.identity))).first()
            if record is None:
                raise RuntimeError("an idempotency record conflicted but cannot be read")
            raise _outcome(record, self.fingerprint, self.metrics, self.identity)
        self.metrics.idempotency.labels("stored").inc()


def _lookup(identity: dict[str, str]) -> Executable:
    """The key's live record, if any (an expired one counts as absent)."""
    return select(
        IdempotencyRecord.fingerprint,
        IdempotencyRecord.status_code,
        IdempotencyRecord.headers,
        IdempotencyRecord.body,
    ).where(
        *(getattr(IdempotencyRecord, name) == value for name, value in identity.items()),
        IdempotencyRecord.expires_at > func.now(),
    )


def _outcome(record: Row[Any], fingerprint: str, metrics: Metrics, identity: dict[str, str]) -> Exception:
    """What a found record means for this request: its replay, or a refusal."""
    if record.fingerprint != fingerprint:
        metrics.idempotency.labels("mismatch").inc()
        log.info("idempotency_mismatch", route=identity["route"], method=identity["method"])
        return KeyReused("This Idempotency-Key was used with a different request.")
    metrics.idempotency.labels("replay").inc()
    log.info(
        "idempotent_replay", route=identity["route"], method=identity["method"], status=record.status_code
    )
    replay = Response(content=record.body, status_code=record.status_code, headers=record.headers)
    replay.headers[REPLAYED_HEADER] = "true"
    return _Replay(replay)


def current_principal() -> str:
    """Who the key belongs to. Without authentication there is one scope; a service that
    authenticates overrides this dependency with one returning the subject or tenant:
    `app.dependency_overrides[idempotency.current_principal] = auth.current_subject`."""
    return ANONYMOUS


def parse_key(raw: str | None) -> str:
    """The key from the header: a bare token or an RFC 8941 sf-string (`"..."`)."""
    if raw is None:
        raise BadRequest(f"This request needs an {KEY_HEADER} header.", slug="idempotency-key-missing")
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not _SAFE_KEY.fullmatch(key):
        raise BadRequest(
            f"{KEY_HEADER} must be 1 to 255 characters from A-Z a-z 0-9 . _ : ~ + / = -",
            slug="idempotency-key-invalid",
        )
    return key


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """SHA-256 of the request's meaning: JSON bodies are canonical, so whitespace and key order
    do not make a retry look different."""
    try:
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS) if body else b""
    except orjson.JSONDecodeError:
        canonical = body
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), "&".join(sorted(query.split("&"))).encode(), canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


async def _require_key(
    request: Request,
    session: SessionDep,
    principal: Annotated[str, Depends(current_principal)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=KEY_HEADER,
            description=(
                "Required. A unique value per operation (a UUID is ideal). A retry with the same key "
                "and the same request returns the first response with `Idempotent-Replayed: true`; "
                "with a different request, 422; while the first is in flight, 409. Responses are "
                "kept for IDEMPOTENCY_RETENTION_S (24 hours by default)."
            ),
            examples=["8e03978e-40d5-43e8-bc93-6894a57f9324"],
        ),
    ] = None,
) -> None:
    route = request.scope.get("route")
    if not isinstance(route, IdempotentRoute):
        raise TypeError(f"{request.url.path}: RequireIdempotencyKey needs route_class=IdempotentRoute")
    key = parse_key(idempotency_key)
    metrics: Metrics = request.app.state.metrics
    identity = {"principal": principal, "method": request.method, "route": route.path, "key": key}
    request_fingerprint = fingerprint(
        request.method, request.url.path, request.url.query, await request.body()
    )

    # The common retry, a replay, is answered here: one statement on a pooled connection in
    # autocommit (no transaction to open or close), no lock. A miss proves nothing yet: storing
    # the answer checks again, atomically, against the key's row.
    engine: AsyncEngine = request.app.state.engine
    async with engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        record = (await autocommit.execute(_lookup(identity))).first()
    if record is not None:
        raise _outcome(record, request_fingerprint, metrics, identity)

    retention = timedelta(seconds=request.app.state.settings.idempotency_retention_s)
    request.state.idempotency_claim = _Claim(
        session, identity, request_fingerprint, datetime.now(UTC) + retention, metrics
    )


RequireIdempotencyKey = Depends(_require_key, scope="function")


class IdempotentRoute(APIRoute):
    """Stores what an idempotent route answers, inside the request's transaction (before the
    commit that `SessionDep` makes once the response exists). Inert on routes without the key."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_idempotently(request: Request) -> Response:
            response = await handle(request)
            claim: _Claim | None = getattr(request.state, "idempotency_claim", None)
            if claim is not None and response.status_code < 500:
                await claim.store(response)
            return response

        return handle_idempotently


async def purge_expired(engine: AsyncEngine, *, batch: int = PURGE_BATCH) -> int:
    """Delete expired records, `batch` rows per short transaction; SKIP LOCKED, so replicas
    purging at once neither wait for each other nor for requests. Returns the rows deleted."""
    deleted = 0
    statement = text(
        "DELETE FROM idempotency_keys WHERE ctid IN ("
        " SELECT ctid FROM idempotency_keys WHERE expires_at < now() LIMIT :batch FOR UPDATE SKIP LOCKED)"
    )
    while True:
        async with engine.begin() as connection:
            count = (await connection.execute(statement, {"batch": batch})).rowcount
        deleted += count
        if count < batch:
            return deleted


async def purge_periodically(engine: AsyncEngine, interval_s: float) -> None:
    """The app's purge task: runs until cancelled; a failed round is logged and retried later."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            deleted = await purge_expired(engine)
        except Exception:  # the database may be down; the next round tries again
            log.warning("idempotency_purge_failed", exc_info=True)
        else:
            if deleted:
                log.info("idempotency_keys_purged", deleted=deleted)
