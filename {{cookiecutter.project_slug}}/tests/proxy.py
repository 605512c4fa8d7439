"""A load balancer as Kubernetes gives one, small enough to read: it checks each backend's `/ready`
every 100 ms as the Deployment's readiness probe does (2 s timeout; routed after one success,
unrouted after two failures in a row), sends each request to a routed backend, round robin, and
never retries. So a rolling restart through it fails a request exactly when the service would drop
one behind a Service: when it stops serving before it stops being routed to."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import httpx

CHECK_EVERY_S = 0.1
CHECK_TIMEOUT_S = 2.0  # the Deployment's readinessProbe: timeoutSeconds 2
FAILURES_TO_UNROUTE = 2  # ... and failureThreshold 2
HOP_BY_HOP = {"host", "connection", "content-length", "keep-alive", "transfer-encoding", "content-encoding"}


class ReadinessProxy:
    def __init__(self, backends: list[str]) -> None:
        self.backends = list(backends)
        self.ready: set[str] = set()
        self._failures: dict[str, int] = {}
        self.port = 0
        self._turn = itertools.count()
        # No keep-alive towards backends: each request opens its own connection, as kube-proxy's
        # load balancing does per connection; a pooled connection would pin a draining backend.
        self._client = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0), timeout=10)
        self._server: asyncio.Server | None = None
        self._checker: asyncio.Task[None] | None = None
        self._checked = asyncio.Event()

    async def __aenter__(self) -> ReadinessProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._checker = asyncio.create_task(self._check_forever())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        assert self._checker is not None
        self._checker.cancel()
        self._server.close()
        await self._client.aclose()

    async def wait_ready(self, backend: str, timeout_s: float = 30) -> None:
        async with asyncio.timeout(timeout_s):
            while backend not in self.ready:
                self._checked.clear()
                await self._checked.wait()

    async def _check_forever(self) -> None:
        """Each backend on its own clock, as each pod's probe is: a slow answer from one does not
        delay what the checks of the others find."""
        checking: dict[str, asyncio.Task[bool]] = {}
        while True:
            for backend in self.backends:
                check = checking.get(backend)
                if check is None:
                    checking[backend] = asyncio.create_task(self._is_ready(backend))
                elif check.done():
                    failures = self._failures.get(backend, FAILURES_TO_UNROUTE)
                    self._failures[backend] = 0 if check.result() else failures + 1
                    checking[backend] = asyncio.create_task(self._is_ready(backend))
            self.ready = {
                b for b in self.backends if self._failures.get(b, FAILURES_TO_UNROUTE) < FAILURES_TO_UNROUTE
            }
            self._checked.set()
            await asyncio.sleep(CHECK_EVERY_S)

    async def _is_ready(self, backend: str) -> bool:
        try:
            return (await self._client.get(f"{backend}/ready", timeout=CHECK_TIMEOUT_S)).status_code == 200
        except httpx.HTTPError:
            return False

    def _pick(self) -> str | None:
        ready = [backend for backend in self.backends if backend in self.ready]
        return ready[next(self._turn) % len(ready)] if ready else None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, target, _ = (await reader.readline()).decode().split(" ", 2)
            headers: dict[str, str] = {}
            while (line := (await reader.readline()).decode().strip()) != "":
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            backend = self._pick()
            answer_headers: list[tuple[str, str]] = []
            if backend is None:
                status, content = 503, b"no ready backend"
            else:
                forwarded = {k: v for k, v in headers.items() if k not in HOP_BY_HOP}
                try:
                    answer = await self._client.request(
                        method, f"{backend}{target}", headers=forwarded, content=body
                    )
                    status, content = answer.status_code, answer.content
                    answer_headers = [
                        (k, v) for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP
                    ]
                except httpx.HTTPError:
                    status, content = 502, b"backend failed"
            head = [f"HTTP/1.1 {status} X", f"content-length: {len(content)}", "connection: close"]
            head += [f"{name}: {value}" for name, value in answer_headers]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + content)
            await writer.drain()
        except (ValueError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def constant_load(
    url: str, send: Callable[[httpx.AsyncClient, str], object], stop: asyncio.Event, workers: int = 4
) -> list[int]:
    """`workers` clients sending requests back to back until `stop`; every answer's status."""
    statuses: list[int] = []

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=15) as client:
            while not stop.is_set():
                response = await send(client, url)  # type: ignore[misc]
                statuses.append(response.status_code)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return statuses
