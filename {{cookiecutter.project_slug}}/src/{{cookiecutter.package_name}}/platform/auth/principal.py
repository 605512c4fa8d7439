"""Who is calling: the principal a request runs as."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. `subject` is the token's `sub` (unique within the issuer): the
    actor id of logs and audit records, and the owner of idempotency keys. `tenant` is the
    AUTH_TENANT_CLAIM claim when the token carries one; `scopes` its `scope` (space-separated)
    or `scp` (a list) claim."""

    subject: str
    tenant: str | None
    scopes: frozenset[str]


# Without an identity provider in development every request runs as this subject, holding every
# scope a route declares (`install` collects them at start-up).
DEVELOPMENT_SUBJECT = "developer"
# With AUTH_MODE=none a gateway or mesh has authenticated and authorized the request: this service
# checks no scope, and every caller is this one subject (one idempotency scope, one actor).
GATEWAY_SUBJECT = "gateway"
