"""`IdempotentRoute`: the one declaration, and what it does around each unsafe request."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Coroutine
from typing import Annotated
from typing import Any

import structlog
from fastapi import Depends
from fastapi import FastAPI
from fastapi import Request
from fastapi import Response
from fastapi.dependencies.utils import get_typed_return_annotation
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import FileResponse
from starlette.responses import StreamingResponse

from {{ cookiecutter.package_name }}.db.session import SessionDep
from {{ cookiecutter.package_name }}.platform import errors
from {{ cookiecutter.package_name }}.platform.auth import PrincipalDep
from {{ cookiecutter.package_name }}.platform.errors import Conflict
from {{ cookiecutter.package_name }}.platform.errors import ServiceError
from {{ cookiecutter.package_name }}.platform.idempotency.key import KEY_HEADER
from {{ cookiecutter.package_name }}.platform.idempotency.key import KEY_PARAMETER
from {{ cookiecutter.package_name }}.platform.idempotency.key import fingerprint
from {{ cookiecutter.package_name }}.platform.idempotency.key import parse_key
from {{ cookiecutter.package_name }}.platform.idempotency.store import Found
from {{ cookiecutter.package_name }}.platform.idempotency.store import KeyScope
from {{ cookiecutter.package_name }}.platform.idempotency.store import Store
from {{ cookiecutter.package_name }}.platform.metrics import Metrics

log = structlog.get_logger(__name__)

REPLAYED_HEADER = "Idempotent-Replayed"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class KeyInFlight(Conflict):
    slug = "idempotency-key-in-use"

    def __init__(self) -> None:
        super().__init__(
            "A request with this Idempotency-Key is still in progress; retry later.",
            headers={"Retry-After": "1"},
        )


class KeyReused(ServiceError):
    status, slug = 422, "idempotency-key-reused"


class _Answer(Exception):
    """A response decided outside the handler's normal return: a replay (nothing ran), or a 5xx
    the handler returned. Raised, so that the request's transaction rolls back; sent as it is by
    the handler `install` registers."""

    def __init__(self, response: Response) -> None:
        self.response = response


async def _send_answer(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _Answer)
    return exc.response


def install(app: FastAPI) -> None:
    app.add_exception_handler(_Answer, _send_answer)


class Claim:
    """A request's hold on its key, from the claim until its answer is stored or the key is
    released."""

    def __init__(self, store: Store, scope: KeyScope, token: uuid.UUID, metrics: Metrics) -> None:
        self.store = store
        self.scope = scope
        self.token = token
        self.metrics = metrics
        self.session: AsyncSession | None = None  # the request's, bound before the handler runs
        self.lost = False  # the lease ran out and another request took the key over

    def derive(self, purpose: str) -> str:
        """An Idempotency-Key for a call this request makes to an upstream: the same on every
        retry of this request, different for each `purpose` and for every other key, so the
        upstream can de-duplicate what a retry sends it again."""
        scope = self.scope
        material = "\x1f".join((scope.principal, scope.method, scope.route, scope.key, purpose))
        return hashlib.sha256(material.encode()).hexdigest()

    async def complete(self, response: Response) -> None:
        """Store the answer in the request's transaction, beside its effect."""
        assert self.session is not None, "the claim is bound to the request's session first"
        if not await self.store.complete(self.session, self.scope, self.token, response):
            # The lease ran out and another request took the key over: it owns the effect now.
            self.lost = True
            self._outcome("lost")
            log.warning("idempotency_lost", route=self.scope.route, method=self.scope.method)
            raise KeyInFlight()
        self._outcome("stored")

    async def settle(self, exc: BaseException, answer: Response | None) -> None:
        """After a request that raised: store the handler's refusal (`answer`, a 4xx) so that a
        retry gets it again, or else release the key. Both statements match this claim's token
        only, so they change nothing once an answer committed (the token is cleared) or another
        request took the key over: a failed commit releases the key, a failed send does not."""
        if self.lost:
            return
        try:
            if answer is not None and answer.status_code < 500:
                await _outlive_cancellation(self.store.complete_now(self.scope, self.token, answer))
                self._outcome("stored")
            else:
                await _outlive_cancellation(self.store.release(self.scope, self.token))
                self._outcome("released")
                log.info("idempotency_released", route=self.scope.route, error=type(exc).__name__)
        except Exception:  # the database is down too: the lease frees the key later
            log.warning("idempotency_release_failed", route=self.scope.route, exc_info=True)

    def _outcome(self, outcome: str) -> None:
        self.metrics.idempotency.labels(outcome).inc()


# Tasks that must finish although the request that started them was cancelled.
_unfinished: set[asyncio.Task[Any]] = set()


