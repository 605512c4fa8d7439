"""What authentication costs per request, keys cached: `python bench/auth.py <baked project>`.

Runs in the bake's interpreter (`<bake>/.venv/bin/python bench/auth.py <bake>`), on its embedded
PostgreSQL and a real JWKS server on 127.0.0.1 (`tests/jwks.py`). In one process, two apps serve
`GET /v1/orders/{id}` through the ASGI transport: one as the development principal, one verifying
an RS256 or ES256 bearer token. Interleaved rounds of sequential requests; the medians per request
and their differences are printed, then `jwt.decode` alone (timeit). Not a test: asserts nothing.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import timeit
from pathlib import Path

ROUNDS, REQUESTS = 7, 400


def main(project: Path) -> None:
    sys.path[:0] = [str(project), str(project / "src")]
    os.chdir(project)
    # The bake's packages, once its path is set.
    from tests.conftest import make_settings, recreate, serving  # noqa: PLC0415
    from tests.jwks import JwksServer  # noqa: PLC0415

    package = next(p.name for p in (project / "src").iterdir() if (p / "main.py").exists())
    main_module = __import__(f"{package}.main", fromlist=["create_app"])
    migrations = __import__(f"{package}.db.migrations", fromlist=["upgrade"])
    embedded = __import__(f"{package}.db.embedded", fromlist=["start"])
    settings_module = __import__(f"{package}.settings", fromlist=["to_async_url"])
    logs = __import__(f"{package}.platform.logs", fromlist=["configure"])

    server = settings_module.to_async_url(embedded.start(project / ".data" / "postgres-test"))
    asyncio.run(recreate(server, "bench_auth"))
    url = server.set(database="bench_auth")
    migrations.upgrade(project / "migrations", url.render_as_string(hide_password=False))
    with JwksServer() as idp:
        asyncio.run(measure(idp, url, main_module, logs, make_settings, serving))


async def measure(idp, url, main_module, logs, make_settings, serving) -> None:  # noqa: ANN001
    import jwt  # noqa: PLC0415
    from tests.jwks import AUDIENCE, ISSUER  # noqa: PLC0415

    authenticator = __import__(main_module.__name__.rsplit(".", 1)[0] + ".platform.auth.route", fromlist=["x"])
    spent: list[float] = []
    principal = authenticator.Authenticator.principal

    async def timed(self, credentials):  # noqa: ANN001, ANN202
        started = time.perf_counter()
        try:
            return await principal(self, credentials)
        finally:
            spent.append(time.perf_counter() - started)

    authenticator.Authenticator.principal = timed
    if True:
        auth = {"auth_jwks_url": idp.url, "auth_issuer": ISSUER, "auth_audience": AUDIENCE}
        dev_app = main_module.create_app(make_settings(url, log_level="WARNING"))
        jwt_app = main_module.create_app(make_settings(url, log_level="WARNING", **auth))
        logs.configure("WARNING", stream=open(os.devnull, "wb"))  # noqa: SIM115 (for the whole run)
        tokens = {
            alg: idp.token(key=key, scope="orders:read orders:write", exp=int(time.time()) + 3600)
            for alg, key in (("RS256", idp.rsa), ("ES256", idp.ec))
        }
        async with serving(dev_app) as dev, serving(jwt_app) as verified:
            created = await dev.post(
                "/v1/orders", json={"sku": "BENCH-1", "quantity": 1}, headers={"Idempotency-Key": "bench"}
            )
            path = created.headers["location"]
            clients = {
                "development principal": (dev, {}),
                **{f"{alg} token": (verified, {"Authorization": f"Bearer {t}"}) for alg, t in tokens.items()},
            }
            samples: dict[str, list[float]] = {name: [] for name in clients}
            inside: dict[str, list[float]] = {name: [] for name in clients}
            for _ in range(ROUNDS):
                for name, (client, headers) in clients.items():
                    for _ in range(20):  # warm
                        await client.get(path, headers=headers)
                    spent.clear()
                    started = time.perf_counter()
                    for _ in range(REQUESTS):
                        response = await client.get(path, headers=headers)
                    samples[name].append((time.perf_counter() - started) / REQUESTS * 1e6)
                    inside[name].append(statistics.median(spent) * 1e6)
                    assert response.status_code == 200, response.text
        base = statistics.median(samples["development principal"])
        print(f"GET {{id}} through the ASGI transport, median of {ROUNDS} rounds x {REQUESTS} requests:")
        for name, values in samples.items():
            median = statistics.median(values)
            print(
                f"  {name:24s} {median:8.0f} µs/request  (+{median - base:5.0f} µs, x{median / base:.3f});"
                f" in the authenticator {statistics.median(inside[name]):6.1f} µs"
            )
        key_rsa = jwt.PyJWK(idp.rsa.jwk(), algorithm="RS256")
        key_ec = jwt.PyJWK(idp.ec.jwk(), algorithm="ES256")
        for alg, key in (("RS256", key_rsa), ("ES256", key_ec)):
            token = tokens[alg]

            def decode(token: str = token, key: jwt.PyJWK = key, alg: str = alg) -> object:
                return jwt.decode(token, key=key, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER)

            runs = timeit.repeat(decode, number=2000, repeat=5)
            print(f"  jwt.decode alone, {alg}: {min(runs) / 2000 * 1e6:6.1f} µs (best of 5 x 2000)")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
