"""The key and the request it stands for: reading the header, the request's fingerprint, and the
header as the OpenAPI document declares it."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from {{ cookiecutter.package_name }}.platform.errors import BadRequest

KEY_HEADER = "Idempotency-Key"
# Characters a key may have: what UUIDs, ULIDs and base64url tokens use, nothing that needs quoting.
_SAFE_KEY = re.compile(r"[A-Za-z0-9._:~+/=-]{1,255}")


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


KEY_PARAMETER: dict[str, Any] = {
    "name": KEY_HEADER,
    "in": "header",
    "required": True,
    # A bare token, or the same as an RFC 8941 quoted string.
    "schema": {"type": "string", "pattern": f'^({_SAFE_KEY.pattern}|"{_SAFE_KEY.pattern}")$'},
    "description": (
        "A unique value per operation (a UUID is ideal). A retry with the same key and the same "
        "request returns the first answer (any status below 500) with `Idempotent-Replayed: true`; "
        "with a different request, 422; while the first is in flight, 409 with Retry-After. Answers "
        "are kept for IDEMPOTENCY_RETENTION_S (24 hours by default); 5xx answers and requests refused "
        "before the handler ran are not kept. Missing or malformed: 400."
    ),
    "example": "8e03978e-40d5-43e8-bc93-6894a57f9324",
}
