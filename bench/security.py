"""What authentication (keys cached) and the rate limit (in memory, shared in PostgreSQL) cost per
request, in one run: `<bake>/.venv/bin/python bench/security.py <bake>`.

Runs in the baked service's interpreter, on its embedded PostgreSQL and a real JWKS server on
127.0.0.1 (its `tests/jwks.py`). In one process, apps serve `GET /v1/orders/{id}` through the ASGI
transport: the baseline (development principal, no rate limit); verifying an RS256 or ES256 bearer
token; the development principal under a rate limit counted in memory, then in PostgreSQL (a limit
never reached). Interleaved rounds of sequential requests; prints the median time per request, the
difference, the median time spent in the authenticator itself, then `jwt.decode` alone (timeit).
Not a test.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

ROUNDS, REQUESTS, WARM = 7, 400, 20


def main(project: Path) -> None:
    sys.path[:0] = [str(project), str(project / "src")]
    os.chdir(project)
    package = next(p.name for p in (project / "src").iterdir() if (p / "main.py").exists())
    conftest = importlib.import_module("tests.conftest")
    jwks = importlib.import_module("tests.jwks")
    embedded = importlib.import_module(f"{package}.db.embedded")
    migrations = importlib.import_module(f"{package}.db.migrations")
    settings = importlib.import_module(f"{package}.settings")

    server = settings.to_async_url(embedded.start(project / ".data" / "postgres-test"))
    asyncio.run(conftest.recreate(server, "bench_auth"))
    url = server.set(database="bench_auth")
    migrations.upgrade(project / "migrations", url.render_as_string(hide_password=False))
    with jwks.JwksServer() as idp:
        asyncio.run(measure(package, conftest, jwks, idp, url))


async def measure(package: str, conftest: Any, jwks: Any, idp: Any, url: Any) -> None:
    import jwt

    create_app = importlib.import_module(f"{package}.main").create_app
    logs = importlib.import_module(f"{package}.platform.logs")
    route = importlib.import_module(f"{package}.platform.auth.route")

    # Time spent in the authenticator, request by request: the cost itself, without the noise of
    # the rest of the request.
    spent: list[float] = []
    principal = route.Authenticator.principal

    async def timed(self: Any, credentials: Any) -> Any:
        started = time.perf_counter()
        try:
            return await principal(self, credentials)
        finally:
            spent.append(time.perf_counter() - started)

    route.Authenticator.principal = timed

    auth = {"auth_jwks_url": idp.url, "auth_issuer": jwks.ISSUER, "auth_audience": jwks.AUDIENCE}
    quiet = {"log_level": "WARNING", "rate_limit_enabled": False}
    unreached = {"log_level": "WARNING", "rate_limit_default": "1000000/second"}
    development = create_app(conftest.make_settings(url, **quiet))
    verifying = create_app(conftest.make_settings(url, **quiet, **auth))
    in_memory = create_app(conftest.make_settings(url, **unreached, rate_limit_storage="memory"))
    shared = create_app(conftest.make_settings(url, **unreached, rate_limit_storage="database"))
    with open(os.devnull, "wb") as sink:
        logs.configure("WARNING", stream=sink)
        tokens = {
            alg: idp.token(key=key, scope="orders:read orders:write", exp=int(time.time()) + 3600)
            for alg, key in (("RS256", idp.rsa), ("ES256", idp.ec))
        }
        async with (
            conftest.serving(development) as dev,
            conftest.serving(verifying) as verified,
            conftest.serving(in_memory) as memory_limited,
            conftest.serving(shared) as database_limited,
        ):
            created = await dev.post(
                "/v1/orders", json={"sku": "BENCH-1", "quantity": 1}, headers={"Idempotency-Key": "bench"}
            )
            path = created.headers["location"]
            clients = {
                "development principal": (dev, {}),
                **{f"{alg} token": (verified, {"Authorization": f"Bearer {t}"}) for alg, t in tokens.items()},
                "rate limit, memory": (memory_limited, {}),
                "rate limit, database": (database_limited, {}),
            }
            per_request: dict[str, list[float]] = {name: [] for name in clients}
            inside: dict[str, list[float]] = {name: [] for name in clients}
            for _ in range(ROUNDS):
                for name, (client, headers) in clients.items():
                    for _ in range(WARM):
                        await client.get(path, headers=headers)
                    spent.clear()
                    started = time.perf_counter()
                    for _ in range(REQUESTS):
                        response = await client.get(path, headers=headers)
                    per_request[name].append((time.perf_counter() - started) / REQUESTS * 1e6)
                    inside[name].append(statistics.median(spent) * 1e6)
                    assert response.status_code == 200, response.text

    base = statistics.median(per_request["development principal"])
    print(f"GET /v1/orders/{{id}} through the ASGI transport, median of {ROUNDS} rounds x {REQUESTS}:")
    for name, values in per_request.items():
        median = statistics.median(values)
        print(
            f"  {name:22s} {median:7.0f} µs/request (+{median - base:5.0f} µs, x{median / base:.3f});"
            f" in the authenticator {statistics.median(inside[name]):6.1f} µs"
        )
    for alg, key in (("RS256", idp.rsa), ("ES256", idp.ec)):
        jwk = jwt.PyJWK(key.jwk(), algorithm=alg)
        token = tokens[alg]

        def decode(token: str = token, jwk: Any = jwk, alg: str = alg) -> object:
            return jwt.decode(token, key=jwk, algorithms=[alg], audience=jwks.AUDIENCE, issuer=jwks.ISSUER)

        best = min(timeit.repeat(decode, number=2000, repeat=5)) / 2000 * 1e6
        print(f"  jwt.decode alone, {alg}: {best:6.1f} µs (best of 5 x 2000)")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
