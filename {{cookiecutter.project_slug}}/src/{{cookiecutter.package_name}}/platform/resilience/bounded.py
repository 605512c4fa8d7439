"""Upstream answers read up to a size limit (`HTTP_MAX_RESPONSE_BYTES`), never buffered past it.

A misbehaving upstream that streams a gigabyte would otherwise become a memory spike in every
process that calls it. The answer is streamed and counted as it is decoded, so a small compressed
body cannot inflate past the limit either; a `Content-Length` over the limit is refused before a
byte of the body is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from {{ cookiecutter.package_name }}.platform.resilience.retry import ResponseTooLarge

# Headers that describe the bytes on the wire, not the decoded body an answer is rebuilt with.
_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


async def fetch(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    limit: int,
    headers: Mapping[str, str],
    json: Any,
    params: Mapping[str, str] | None,
    timeouts: httpx.Timeout,
) -> httpx.Response:
    """Send the request and read the answer whole, or raise `ResponseTooLarge` past `limit` bytes."""
    async with client.stream(
        method, url, headers=headers, json=json, params=params, timeout=timeouts
    ) as streamed:
        declared = streamed.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ResponseTooLarge(f"Content-Length {declared}")
        body = bytearray()
        async for chunk in streamed.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise ResponseTooLarge(f"over {limit} bytes")
    # Rebuilt from the decoded bytes: an answer the caller reads like any other.
    return httpx.Response(
        streamed.status_code,
        headers=[(k, v) for k, v in streamed.headers.multi_items() if k.lower() not in _WIRE_HEADERS],
        content=bytes(body),
        request=streamed.request,
    )
