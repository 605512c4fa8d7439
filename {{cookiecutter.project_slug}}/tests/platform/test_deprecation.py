"""A deprecated route announces its deprecation and sunset on every answer (RFC 9745, RFC 8594)."""

from __future__ import annotations

from datetime import date
from email.utils import parsedate_to_datetime

import pytest
from fastapi import APIRouter
from fastapi import FastAPI

from {{ cookiecutter.package_name }}.platform import deprecation
from {{ cookiecutter.package_name }}.platform.errors import NotFound

from tests.conftest import serving

OLD = APIRouter(prefix="/v0/things")


@OLD.get(
    "/{thing_id}",
    openapi_extra=deprecation.announce(
        since=date(2026, 12, 1), sunset=date(2027, 6, 1), notice="https://example.com/migrate-to-v1"
    ),
)
async def old_thing(thing_id: int) -> dict[str, int]:
    if thing_id == 0:
        raise NotFound("No thing 0.")
    return {"id": thing_id}


async def test_every_answer_of_a_deprecated_route_announces_it(app: FastAPI) -> None:
    app.include_router(OLD)
    async with serving(app) as client:
        found = await client.get("/v0/things/1")
        missing = await client.get("/v0/things/0")
        current = await client.get("/health")
        operation = (await client.get("/openapi.json")).json()["paths"]["/v0/things/{thing_id}"]["get"]
    for response in (found, missing):  # errors too: a client learns it from whatever it gets
        assert response.headers["deprecation"] == "@1796083200"  # 2026-12-01T00:00:00Z
        assert parsedate_to_datetime(response.headers["sunset"]).date() == date(2027, 6, 1)
        assert (
            response.headers["link"]
            == '<https://example.com/migrate-to-v1>; rel="deprecation"; type="text/html"'
        )
    assert missing.status_code == 404
    assert "deprecation" not in current.headers
    assert "sunset" not in current.headers
    assert operation["deprecated"] is True


def test_a_sunset_before_the_deprecation_is_refused() -> None:
    with pytest.raises(ValueError, match="must come after"):
        deprecation.announce(since=date(2027, 1, 1), sunset=date(2026, 1, 1))
    with pytest.raises(ValueError, match="must come after"):  # the same day leaves clients no time
        deprecation.announce(since=date(2027, 1, 1), sunset=date(2027, 1, 1))
