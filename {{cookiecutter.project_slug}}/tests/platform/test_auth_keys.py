"""The identity provider's key set (`platform/auth/keys.py`) as the service reads and caches it,
against a real JWKS server on 127.0.0.1 (`tests.jwks`) serving keys the test makes."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from {{ cookiecutter.package_name }}.platform.auth.keys import JwksCache
from {{ cookiecutter.package_name }}.platform.auth.keys import KeysUnavailable
from {{ cookiecutter.package_name }}.platform.auth.tokens import InvalidToken
from {{ cookiecutter.package_name }}.platform.auth.tokens import TokenVerifier

from tests.clock import Clock
from tests.conftest import captured_logs
from tests.jwks import AUDIENCE
from tests.jwks import ISSUER
from tests.jwks import JwksServer
from tests.jwks import SigningKey

CACHE_S = 300.0
MIN_REFRESH_S = 10.0


@pytest.fixture
def idp() -> Iterator[JwksServer]:
    with JwksServer() as server:
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def keys(idp: JwksServer, clock: Clock) -> AsyncIterator[JwksCache]:
    async with httpx.AsyncClient() as http:

        async def fetch() -> bytes:
            return (await http.get(idp.url)).content

        cache = JwksCache(fetch, cache_s=CACHE_S, min_refresh_s=MIN_REFRESH_S, clock=clock)
        yield cache
        await cache.close()


def verifier(keys: JwksCache, *algorithms: str) -> TokenVerifier:
    return TokenVerifier(
        keys,
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=list(algorithms or ["RS256", "ES256"]),
        leeway_s=0,
        tenant_claim="tenant",
    )


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    with captured_logs() as lines:
        yield lines


async def test_only_usable_signature_keys_are_kept_whatever_comes_before_them(
    idp: JwksServer, keys: JwksCache
) -> None:
    """A JWKS may hold encryption keys, shared secrets, keys this service cannot parse and entries
    that are not keys at all: each is skipped, and the signature keys after them still verify. A key
    published without `use` is a signature key (RFC 7517: `use` is optional)."""
    encryption = SigningKey("RS256")
    unparsable = SigningKey("ES256").jwk() | {"x": "not-a-coordinate"}
    idp.document = json.dumps(
        {
            "keys": [
                encryption.jwk() | {"use": "enc"},
                {"kty": "oct", "k": "c2VjcmV0", "kid": "shared"},
                "not a key",
                unparsable,
                {k: v for k, v in idp.rsa.jwk().items() if k != "use"},
                idp.ec.jwk(),
            ]
        }
    ).encode()
    assert await verifier(keys).verify(idp.token(subject="alice")) is not None
    assert (await verifier(keys).verify(idp.token(key=idp.ec, subject="bob"))).subject == "bob"
    assert keys.kids == {idp.rsa.kid, idp.ec.kid}
    with pytest.raises(InvalidToken, match="key this service does not know"):
        await verifier(keys).verify(idp.token(key=encryption))


async def test_a_token_without_a_key_id_is_verified_by_the_only_key_published(
    idp: JwksServer, keys: JwksCache
) -> None:
    """No `kid` in the header: the identity provider's one key verifies it; with two keys published
    the service does not guess which, and refuses it."""
    idp.keys = [idp.rsa]
    token = idp.token(subject="alice", headers={"kid": None})
    assert "kid" not in json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert (await verifier(keys).verify(token)).subject == "alice"
    idp.rotate()
    await keys.refresh()
    with pytest.raises(InvalidToken, match="key this service does not know"):
        await verifier(keys).verify(idp.token(subject="bob", headers={"kid": None}))


async def test_each_key_verifies_its_own_tokens_only(idp: JwksServer, keys: JwksCache) -> None:
    """Two keys of one type: each token is checked with the key its `kid` names, never the key
    checked before it (verifiers are cached per key and algorithm)."""
    second = idp.rotate()
    check = verifier(keys)
    assert (await check.verify(idp.token(subject="alice"))).subject == "alice"
    assert (await check.verify(idp.token(key=second, subject="bob"))).subject == "bob"
    forged = SigningKey("RS256")
    forged.kid = second.kid
    with pytest.raises(InvalidToken, match="signature does not verify"):
        await check.verify(idp.token(key=forged))


async def test_a_key_published_for_one_algorithm_verifies_no_other(idp: JwksServer, keys: JwksCache) -> None:
    """A key that names its `alg` is used with that algorithm only; a key that names none is used
    with the algorithm the token states, among the allowed ones."""
    pinned = SigningKey("RS256")
    idp.keys = [pinned, idp.rsa]
    idp.document = json.dumps({"keys": [pinned.jwk() | {"alg": "RS512"}, idp.rsa.jwk()]}).encode()
    check = verifier(keys, "RS256", "RS384", "RS512")
    with pytest.raises(InvalidToken, match="key this service does not know"):
        await check.verify(idp.token(key=pinned, alg="RS256"))
    assert (await check.verify(idp.token(key=pinned, alg="RS512", subject="pinned"))).subject == "pinned"
    assert (await check.verify(idp.token(alg="RS384", subject="any"))).subject == "any"


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"<html>", "not JSON"),
        (b"[]", "no `keys` list"),
        (b'{"keys": {}}', "no `keys` list"),
        (b'{"keys": []}', "no usable signature key"),
        (b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "no usable signature key"),
    ],
    ids=["not JSON", "not an object", "keys not a list", "no keys", "no signature key"],
)
async def test_a_key_set_that_cannot_be_read_is_unavailable_and_says_why(
    idp: JwksServer,
    keys: JwksCache,
    log_lines: Callable[[], list[dict[str, Any]]],
    document: bytes,
    reason: str,
) -> None:
    """The operator's line says what is wrong with the identity provider's answer."""
    idp.document = document
    with pytest.raises(KeysUnavailable):
        await keys.key(idp.rsa.kid, "RS256")
    [logged] = [line for line in log_lines() if line["event"] == "jwks_fetch_failed"]
    assert logged["level"] == "warning"
    assert reason in logged["reason"]


async def test_keys_are_fetched_again_once_stale_and_not_before(
    idp: JwksServer, keys: JwksCache, clock: Clock, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    """Fetched again exactly AUTH_JWKS_CACHE_S after the last fetch, in the background; a set that
    changed is logged with its key ids, one that did not is not logged at all."""
    assert await keys.key(idp.rsa.kid, "RS256") is not None
    assert idp.fetches == 1
    clock.now += CACHE_S
    await keys.key(idp.rsa.kid, "RS256")
    await settled(keys)
    assert idp.fetches == 2  # unchanged, so no line
    clock.now += CACHE_S - 0.001
    assert await keys.key(idp.rsa.kid, "RS256") is not None
    await settled(keys)
    assert idp.fetches == 2  # fresh: nothing fetched
    rotated = idp.rotate()
    clock.now += 0.001  # exactly AUTH_JWKS_CACHE_S old: stale
    assert await keys.key(idp.rsa.kid, "RS256") is not None
    await settled(keys)
    assert idp.fetches == 3
    assert rotated.kid in keys.kids
    refreshed = [line for line in log_lines() if line["event"] == "jwks_refreshed"]
    assert [line["kids"] for line in refreshed] == [
        sorted([idp.rsa.kid, idp.ec.kid]),
        sorted([rotated.kid, idp.rsa.kid, idp.ec.kid]),
    ]


async def settled(keys: JwksCache) -> None:
    """Until the background refresh, if one was started, is done (bounded)."""
    for _ in range(250):
        await asyncio.sleep(0.02)
        if keys._refreshing is None:
            return
    raise AssertionError("the refresh never ended")


async def test_a_failed_refresh_keeps_the_keys_it_had_and_says_so(
    idp: JwksServer, keys: JwksCache, clock: Clock, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    assert await keys.key(idp.rsa.kid, "RS256") is not None
    idp.document = b"<html>Bad Gateway</html>"
    clock.now += CACHE_S
    assert await keys.key(idp.rsa.kid, "RS256") is not None
    await settled(keys)
    assert await keys.key(idp.rsa.kid, "RS256") is not None  # still served from the cache
    [failed] = [line for line in log_lines() if line["event"] == "jwks_fetch_failed"]
    assert failed["cached_keys"] == 2


async def test_closing_with_a_fetch_in_flight_cancels_it_quietly(
    idp: JwksServer, keys: JwksCache, clock: Clock
) -> None:
    """Shutdown does not wait on a slow identity provider, nor fail because of it."""
    assert await keys.key(idp.rsa.kid, "RS256") is not None
    clock.now += CACHE_S
    idp.delay_s = 2.0
    try:
        await keys.key(idp.rsa.kid, "RS256")  # starts the refresh, in the background
        assert keys._refreshing is not None
        await keys.close()
        assert keys._refreshing is None
    finally:
        idp.delay_s = 0.0


async def test_a_stale_key_set_is_refreshed_behind_the_request_not_before_it(
    idp: JwksServer, keys: JwksCache, clock: Clock
) -> None:
    """Rotation costs no request any latency: once the keys are stale, the request goes on with the
    cached key while the refresh waits on a slow identity provider."""
    assert await keys.key(idp.rsa.kid, "RS256") is not None
    clock.now += CACHE_S
    idp.delay_s = 5.0
    try:
        assert await asyncio.wait_for(keys.key(idp.rsa.kid, "RS256"), 2.0) is not None
    finally:
        idp.delay_s = 0.0


async def test_callers_of_a_new_kid_all_join_the_fetch_in_flight(
    idp: JwksServer, keys: JwksCache, clock: Clock
) -> None:
    """A new key is published; many requests bearing its kid arrive while the fetch that will find
    it is in flight, within AUTH_JWKS_MIN_REFRESH_S of the last: every one waits for that fetch and
    is served, none is refused for an unknown key."""
    assert await keys.key(idp.rsa.kid, "RS256") is not None
    new = idp.rotate()
    clock.now += MIN_REFRESH_S
    idp.delay_s = 0.3
    try:
        found = await asyncio.gather(*(keys.key(new.kid, "RS256") for _ in range(10)))
    finally:
        idp.delay_s = 0.0
    assert all(key is not None for key in found)
    assert idp.fetches == 2