async def _outlive_cancellation(work: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.ensure_future(work)
    _unfinished.add(task)
    task.add_done_callback(_unfinished.discard)
    await asyncio.shield(task)


async def current_principal(principal: PrincipalDep) -> str:
    """Who the key belongs to: the authenticated subject. One caller can neither replay nor probe
    another's key (the same key from another subject is another record). Depending on
    `authenticate`, an unauthenticated request is refused before any key is claimed. (`async`,
    though it awaits nothing: FastAPI runs a plain `def` dependency in a worker thread, a thread
    hand-off per request.)"""
    return principal.subject


def _replay_or_refusal(
    found: Found, request_fingerprint: str, scope: KeyScope, metrics: Metrics
) -> Exception:
    """What a key held by another request means for this one."""
    where = {"route": scope.route, "method": scope.method}
    if found.fingerprint != request_fingerprint:
        metrics.idempotency.labels("mismatch").inc()
        log.info("idempotency_mismatch", **where)
        return KeyReused("This Idempotency-Key was used with a different request.")
    if found.status_code is None:
        metrics.idempotency.labels("conflict").inc()
        log.info("idempotency_conflict", **where)
        return KeyInFlight()
    metrics.idempotency.labels("replay").inc()
    log.info("idempotent_replay", status=found.status_code, **where)
    replay = Response(content=found.body, status_code=found.status_code, headers=found.headers)
    replay.headers[REPLAYED_HEADER] = "true"
    return _Answer(replay)


async def _claim(
    request: Request, principal: Annotated[str, Depends(current_principal)]
) -> AsyncIterator[Claim]:
    """Claim the key before anything of the handler runs; after the request, settle the claim.
    Request-scoped: the settling runs once the request's transaction has ended."""
    # Read here, not declared as a FastAPI parameter: a missing key is this standard's 400, not a
    # 422 field error. The OpenAPI document declares it required (`KEY_PARAMETER`).
    key = parse_key(request.headers.get(KEY_HEADER))
    metrics: Metrics = request.app.state.metrics
    route: APIRoute = request.scope["route"]
    scope = KeyScope(principal=principal, method=request.method, route=route.path, key=key)
    request_fingerprint = fingerprint(
        request.method, request.url.path, request.url.query, await request.body()
    )
    store: Store = request.app.state.idempotency
    claimed = await store.claim(scope, request_fingerprint)
    if isinstance(claimed, Found):
        raise _replay_or_refusal(claimed, request_fingerprint, scope, metrics)
    claim = Claim(store, scope, claimed, metrics)
    request.state.idempotency_claim = claim
    try:
        yield claim
    except BaseException as exc:
        await claim.settle(exc, errors.answer(request, exc) if isinstance(exc, Exception) else None)
        raise


async def _bind_session(claim: Annotated[Claim, Depends(_claim)], session: SessionDep) -> Claim:
    claim.session = session
    return claim


ClaimDep = Annotated[Claim, Depends(_bind_session)]
"""The request's claim, for a handler that passes `claim.derive("purpose")` to an upstream."""


# What the platform itself can answer on every idempotent route: the key's 400/409/422, and 413
# for a body over MAX_BODY_BYTES (an unsafe route takes a body).
KEY_PROBLEMS = (400, 409, 413, 422)


class IdempotentRoute(APIRoute):
    """The one declaration: `APIRouter(route_class=IdempotentRoute)`. Each unsafe route of the
    router (POST, PUT, PATCH, DELETE) requires an `Idempotency-Key`; its safe routes are untouched.
    A set-up that cannot be made idempotent stops start-up here, naming the route."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        methods = {method.upper() for method in kwargs.get("methods") or ()}
        self.idempotent = bool(methods & UNSAFE_METHODS)
        if self.idempotent:
            where = f"{'/'.join(sorted(methods))} {path}"
            if methods - UNSAFE_METHODS:
                raise TypeError(f"{where}: an idempotent route cannot also serve safe methods; split it")
            if _streams(kwargs.get("response_class"), endpoint):
                raise TypeError(f"{where}: a streaming or file response cannot be stored and replayed")
            # The route's own dependencies first: its scope check (`auth.require`) refuses a request
            # before the key is claimed, so that a 403 is never stored and replayed.
            kwargs["dependencies"] = [*(kwargs.get("dependencies") or ()), Depends(_bind_session)]
            extra = dict(kwargs.get("openapi_extra") or {})
            extra["parameters"] = [KEY_PARAMETER, *extra.get("parameters", ())]
            kwargs["openapi_extra"] = extra
            kwargs["responses"] = {
                **{code: errors.PROBLEM_RESPONSES[code] for code in KEY_PROBLEMS},
                **(kwargs.get("responses") or {}),
            }
        super().__init__(path, endpoint, **kwargs)
        if self.idempotent and (self.is_sse_stream or self.is_json_stream):
            raise TypeError(f"{path}: a streaming response cannot be stored and replayed")

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        return _storing(handle) if self.idempotent else handle


def _streams(response_class: object, endpoint: Callable[..., Any]) -> bool:
    returned = get_typed_return_annotation(endpoint)
    return any(
        isinstance(candidate, type) and issubclass(candidate, StreamingResponse | FileResponse)
        for candidate in (getattr(response_class, "value", response_class), returned)
    )


def _storing(
    handle: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Coroutine[Any, Any, Response]]:
    async def handle_idempotently(request: Request) -> Response:
        response = await handle(request)
        if response.status_code >= 500:
            raise _Answer(response)  # one rule with a raised error: its writes roll back
        if not hasattr(response, "body"):
            raise TypeError(f"{request.scope['route'].path}: a streamed response cannot be stored")
        claim: Claim = request.state.idempotency_claim
        await claim.complete(response)
        return response

    return handle_idempotently
