"""Bearer tokens against a real JWKS server on 127.0.0.1 (`tests.jwks`), on a real PostgreSQL.

The routes are the test's own: `GET /items` needs `items:read`, `POST /items` (idempotent) needs
`items:write`; each execution of the POST answers a new id, so a replay is told from a new run.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter
from fastapi import FastAPI
from fastapi import Request
from sqlalchemy.engine import URL

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.platform.auth import Principal
from {{ cookiecutter.package_name }}.platform.auth import PrincipalDep
from {{ cookiecutter.package_name }}.platform.auth import require
from {{ cookiecutter.package_name }}.platform.auth.keys import JwksCache
from {{ cookiecutter.package_name }}.platform.auth.tokens import MAX_TOKEN_CHARS
from {{ cookiecutter.package_name }}.platform.auth.tokens import InvalidToken
from {{ cookiecutter.package_name }}.platform.auth.tokens import TokenVerifier
from {{ cookiecutter.package_name }}.platform.idempotency import ClaimDep
from {{ cookiecutter.package_name }}.platform.idempotency import IdempotentRoute
from {{ cookiecutter.package_name }}.settings import Settings

from tests.conftest import PROJECT
from tests.conftest import captured_logs
from tests.conftest import make_settings
from tests.conftest import serving
from tests.jwks import AUDIENCE
from tests.jwks import ISSUER
from tests.jwks import JwksServer
from tests.jwks import SigningKey
from tests.upstream import closed_port

MIN_REFRESH_S = 0.3

log = structlog.get_logger(__name__)

router = APIRouter(route_class=IdempotentRoute)


@router.get("/items", dependencies=[require("items:read")])
async def list_items(principal: PrincipalDep) -> dict[str, Any]:
    log.info("items_listed")  # a line of the handler's own: it must carry the actor too
    return {"subject": principal.subject, "tenant": principal.tenant, "scopes": sorted(principal.scopes)}


@router.get("/kept", dependencies=[require("items:read")])
async def kept_principal(request: Request) -> dict[str, str]:
    # A handler that declares no PrincipalDep reads the principal from the request's state.
    return {"subject": request.state.principal.subject}


@router.post("/items", status_code=201, dependencies=[require("items:write")])
async def create_item(claim: ClaimDep) -> dict[str, str]:
    return {"id": uuid.uuid4().hex}


@pytest.fixture(scope="module")
def idp() -> Iterator[JwksServer]:
    with JwksServer() as server:
        yield server


def with_routes(settings: Settings) -> FastAPI:
    app = create_app(settings)
    app.include_router(router)
    return app


@pytest.fixture
def settings(database_url: URL, idp: JwksServer) -> Settings:
    return make_settings(
        database_url,
        auth_jwks_url=idp.url,
        auth_issuer=ISSUER,
        auth_audience=AUDIENCE,
        auth_jwks_min_refresh_s=MIN_REFRESH_S,
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return with_routes(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(idp: JwksServer, alg: str, secret: bytes | None) -> str:
    """A token whose header says `alg`: unsigned (`none`) or HMAC-signed with `secret`."""
    now = int(time.time())
    header = {"alg": alg, "typ": "JWT", "kid": idp.rsa.kid}
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "mallory",
        "iat": now,
        "exp": now + 300,
        "scope": "items:read",
    }
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_a_valid_token_is_served_as_its_principal(
    client: httpx.AsyncClient, idp: JwksServer, alg: str
) -> None:
    key = idp.rsa if alg == "RS256" else idp.ec
    response = await client.get("/items", headers=bearer(idp.token(key=key, subject="alice", tenant="acme")))
    assert response.status_code == 200, response.text
    assert response.json() == {"subject": "alice", "tenant": "acme", "scopes": ["items:read", "items:write"]}
    kept = await client.get("/kept", headers=bearer(idp.token(key=key, subject="alice")))
    assert kept.json() == {"subject": "alice"}


@pytest.mark.parametrize(
    "scp", [["items:read", "items:write", 7], "items:read items:write"], ids=["scp list", "scp string"]
)
async def test_scopes_in_scp_count_and_an_empty_tenant_is_none(
    client: httpx.AsyncClient, idp: JwksServer, scp: object
) -> None:
    """Azure AD and Okta put the scopes in `scp`, a list or a string, instead of `scope`."""
    token = idp.token(scope=None, scp=scp, subject="bob", tenant="")
    response = await client.get("/items", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json() == {"subject": "bob", "tenant": None, "scopes": ["items:read", "items:write"]}


async def test_valid_tokens_are_accepted_whatever_their_header_length(
    client: httpx.AsyncClient, idp: JwksServer
) -> None:
    """A JWT's segments are base64url without padding; a header of any length must decode. And a
    token issued a few seconds past its expiry still passes: AUTH_LEEWAY_S absorbs clock skew."""
    now = int(time.time())
    lengths = set()
    for extra in range(24):  # every header length modulo 4, and modulo the next few sizes
        token = idp.token(headers={"cty": "x" * extra})
        lengths.add(len(token.split(".")[0]))
        response = await client.get("/items", headers=bearer(token))
        assert response.status_code == 200, (len(token.split(".")[0]) % 4, response.text)
    assert {length % 4 for length in lengths} == {0, 2, 3}  # 1 is no base64 length
    late = idp.token(exp=now - 5, iat=now - 300, nbf=now - 300)
    assert (await client.get("/items", headers=bearer(late))).status_code == 200


def token_of_length(idp: JwksServer, length: int) -> str:
    """A valid token exactly `length` characters long (base64url skips lengths of 1 modulo 4,
    so the header's length is varied too)."""
    for extra in range(4):
        headers = {"cty": "x" * extra}
        short = len(idp.token(headers=headers, note=""))
        near = (length - short) * 3 // 4
        for size in range(max(near - 4, 0), near + 4):
            token = idp.token(headers=headers, note="x" * size)
            if len(token) == length:
                return token
    raise AssertionError(f"no token of {length} characters")


async def test_a_token_of_the_largest_accepted_size_is_accepted(
    client: httpx.AsyncClient, idp: JwksServer
) -> None:
    """MAX_TOKEN_CHARS is the largest token served; one character more is refused unread."""
    token = token_of_length(idp, MAX_TOKEN_CHARS)
    assert len(token) == MAX_TOKEN_CHARS, len(token)
    assert (await client.get("/items", headers=bearer(token))).status_code == 200


async def test_a_missing_token_is_401_with_a_bearer_challenge(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await client.get("/items")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == f'Bearer realm="{settings.service_name}"'
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "/problems/unauthorized"
    assert response.json()["detail"] == "A bearer token is required."
    assert (await client.get("/health")).status_code == 200  # probes need no token


def bad_tokens(idp: JwksServer) -> dict[str, str]:
    now = int(time.time())
    impostor = SigningKey("RS256")
    impostor.kid = idp.rsa.kid  # a key of the attacker's, claiming the real key's id
    public_pem = idp.rsa.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "expired": idp.token(exp=now - 120, iat=now - 600, nbf=now - 600),
        "not yet valid": idp.token(nbf=now + 120),
        "wrong issuer": idp.token(iss="https://evil.example.test/"),
        "wrong audience": idp.token(aud="another-service"),
        "bad signature": idp.token(key=impostor),
        "alg none": unsigned(idp, "none", None),
        "HS256 with the public key as secret": unsigned(idp, "HS256", public_pem),
        "not a JWT": "not-a-jwt",
        "no exp": idp.token(exp=None),
        "an algorithm off the allow-list": idp.token(alg="RS512"),  # the key itself would verify it
        "empty subject": idp.token(subject=""),  # no one to act as
        "a key id that is not a string": with_header(idp.token(), {"alg": "RS256", "kid": 5}),
        "a key id the identity provider does not have": idp.token(headers={"kid": "retired-key"}),
        "over 8 KB": token_of_length(idp, MAX_TOKEN_CHARS + 1),  # refused before it is decoded
        "a header that is not JSON": "bm90IGpzb24.e30.c2ln",
        "a header that is not an object": f"{b64(b'[1]')}.e30.c2ln",
    }


def with_header(token: str, header: dict[str, Any]) -> str:
    """`token` under another header (its signature no longer matches: the header is refused first)."""
    _, payload, signature = token.split(".")
    return f"{b64(json.dumps(header).encode())}.{payload}.{signature}"


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "not yet valid",
        "wrong issuer",
        "wrong audience",
        "bad signature",
        "alg none",
        "HS256 with the public key as secret",
        "not a JWT",
        "no exp",
        "an algorithm off the allow-list",
        "empty subject",
        "a key id that is not a string",
        "a key id the identity provider does not have",
        "over 8 KB",
        "a header that is not JSON",
        "a header that is not an object",
    ],
)
async def test_an_invalid_token_is_401_invalid_token(
    client: httpx.AsyncClient,
    idp: JwksServer,
    settings: Settings,
    case: str,
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    token = bad_tokens(idp)[case]
    if case == "no exp":
        assert "exp" not in json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    response = await client.get("/items", headers=bearer(token))
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(
        f'Bearer realm="{settings.service_name}", error="invalid_token", error_description="'
    )
    assert token not in response.text
    assert token not in challenge
    assert challenge.endswith('."')  # error_description: a sentence for the client's developer
    # The log says why, as the client was told.
    [refused] = [line for line in log_lines() if line["event"] == "token_refused"]
    assert refused["reason"] in challenge
    if case == "empty subject":
        assert "subject" in challenge.lower()  # the description says what is wrong with it


async def test_an_unknown_kid_refreshes_the_keys_once(client: httpx.AsyncClient, idp: JwksServer) -> None:
    new = idp.rotate()
    await asyncio.sleep(MIN_REFRESH_S + 0.05)  # past the start-up fetch's interval
    before = idp.fetches
    first = await client.get("/items", headers=bearer(idp.token(key=new)))
    again = await client.get("/items", headers=bearer(idp.token(key=new)))
    assert first.status_code == again.status_code == 200
    assert idp.fetches == before + 1  # fetched once for the new kid, then cached


async def test_a_flood_of_unknown_kids_fetches_nothing_within_the_interval(
    database_url: URL, idp: JwksServer
) -> None:
    settings = make_settings(
        database_url,
        auth_jwks_url=idp.url,
        auth_issuer=ISSUER,
        auth_audience=AUDIENCE,
        auth_jwks_min_refresh_s=60,
    )
    async with serving(with_routes(settings)) as client:
        before = idp.fetches  # the start-up fetch is done
        made_up = [idp.token(headers={"kid": uuid.uuid4().hex}) for _ in range(30)]
        responses = await asyncio.gather(*(client.get("/items", headers=bearer(token)) for token in made_up))
    assert {response.status_code for response in responses} == {401}
    assert idp.fetches == before


async def test_concurrent_unknown_kids_share_one_fetch_then_wait_the_interval(idp: JwksServer) -> None:
    now = [0.0]
    async with httpx.AsyncClient() as http:

        async def fetch() -> bytes:
            return (await http.get(idp.url)).content

        cache = JwksCache(fetch, cache_s=300, min_refresh_s=10, clock=lambda: now[0])
        idp.delay_s = 0.2  # every caller arrives while the first fetch is in flight
        try:
            before = idp.fetches
            found = await asyncio.gather(*(cache.key(uuid.uuid4().hex, "RS256") for _ in range(20)))
            assert found == [None] * 20
            assert idp.fetches == before + 1  # one fetch for twenty callers
            now[0] += 9.9
            await asyncio.gather(*(cache.key(uuid.uuid4().hex, "RS256") for _ in range(20)))
            assert idp.fetches == before + 1  # within AUTH_JWKS_MIN_REFRESH_S: none
            now[0] += 0.1
            assert await cache.key(idp.rsa.kid, "RS256") is not None
            await asyncio.gather(*(cache.key(uuid.uuid4().hex, "RS256") for _ in range(20)))
            assert idp.fetches == before + 2  # the interval passed: one more
        finally:
            idp.delay_s = 0.0
            await cache.close()


async def test_a_verified_token_is_reused_only_while_it_is_unexpired_and_its_key_unchanged() -> None:
    """Verified tokens are kept (their signature check is most of authentication's cost): a kept
    one must still expire on time, and must not survive its key being replaced under the same kid."""
    with JwksServer() as idp:
        async with httpx.AsyncClient() as http:

            async def fetch() -> bytes:
                return (await http.get(idp.url)).content

            keys = JwksCache(fetch, cache_s=300, min_refresh_s=0)
            verifier = TokenVerifier(
                keys,
                issuer=ISSUER,
                audience=AUDIENCE,
                algorithms=["RS256"],
                leeway_s=0,
                tenant_claim="tenant",
            )
            token = idp.token(subject="alice")
            assert (await verifier.verify(token)).subject == "alice"
            assert (await verifier.verify(token)).subject == "alice"  # the kept answer
            # The identity provider replaces the key but keeps its kid: the old signature is void.
            replacement = SigningKey("RS256")
            replacement.kid = idp.rsa.kid
            idp.keys = [replacement]
            await keys.refresh()
            with pytest.raises(InvalidToken, match="signature does not verify"):
                await verifier.verify(token)

            expires = int(time.time()) + 1
            short = idp.token(key=replacement, subject="bob", exp=expires)
            assert (await verifier.verify(short)).subject == "bob"  # verified, and kept
            for _ in range(40):  # `exp` is in whole seconds of the real clock: at most 2 s
                if time.time() >= expires:
                    break
                await asyncio.sleep(0.05)
            with pytest.raises(InvalidToken, match="expired"):
                await verifier.verify(short)
            await keys.close()


async def test_a_token_without_the_scope_is_403_and_its_key_stays_unclaimed(
    client: httpx.AsyncClient,
    idp: JwksServer,
    settings: Settings,
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    refused = await client.post("/items", json={}, headers=key | bearer(idp.token(scope="items:read")))
    assert refused.status_code == 403
    assert refused.headers["www-authenticate"] == (
        f'Bearer realm="{settings.service_name}", error="insufficient_scope", scope="items:write"'
    )
    assert refused.json()["type"] == "/problems/insufficient-scope"
    [logged] = [line for line in log_lines() if line["event"] == "scope_refused"]
    assert logged["missing"] == ["items:write"]
    # The refusal was not stored: the same key with the scope runs the handler.
    allowed = await client.post("/items", json={}, headers=key | bearer(idp.token()))
    assert allowed.status_code == 201
    assert "idempotent-replayed" not in allowed.headers


async def test_one_principal_can_neither_replay_nor_probe_anothers_idempotency_key(
    client: httpx.AsyncClient, idp: JwksServer
) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    alice, bob = bearer(idp.token(subject="alice")), bearer(idp.token(subject="bob"))
    first = await client.post("/items", json={"n": 1}, headers=key | alice)
    probe = await client.post("/items", json={"n": 1}, headers=key | bob)
    mismatch = await client.post("/items", json={"n": 2}, headers=key | bob)
    replay = await client.post("/items", json={"n": 1}, headers=key | alice)
    assert first.status_code == probe.status_code == replay.status_code == 201
    assert probe.json() != first.json()  # bob's own execution, not alice's answer
    assert "idempotent-replayed" not in probe.headers
    assert mismatch.status_code == 422  # bob's key now holds bob's first request, not alice's
    assert replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"


async def test_every_log_line_of_a_request_names_the_actor_and_none_the_token(
    app: FastAPI, idp: JwksServer
) -> None:
    async with serving(app) as client:
        with captured_logs() as captured:
            token = idp.token(subject="carol")
            served = await client.get("/items", headers=bearer(token))
            expired = idp.token(subject="carol", exp=int(time.time()) - 600)
            refused = await client.get("/items", headers=bearer(expired))
    assert served.status_code == 200
    assert refused.status_code == 401
    text = captured.text()
    assert token not in text
    assert expired not in text
    assert expired not in refused.text
    for part in (*token.split("."), *expired.split(".")):
        assert part not in text  # not even the signature or the claims
    lines = captured()
    mine = [line for line in lines if line.get("request_id") == served.headers["x-request-id"]]
    assert {line["event"] for line in mine} >= {"items_listed", "http_request"}
    assert all(line.get("actor_id") == "carol" for line in mine), mine
    theirs = [line for line in lines if line.get("request_id") == refused.headers["x-request-id"]]
    assert theirs
    assert all("actor_id" not in line for line in theirs)  # refused: no actor


async def test_the_identity_provider_down_at_start_up_is_survived(database_url: URL, idp: JwksServer) -> None:
    settings = make_settings(
        database_url,
        auth_jwks_url=f"http://127.0.0.1:{closed_port()}/jwks.json",
        auth_issuer=ISSUER,
        auth_audience=AUDIENCE,
        http_retry_attempts=1,
    )
    async with serving(with_routes(settings)) as client:
        response = await client.get("/items", headers=bearer(idp.token()))
        assert (await client.get("/health")).status_code == 200
    assert response.status_code == 503
    assert response.json()["type"] == "/problems/identity-provider-unavailable"


async def test_development_runs_as_the_development_principal_and_says_so_once(database_url: URL) -> None:
    app = with_routes(make_settings(database_url))
    with captured_logs() as lines:
        async with serving(app) as client:
            listed = await client.get("/items")
            created = await client.post("/items", json={}, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert listed.json()["subject"] == "developer"
    assert {"items:read", "items:write"} <= set(listed.json()["scopes"])  # every scope declared
    assert created.status_code == 201
    warnings = [line for line in lines() if line["event"] == "authentication_disabled"]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert warnings[0]["scopes"] == listed.json()["scopes"]  # what the development principal holds


async def test_behind_a_gateway_requests_run_as_the_gateway_unchecked(database_url: URL) -> None:
    app = with_routes(make_settings(database_url, environment="production", auth_mode="none"))
    with captured_logs() as lines:
        async with serving(app) as client:
            listed = await client.get("/items")
    assert listed.status_code == 200
    assert listed.json()["subject"] == "gateway"
    # Said once at start-up, where whoever runs it looks: authentication is someone else's.
    said = [line for line in lines() if line["event"] == "authentication_delegated"]
    assert len(said) == 1


def test_production_without_authentication_refuses_to_start() -> None:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("AUTH_", "ENVIRONMENT"))
    }
    result = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}"],
        cwd=PROJECT,
        env=environment
        | {"ENVIRONMENT": "production", "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "AUTH_JWKS_URL" in lines[0]
    assert "AUTH_MODE=none" in lines[0]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"auth_algorithms": "RS256,HS256"}, "AUTH_ALGORITHMS"),
        ({"auth_algorithms": "none"}, "AUTH_ALGORITHMS"),
        ({"auth_jwks_url": "https://id.example.test/jwks"}, "AUTH_ISSUER"),
        ({"auth_mode": "jwt"}, "AUTH_JWKS_URL"),
    ],
)
def test_unsafe_or_incomplete_authentication_settings_are_refused(
    database_url: URL, overrides: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named if named != "AUTH_ALGORITHMS" else "asymmetric"):
        make_settings(database_url, **overrides)


def test_the_openapi_document_declares_the_scheme_and_its_refusals(app: FastAPI) -> None:
    document = app.openapi()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    create = document["paths"]["/items"]["post"]
    assert create["security"] == [{"bearer": ["items:write"]}]
    assert {"401", "403"} <= create["responses"].keys()
    assert "security" not in document["paths"]["/health"]["get"]


def test_a_principal_is_a_frozen_value() -> None:
    principal = Principal(subject="a", tenant=None, scopes=frozenset({"x"}))
    with pytest.raises(AttributeError):
        principal.subject = "b"  # type: ignore[misc]
