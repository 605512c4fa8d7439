"""The dependencies a route declares: `require("items:write")`, `PrincipalDep`."""

from __future__ import annotations

from collections.abc import Iterator
from http import HTTPStatus
from typing import Annotated
from typing import Any

import structlog
from fastapi import Depends
from fastapi import FastAPI
from fastapi import Request
from fastapi import Security
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.security import HTTPBearer
from fastapi.security import SecurityScopes

from {{ cookiecutter.package_name }}.platform import errors
from {{ cookiecutter.package_name }}.platform.auth.keys import KeysUnavailable
from {{ cookiecutter.package_name }}.platform.auth.principal import Principal
from {{ cookiecutter.package_name }}.platform.auth.tokens import InvalidToken
from {{ cookiecutter.package_name }}.platform.auth.tokens import TokenVerifier

log = structlog.get_logger(__name__)

# The OpenAPI security scheme; auto_error off, so that a missing token is this module's RFC 6750 401.
bearer = HTTPBearer(
    scheme_name="bearer",
    bearerFormat="JWT",
    description="A JWT from the identity provider: `Authorization: Bearer <token>`.",
    auto_error=False,
)


class Unauthorized(errors.ServiceError):
    """401 with the RFC 6750 challenge: no error code for a missing token, `invalid_token` else."""

    status, slug = 401, "unauthorized"

    def __init__(self, detail: str, *, realm: str, error: str | None = None) -> None:
        challenge = f'Bearer realm="{realm}"'
        if error is not None:
            challenge += f', error="{error}", error_description="{detail}"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(errors.ServiceError):
    status, slug = 403, "insufficient-scope"

    def __init__(self, missing: frozenset[str], *, realm: str) -> None:
        scope = " ".join(sorted(missing))
        super().__init__(
            f"The token lacks the scope this operation requires: {scope}.",
            headers={
                "WWW-Authenticate": f'Bearer realm="{realm}", error="insufficient_scope", scope="{scope}"'
            },
        )


class Authenticator:
    """How this process authenticates: a verifier of tokens, or a fixed principal (development,
    AUTH_MODE=none). Made at start-up, kept on `app.state.authenticator`."""

    def __init__(
        self, *, realm: str, verifier: TokenVerifier | None = None, fixed: Principal | None = None
    ) -> None:
        assert (verifier is None) != (fixed is None), "a verifier or a fixed principal"
        self.realm = realm
        self.verifier = verifier
        self.fixed = fixed
        self.checks_scopes = True  # False behind a gateway that authorizes (AUTH_MODE=none)

    async def principal(self, credentials: HTTPAuthorizationCredentials | None) -> Principal:
        if self.fixed is not None:
            return self.fixed
        assert self.verifier is not None
        if credentials is None:
            raise Unauthorized("A bearer token is required.", realm=self.realm)
        try:
            return await self.verifier.verify(credentials.credentials)
        except InvalidToken as exc:
            log.info("token_refused", reason=exc.reason)
            raise Unauthorized(exc.reason, realm=self.realm, error="invalid_token") from None
        except KeysUnavailable:
            raise errors.ServiceUnavailable(
                "The identity provider cannot be reached to verify the token; retry shortly.",
                slug="identity-provider-unavailable",
                headers={"Retry-After": "5"},
            ) from None


async def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """The request's principal, verified once per request and kept at `request.state.principal`.
    Binds `actor_id` to the log context, so every later line of the request carries it."""
    state = request.scope.setdefault("state", {})
    principal = state.get("principal")
    if isinstance(principal, Principal):
        return principal
    authenticator: Authenticator = request.app.state.authenticator
    principal = await authenticator.principal(credentials)
    state["principal"] = principal
    structlog.contextvars.bind_contextvars(actor_id=principal.subject)
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]
"""The authenticated caller, for a handler that needs it; requires a valid token, no scope."""


class _Scopes:
    """The dependency `require` declares: checks the scopes FastAPI collected (`SecurityScopes`)."""

    def __init__(self, scopes: tuple[str, ...]) -> None:
        self.scopes = frozenset(scopes)

    async def __call__(
        self, request: Request, security_scopes: SecurityScopes, principal: PrincipalDep
    ) -> Principal:
        authenticator: Authenticator = request.app.state.authenticator
        missing = frozenset(security_scopes.scopes) - principal.scopes
        if missing and authenticator.checks_scopes:
            log.info("scope_refused", missing=sorted(missing))
            raise Forbidden(missing, realm=authenticator.realm)
        return principal


def require(*scopes: str) -> Any:
    """The one declaration: `dependencies=[require("items:write")]` on a route or router, or
    `principal: Annotated[Principal, require("items:read")]`. 401 without a valid token, 403
    without every scope named. Declare it in `dependencies=` on an idempotent route: those run
    before the Idempotency-Key is claimed, so a refusal is never stored and replayed."""
    return Security(_Scopes(scopes), scopes=list(scopes))


def declared_scopes(app: FastAPI) -> frozenset[str]:
    """Every scope a route of `app` requires, as its OpenAPI document declares them."""
    found: set[str] = set()
    for operation in _operations(app.openapi()):
        for requirement in operation.get("security", ()):
            found.update(requirement.get(bearer.scheme_name, ()))
    return frozenset(found)


def document_problems(app: FastAPI) -> None:
    """Add 401, 503 (and 403 when it names scopes) to the OpenAPI responses of every operation that
    declares the bearer scheme: the document says what `require` does, with nothing to remember.
    FastAPI lets no dependency add responses, so the document is completed once it is generated."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        problem = {"$ref": "#/components/schemas/Problem"}
        for operation in _operations(document):
            scopes = [
                scope
                for requirement in operation.get("security", ())
                if bearer.scheme_name in requirement
                for scope in requirement[bearer.scheme_name]
            ]
            if not any(bearer.scheme_name in requirement for requirement in operation.get("security", ())):
                continue
            responses = operation.setdefault("responses", {})
            # 503: the identity provider's keys are needed and it cannot be reached.
            for status in (401, 403, 503) if scopes else (401, 503):
                responses.setdefault(
                    str(status),
                    {
                        "description": HTTPStatus(status).phrase,
                        "content": {"application/json": {"schema": problem}, errors.PROBLEM_JSON: {}},
                    },
                )
            document.setdefault("components", {}).setdefault("schemas", {}).setdefault(
                "Problem", errors.Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            )
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _operations(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            if isinstance(operation, dict):
                yield operation
