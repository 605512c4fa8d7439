"""Authentication and authorization: bearer JWTs verified against the identity provider's JWKS.

Standard: Security (least privilege; secrets never logged; auditability through the actor id) and
Governance (audit trails). Tuned by `AUTH_MODE`, `AUTH_JWKS_URL`, `AUTH_ISSUER`, `AUTH_AUDIENCE`,
`AUTH_ALGORITHMS`, `AUTH_LEEWAY_S`, `AUTH_JWKS_CACHE_S`, `AUTH_JWKS_MIN_REFRESH_S`,
`AUTH_TENANT_CLAIM`.

A route declares the scopes it needs, once: `dependencies=[require("items:write")]`. Per request:

1. `authenticate` reads `Authorization: Bearer <token>`; missing: 401 with
   `WWW-Authenticate: Bearer realm="<service>"`.
2. The token is verified (`tokens`): its `alg` on the allow-list (asymmetric only: never `none`,
   never HS*), its `kid` among the cached keys (`keys`: refreshed on an unknown `kid`, at most once
   per AUTH_JWKS_MIN_REFRESH_S), the signature, `exp`/`nbf`/`iat` within AUTH_LEEWAY_S, `iss` and
   `aud`. Any failure: 401 `error="invalid_token"` with a client-safe `error_description`; an
   unknown key while the identity provider is unreachable: 503 `identity-provider-unavailable`.
3. The principal (`Principal`: subject, tenant, scopes) is kept at `request.state.principal`, and
   `actor_id` (the subject) is bound to the log context: every later log line of the request, and
   its access line, carries it. Idempotency keys belong to the subject.
4. A scope the principal lacks: 403 `error="insufficient_scope", scope="..."`.

Without AUTH_JWKS_URL in development, every request runs as the development principal (subject
`developer`, every declared scope), which start-up warns about once. With AUTH_MODE=none a gateway
or mesh has authenticated: every request runs as the subject `gateway` and no scope is checked.
Any other environment without either refuses to start (`settings`). The token itself is never
logged, traced nor echoed in an error.
"""

from __future__ import annotations

import httpx
import structlog
from fastapi import FastAPI

from {{ cookiecutter.package_name }}.platform.auth.keys import JwksCache
from {{ cookiecutter.package_name }}.platform.auth.keys import KeysUnavailable
from {{ cookiecutter.package_name }}.platform.auth.principal import DEVELOPMENT_SUBJECT
from {{ cookiecutter.package_name }}.platform.auth.principal import GATEWAY_SUBJECT
from {{ cookiecutter.package_name }}.platform.auth.principal import Principal
from {{ cookiecutter.package_name }}.platform.auth.route import Authenticator
from {{ cookiecutter.package_name }}.platform.auth.route import Forbidden
from {{ cookiecutter.package_name }}.platform.auth.route import PrincipalDep
from {{ cookiecutter.package_name }}.platform.auth.route import Unauthorized
from {{ cookiecutter.package_name }}.platform.auth.route import authenticate
from {{ cookiecutter.package_name }}.platform.auth.route import bearer
from {{ cookiecutter.package_name }}.platform.auth.route import declared_scopes
from {{ cookiecutter.package_name }}.platform.auth.route import document_problems
from {{ cookiecutter.package_name }}.platform.auth.route import require
from {{ cookiecutter.package_name }}.platform.auth.tokens import TokenVerifier
from {{ cookiecutter.package_name }}.platform.resilience import Upstreams
from {{ cookiecutter.package_name }}.settings import Settings

log = structlog.get_logger(__name__)

__all__ = [
    "Authenticator",
    "Forbidden",
    "Principal",
    "PrincipalDep",
    "Unauthorized",
    "authenticate",
    "bearer",
    "install",
    "require",
    "start",
    "stop",
]


def install(app: FastAPI) -> None:
    """After the routers are included: document 401/403 on every route that authenticates."""
    document_problems(app)


async def start(app: FastAPI, settings: Settings, upstreams: Upstreams) -> Authenticator:
    """The process's authenticator, at start-up. With a JWKS, its keys are fetched once now; a
    failure is logged and retried by the first request that needs them (start-up does not wait
    on the identity provider, and /ready does not check it: a replica that cannot verify tokens
    answers 503 `identity-provider-unavailable` itself, and would be no better off restarted)."""
    realm = settings.service_name
    mode = settings.auth_resolved_mode()
    if mode == "development":
        scopes = declared_scopes(app)
        log.warning(
            "authentication_disabled",
            reason="AUTH_JWKS_URL is not set and ENVIRONMENT=development",
            subject=DEVELOPMENT_SUBJECT,
            scopes=sorted(scopes),
        )
        return Authenticator(realm=realm, fixed=Principal(DEVELOPMENT_SUBJECT, None, scopes))
    if mode == "none":
        log.info("authentication_delegated", reason="AUTH_MODE=none: a gateway or mesh authenticates")
        authenticator = Authenticator(realm=realm, fixed=Principal(GATEWAY_SUBJECT, None, frozenset()))
        authenticator.checks_scopes = False
        return authenticator
    assert settings.auth_jwks_url is not None
    assert settings.auth_issuer
    assert settings.auth_audience
    url = httpx.URL(str(settings.auth_jwks_url))
    upstream = upstreams.get("identity-provider", f"{url.scheme}://{url.netloc.decode()}")
    path = url.raw_path.decode()

    async def fetch() -> bytes:
        response = await upstream.request("GET", path, headers={"Accept": "application/json"})
        if response.status_code != 200:
            raise KeysUnavailable(f"the JWKS answered {response.status_code}")
        return response.content

    keys = JwksCache(
        fetch, cache_s=settings.auth_jwks_cache_s, min_refresh_s=settings.auth_jwks_min_refresh_s
    )
    await keys.refresh()
    verifier = TokenVerifier(
        keys,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        algorithms=settings.auth_algorithms,
        leeway_s=settings.auth_leeway_s,
        tenant_claim=settings.auth_tenant_claim,
    )
    return Authenticator(realm=realm, verifier=verifier)


async def stop(authenticator: Authenticator) -> None:
    """Cancel a key fetch still in flight."""
    if authenticator.verifier is not None:
        await authenticator.verifier.keys.close()
