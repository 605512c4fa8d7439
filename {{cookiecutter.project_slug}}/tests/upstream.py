"""A real HTTP server on 127.0.0.1 whose answers a test scripts: slow, failing, hanging or fine.

It speaks just enough HTTP/1.1 for httpx (one request per connection), and records every request
it receives, so a test can count what reached the upstream.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from dataclasses import dataclass
from dataclasses import field
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    hang: bool = False  # never answer
    # Answer only once the test sets it: a call held in flight for exactly as long as the test needs.
    gate: asyncio.Event | None = None
    undeclared: bool = False  # no Content-Length: the body ends when the connection closes


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    json: Any = None


class ScriptedUpstream:
    def __init__(self, default: Reply | None = None) -> None:
        self.default = default or Reply(200, {"ok": True})
        self.script: deque[Reply] = deque()
        # Path prefix -> the reply to every request under it, before the script: one server can
        # play two endpoints that fail independently.
        self.routes: dict[str, Reply] = {}
        self.received: list[Received] = []
        self._arrivals = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def arrival(self, count: int, timeout_s: float = 10.0) -> None:
        """Return once `count` requests have reached this server (an event for the test to wait on)."""
        async with asyncio.timeout(timeout_s), self._arrivals:
            await self._arrivals.wait_for(lambda: len(self.received) >= count)

    def then(self, *replies: Reply) -> ScriptedUpstream:
        self.script.extend(replies)
        return self

    async def __aenter__(self) -> ScriptedUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            request_line = (await reader.readline()).decode().split()
            if len(request_line) < 2:
                return  # the client connected and closed without a request
            headers: dict[str, str] = {}
            while (line := (await reader.readline()).decode().strip()) != "":
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            parsed = json.loads(body) if body else None
            self.received.append(Received(request_line[0], request_line[1], headers, parsed))
            async with self._arrivals:
                self._arrivals.notify_all()
            routed = [reply for prefix, reply in self.routes.items() if request_line[1].startswith(prefix)]
            reply = routed[0] if routed else self.script.popleft() if self.script else self.default
            if reply.hang:
                await asyncio.sleep(3600)
            if reply.gate is not None:
                await reply.gate.wait()
            await asyncio.sleep(reply.delay_s)
            answer = json.dumps(reply.body).encode() if reply.body is not None else b""
            head = [f"HTTP/1.1 {reply.status} X", "connection: close"]
            if not reply.undeclared:
                head.append(f"content-length: {len(answer)}")
            head += [f"{name}: {value}" for name, value in reply.headers.items()]
            if reply.body is not None:
                head.append("content-type: application/json")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
