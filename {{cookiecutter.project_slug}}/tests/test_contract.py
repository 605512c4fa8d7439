"""The OpenAPI document against the service it describes: schemathesis with every check, on a real
server (`python -m {{ cookiecutter.package_name }} serve`) and a database of its own.

A route whose behaviour and document disagree (an undocumented status, a response that does not
match its schema, a required parameter the service does not require, a 405 without the path's
methods) fails here. `schemathesis.toml` says which refusals are by design, and why.

The service verifies bearer tokens against a real JWKS server (`tests.jwks`) and schemathesis sends
a valid one: its authentication checks then prove that a request without a token, or with a
made-up one, is refused as the document says (in development mode every request would pass).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import URL

from {{ cookiecutter.package_name }}.db import migrations

from tests.conftest import MIGRATIONS
from tests.conftest import PROJECT
from tests.conftest import TEST_DATABASE
from tests.conftest import recreate
from tests.jwks import AUDIENCE
from tests.jwks import ISSUER
from tests.jwks import JwksServer
from tests.service import running

SCRATCH = f"{TEST_DATABASE}_contract"
ST = Path(sys.executable).with_name("st")


def test_the_service_does_what_its_openapi_document_says(server_url: URL) -> None:
    asyncio.run(recreate(server_url, SCRATCH))
    url = server_url.set(database=SCRATCH).render_as_string(hide_password=False)
    migrations.upgrade(MIGRATIONS, url)
    with (
        JwksServer() as idp,
        running(url, AUTH_JWKS_URL=idp.url, AUTH_ISSUER=ISSUER, AUTH_AUDIENCE=AUDIENCE) as service,
    ):
        document = httpx.get(f"{service.base}/openapi.json", timeout=10).json()
        token = idp.token(scope=" ".join(declared_scopes(document)), exp=int(time.time()) + 3600)
        result = subprocess.run(
            [
                str(ST),
                "--config-file",
                str(PROJECT / "schemathesis.toml"),
                "run",
                f"{service.base}/openapi.json",
                "--checks",
                "all",
                "--header",
                f"Authorization: Bearer {token}",
                "--max-examples",
                "25",
                "--seed",
                "20261202",  # the same cases every run: a failure here is reproducible
                "--no-color",
            ],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout


def declared_scopes(document: dict[str, Any]) -> set[str]:
    """Every scope an operation of the document requires: the token the run sends holds them all."""
    return {
        scope
        for path_item in document["paths"].values()
        for operation in path_item.values()
        if isinstance(operation, dict)
        for requirement in operation.get("security", ())
        for scope in requirement.get("bearer", ())
    }
