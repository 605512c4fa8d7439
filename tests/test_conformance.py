"""`tools/conformance.py`: a bare FastAPI app fails, each missing standard named; the parts it builds
requests and verdicts from. (The default bake passing is checked in `test_run.py`, while it runs.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import TEMPLATE, free_port, make
from tools import conformance

SCRIPT = TEMPLATE / "tools" / "conformance.py"

BARE_APP = textwrap.dedent(
    """
    from fastapi import FastAPI
    from pydantic import BaseModel

    app = FastAPI()


    class Item(BaseModel):
        name: str
        quantity: int


    @app.get("/")
    async def root() -> dict[str, str]:
        return {"hello": "world"}


    @app.post("/items", status_code=201)
    async def create_item(item: Item) -> Item:
        return item
    """
)


def test_a_bare_fastapi_app_fails_and_the_scorecard_names_what_it_lacks(
    baked: dict[str, Path], tmp_path: Path
) -> None:
    project = baked["default"]
    assert make(project, "install").returncode == 0  # for its venv: FastAPI and uvicorn
    (tmp_path / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    server = subprocess.Popen(
        [
            project / ".venv/bin/python",
            "-m",
            "uvicorn",
            "bare_app:app",
            "--app-dir",
            tmp_path,
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        scorecard = subprocess.run(
            [sys.executable, SCRIPT, f"http://127.0.0.1:{port}", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)

    assert scorecard.returncode == 1, scorecard.stdout + scorecard.stderr
    document = json.loads(scorecard.stdout)
    standards = {standard["name"]: standard for standard in document["standards"]}
    failed = {name for name, standard in standards.items() if not standard["passed"]}
    assert failed == {
        "liveness",
        "readiness",
        "request-id",
        "traceparent",
        "problem-404",
        "problem-405",
        "problem-413",
        "problem-422",
        "problem-malformed-json",
        "idempotency",
        "metrics",
    }, scorecard.stdout
    assert document["totals"] == {"standards": len(standards), "passed": 1, "failed": len(failed)}
    assert "no operation declares Idempotency-Key" in " ".join(standards["idempotency"]["evidence"])
    assert any("expected application/problem+json" in line for line in standards["problem-404"]["evidence"])


ORDER_SCHEMA = {
    "components": {
        "schemas": {
            "OrderCreate": {
                "type": "object",
                "required": ["sku", "quantity", "channel"],
                "properties": {
                    "sku": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Z][0-9]+$"},
                    "quantity": {"type": "integer", "minimum": 1.0, "maximum": 10000.0},
                    "channel": {"anyOf": [{"$ref": "#/components/schemas/Channel"}, {"type": "null"}]},
                    "note": {"type": "string"},
                },
            },
            "Channel": {"type": "string", "enum": ["web", "store"]},
        }
    }
}


def test_a_request_body_is_made_from_its_schema_then_changed_within_it() -> None:
    reference = {"$ref": "#/components/schemas/OrderCreate"}

    body = conformance.example(reference, ORDER_SCHEMA)
    changed = conformance.vary(reference, ORDER_SCHEMA, body)

    # Required properties only, each valid: the pattern, the integer bound, the enum behind a $ref.
    assert body == {"sku": "A1", "quantity": 1, "channel": "web"}
    assert changed == {"sku": "A1", "quantity": 2, "channel": "web"}  # the one other sku is not valid


def _answer(status: int, body: object, content_type: str = "application/problem+json") -> conformance.Answer:
    return conformance.Answer(
        "GET", "/x", status, [("content-type", content_type)], json.dumps(body).encode()
    )


def test_a_problem_is_judged_by_its_fields_and_what_it_gives_away() -> None:
    clean = {"type": "/problems/conflict", "title": "Conflict", "status": 409, "detail": "Already paid."}
    leaky = clean | {
        "detail": 'Traceback (most recent call last):\n  File "/app/orders/service.py", line 40, in create\n'
        "sqlalchemy.exc.IntegrityError: duplicate key; INSERT INTO orders (sku) VALUES ($1)"
    }

    assert conformance.problem_faults(_answer(409, clean), 409) == []
    assert conformance.problem_faults(_answer(409, clean, "application/json"), 409) == [
        "content-type application/json, expected application/problem+json"
    ]
    assert conformance.problem_faults(_answer(409, clean | {"status": 500}), 409) == [
        "`status` is 500, the response's is 409"
    ]
    faults = " ".join(conformance.problem_faults(_answer(409, leaky), 409))
    for leak in ("a stack trace", "SQL text", "a driver or ORM name", "an exception class name"):
        assert leak in faults


THINGS_OPENAPI = {
    "paths": {
        "/things": {
            "post": {
                "parameters": [{"name": "idempotency-key", "in": "header", "required": True}],
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}},
                            }
                        }
                    }
                },
            }
        }
    }
}


class _IdempotentService(BaseHTTPRequestHandler):
    """`POST /things` with an Idempotency-Key, done right but for the replay header when told so."""

    server: _Server

    def do_GET(self) -> None:
        self._send(200, "application/json", json.dumps(THINGS_OPENAPI).encode())

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        key = self.headers.get("Idempotency-Key")
        if key is None:
            return self._problem(400)
        if key not in self.server.answers:
            self.server.answers[key] = (body, json.dumps({"id": len(self.server.answers)}).encode())
            return self._send(201, "application/json", self.server.answers[key][1])
        sent, answered = self.server.answers[key]
        if sent != body:
            return self._problem(422)
        replayed = {"Idempotent-Replayed": "true"} if self.server.says_replayed else {}
        return self._send(201, "application/json", answered, replayed)

    def _problem(self, status: int) -> None:
        body = {"type": "/problems/x", "title": "Refused", "status": status}
        self._send(status, "application/problem+json", json.dumps(body).encode())

    def _send(
        self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": content_type, **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    says_replayed = True
    answers: dict[str, tuple[bytes, bytes]]


@pytest.mark.parametrize("says_replayed", [True, False], ids=["says-replayed", "replays-silently"])
def test_idempotency_passes_only_when_a_replay_says_it_is_one(says_replayed: bool) -> None:
    server = _Server(("127.0.0.1", 0), _IdempotentService)
    server.says_replayed, server.answers = says_replayed, {}
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    client = conformance.Client(base, headers=[], timeout_s=5, total_s=30)
    context = conformance.Context(client, f"{base}/openapi.json", f"{base}/metrics", body_limit_bytes=1024)
    evidence: list[str] = []
    try:
        passed = conformance.idempotency(context, evidence)
    finally:
        server.shutdown()
        server.server_close()

    assert passed is says_replayed, "\n".join(evidence)
