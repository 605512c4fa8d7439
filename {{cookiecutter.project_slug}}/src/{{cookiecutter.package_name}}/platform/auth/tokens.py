"""Bearer token verification: signature, algorithm, time claims, issuer and audience.

PyJWT does the cryptography and the claim checks (`jwt.decode`, with the key bound to its algorithm
by `PyJWK`); this module picks the key and turns every failure into a client-safe reason. A reason
never quotes the token nor a library message (some embed parts of the token).

A client sends the same token with every request for its lifetime (minutes), and checking its
signature is most of what authentication costs (about 200 µs for RS256 or ES256, bench/README.md).
So a verified token's principal is kept (`VERIFIED_TOKENS` of them, the oldest dropped first) and
reused only while the token has not expired (`exp`, with AUTH_LEEWAY_S) and the key that verified
it is still the one the key cache holds: every key set refresh (AUTH_JWKS_CACHE_S) starts afresh,
so a key withdrawn from the JWKS withdraws the tokens it signed at the next refresh.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jwt
import orjson
from jwt import PyJWK
from jwt.exceptions import ExpiredSignatureError
from jwt.exceptions import ImmatureSignatureError
from jwt.exceptions import InvalidAudienceError
from jwt.exceptions import InvalidIssuedAtError
from jwt.exceptions import InvalidIssuerError
from jwt.exceptions import InvalidSignatureError
from jwt.exceptions import MissingRequiredClaimError
from jwt.exceptions import PyJWTError

from {{ cookiecutter.package_name }}.platform.auth.keys import JwksCache
from {{ cookiecutter.package_name }}.platform.auth.principal import Principal

# Claims a token must carry: a token without an expiry would be valid forever.
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")
# Far above any real token (1-2 KB), far below what parsing costs to matter: a bigger one is refused
# before it is decoded.
MAX_TOKEN_CHARS = 8192
# Verified tokens kept per process: about 1 KB each, so a few MB at most.
VERIFIED_TOKENS = 4096

_REASONS: tuple[tuple[type[PyJWTError], str], ...] = (
    (ExpiredSignatureError, "The token has expired."),
    (ImmatureSignatureError, "The token is not valid yet."),
    (InvalidIssuedAtError, "The token's issue time is in the future."),
    (InvalidIssuerError, "The token was issued by another issuer."),
    (InvalidAudienceError, "The token is meant for another audience."),
    (InvalidSignatureError, "The token's signature does not verify."),
    (MissingRequiredClaimError, "The token lacks a required claim (exp, iat, iss, aud, sub)."),
)


class InvalidToken(Exception):
    """The token is refused; `reason` is safe to show the client and to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Verified(NamedTuple):
    principal: Principal
    key: PyJWK  # the key object that verified it: a refreshed key set holds new ones
    expires_at: float  # `exp` plus the leeway, in seconds since the epoch


class TokenVerifier:
    def __init__(
        self,
        keys: JwksCache,
        *,
        issuer: str,
        audience: str,
        algorithms: Sequence[str],
        leeway_s: float,
        tenant_claim: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.algorithms = list(algorithms)
        self.leeway_s = leeway_s
        self.tenant_claim = tenant_claim
        self._clock = clock
        self._verified: dict[str, _Verified] = {}

    async def verify(self, token: str) -> Principal:
        """The principal a valid token names; InvalidToken otherwise. KeysUnavailable (from the
        key cache) when the key is unknown and the identity provider cannot be reached."""
        header = _header(token)
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken("The token's signature algorithm is not accepted.")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("The token's key id is malformed.")
        key = await self.keys.key(kid, alg)
        if key is None:
            raise InvalidToken("The token is signed with a key this service does not know.")
        known = self._verified.get(token)
        if known is not None and known.key is key and self._clock() < known.expires_at:
            return known.principal
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except PyJWTError as exc:
            raise InvalidToken(_reason(exc)) from None
        principal = self._principal(claims)
        if len(self._verified) >= VERIFIED_TOKENS:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[token] = _Verified(principal, key, float(claims["exp"]) + self.leeway_s)
        return principal

    def _principal(self, claims: dict[str, Any]) -> Principal:
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("The token's subject is malformed.")
        tenant = claims.get(self.tenant_claim)
        return Principal(
            subject=subject,
            tenant=tenant if isinstance(tenant, str) and tenant else None,
            scopes=_scopes(claims),
        )


def _header(token: str) -> dict[str, Any]:
    """The token's header, only to pick the key: `jwt.decode` parses and checks all of it again.
    Not `jwt.get_unverified_header`, which decodes and checks every segment, character by character
    in Python: 60 µs for an RS256 token, measured, against 2 µs for this, and `jwt.decode` does
    that work anyway."""
    segment, dot, _ = token.partition(".")
    if len(token) > MAX_TOKEN_CHARS or not dot:
        raise InvalidToken("The token is not a well-formed JWT.")
    try:
        header = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):
        raise InvalidToken("The token is not a well-formed JWT.") from None
    if not isinstance(header, dict):
        raise InvalidToken("The token is not a well-formed JWT.")
    return header


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    """`scope`, space-separated (RFC 8693, RFC 9068), or `scp`, a list (Azure AD, Okta)."""
    scope = claims.get("scope")
    if isinstance(scope, str):
        return frozenset(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, list):
        return frozenset(item for item in scp if isinstance(item, str))
    if isinstance(scp, str):
        return frozenset(scp.split())
    return frozenset()


def _reason(exc: PyJWTError) -> str:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "The token is invalid."
