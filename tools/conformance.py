#!/usr/bin/env python3
"""`make conformance URL=http://host:port`: which of the platform's HTTP standards a running service meets.

Probes the service over HTTP only, so it scores any service, baked from paved or not, and prints one
line per standard, PASS or FAIL, with the requests and answers that decided it (`--json` for
machines). Standard library only: `python3 tools/conformance.py URL` runs anywhere with Python 3.11+.

Exit status: 0 every standard passes, 1 one fails, 2 bad usage or the service does not answer.

Traffic goes to the URLs given and nowhere else: no redirect is followed, no proxy variable is read.
Each request is bounded by `--timeout`, the whole run by `--total-timeout`. Nothing destructive is
sent; the idempotency standard creates what its route creates (once, under a fresh key), and the body
limit is tested with one body of `--body-limit-bytes` + 1 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import email.utils
import http.client
import json
import math
import re
import secrets
import select
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

PROBLEM_JSON = "application/problem+json"
# The default of MAX_BODY_BYTES in a baked service's settings/fields.py.
DEFAULT_BODY_LIMIT_BYTES = 1024 * 1024
MAX_READ_BYTES = 4 * 1024 * 1024
LIVENESS_PATHS = ("/health", "/healthz", "/livez")
READINESS_PATHS = ("/ready", "/readyz")
PROBE_PATHS = frozenset({*LIVENESS_PATHS, *READINESS_PATHS})
# What must never reach a client: stack traces, SQL, the names of drivers and exception classes.
LEAKS = {
    "a stack trace": re.compile(r"Traceback \(most recent call last\)|File \"|\.py\", line \d"),
    "SQL text": re.compile(r"\b(SELECT\s.+?\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b"),
    "a driver or ORM name": re.compile(r"sqlalchemy|asyncpg|psycopg|pymysql|sqlite3", re.IGNORECASE),
    "an exception class name": re.compile(r"\b[A-Z][A-Za-z0-9]+(?:Error|Exception)\b"),
}


class ProbeFailed(Exception):
    """A request that got no HTTP answer (refused, reset, timed out, out of time budget)."""


@dataclass(frozen=True)
class Answer:
    method: str
    target: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)

    @property
    def content_type(self) -> str:
        return (self.header("content-type") or "").split(";")[0].strip().lower()

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def __str__(self) -> str:
        text = self.body[:160].decode("utf-8", "replace").replace("\n", " ")
        more = "..." if len(self.body) > 160 else ""
        return f"{self.method} {self.target} -> {self.status} {self.content_type or '(no content-type)'} {text}{more}"


class Client:
    """One connection per request, to the given URLs only; every answer kept (for Retry-After)."""

    def __init__(
        self, base_url: str, *, headers: list[tuple[str, str]], timeout_s: float, total_s: float
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = [("User-Agent", "paved-conformance/1"), ("Accept", "*/*"), *headers]
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + total_s
        self.answers: list[Answer] = []

    def request(
        self,
        method: str,
        target: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        early_answer_s: float = 0,
    ) -> Answer:
        """`target` is a path under the base URL or a full URL. With `early_answer_s`, the body is
        sent only if no answer came within that time of the headers (a server refusing a body by its
        Content-Length answers at once, and may close before reading it)."""
        url = urlsplit(target if "://" in target else self.base_url + target)
        timeout = min(self.timeout_s, self.deadline - time.monotonic())
        if timeout <= 0:
            raise ProbeFailed("the run's time budget is spent")
        kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        connection = kind(url.hostname or "", url.port, timeout=timeout)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            for name, value in [*self.headers, *(headers or {}).items()]:
                connection.putheader(name, value)
            if body is not None:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders()
            if body and not (early_answer_s and _readable(connection, min(early_answer_s, timeout))):
                # A server that answered and closed before reading it all: its answer is read below.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    connection.send(body)
            response = connection.getresponse()
            answer = Answer(
                method, path, response.status, response.getheaders(), response.read(MAX_READ_BYTES)
            )
        except TimeoutError:
            raise ProbeFailed(f"{method} {path}: no answer within {timeout:g}s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ProbeFailed(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        finally:
            connection.close()
        self.answers.append(answer)
        return answer


def _readable(connection: http.client.HTTPConnection, wait_s: float) -> bool:
    return bool(connection.sock and select.select([connection.sock], [], [], wait_s)[0])


@dataclass
class Context:
    client: Client
    openapi_url: str
    metrics_url: str
    body_limit_bytes: int
    liveness_path: str | None = None
    _openapi: dict[str, Any] | None = None

    def openapi(self) -> dict[str, Any]:
        if self._openapi is None:
            answer = self.client.request("GET", self.openapi_url)
            document = answer.json()
            if answer.status != 200 or not isinstance(document, dict) or "paths" not in document:
                raise ProbeFailed(f"no OpenAPI document: {answer}")
            self._openapi = document
        return self._openapi


@dataclass
class Result:
    name: str
    title: str
    passed: bool
    evidence: list[str] = field(default_factory=list)


# A standard: (context, evidence to append to) -> passed.
Standard = Callable[[Context, list[str]], bool]


# -- Problem details --------------------------------------------------------------------------------


def leaks(text: str) -> list[str]:
    """What in a client-facing body gives internals away."""
    return [
        f"{what} ({found.group(0)!r})" for what, pattern in LEAKS.items() if (found := pattern.search(text))
    ]


def problem_faults(answer: Answer, status: int) -> list[str]:
    """Why `answer` is not an RFC 9457 problem for `status` that keeps internals to itself."""
    faults = []
    if answer.status != status:
        faults.append(f"status {answer.status}, expected {status}")
    if answer.content_type != PROBLEM_JSON:
        faults.append(f"content-type {answer.content_type or 'missing'}, expected {PROBLEM_JSON}")
    body = answer.json()
    if not isinstance(body, dict):
        faults.append("the body is not a JSON object")
    else:
        faults += [f"no string `{key}`" for key in ("type", "title") if not isinstance(body.get(key), str)]
        if body.get("status") != answer.status:
            faults.append(f"`status` is {body.get('status')!r}, the response's is {answer.status}")
    faults += [f"leaks {leak}" for leak in leaks(answer.body.decode("utf-8", "replace"))]
    return faults


def _is_problem(answer: Answer, status: int, evidence: list[str], *, accept: tuple[int, ...] = ()) -> bool:
    expected = answer.status if answer.status in accept else status
    faults = problem_faults(answer, expected)
    evidence.append(str(answer))
    evidence += [f"  {fault}" for fault in faults]
    return not faults


# -- The OpenAPI document: operations and bodies ------------------------------------------------------


def resolve(schema: Any, document: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """The schema with its `$ref` (a local `#/...` pointer) followed, and `allOf` merged."""
    while isinstance(schema, dict) and "$ref" in schema and depth < 32:
        node: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(node, dict) else {}
        schema, depth = node, depth + 1
    if not isinstance(schema, dict):
        return {}
    if "allOf" in schema:
        merged = {key: value for key, value in schema.items() if key != "allOf"}
        for part in schema["allOf"]:
            part = resolve(part, document, depth + 1)
            merged["properties"] = {**merged.get("properties", {}), **part.get("properties", {})}
            merged["required"] = [*merged.get("required", []), *part.get("required", [])]
            merged.update({k: v for k, v in part.items() if k not in ("properties", "required")})
        schema = merged
    for choice in ("anyOf", "oneOf"):
        options = [resolve(option, document, depth + 1) for option in schema.get(choice, [])]
        usable = [option for option in options if option.get("type") != "null"]
        if usable:
            schema = {**{k: v for k, v in schema.items() if k != choice}, **usable[0]}
    return dict(schema)


def _type(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):  # OpenAPI 3.1: ["string", "null"]
        kind = next((k for k in kind if k != "null"), None)
    if kind is None and "properties" in schema:
        kind = "object"
    return kind


def _strings(schema: dict[str, Any]) -> list[str]:
    """Strings the schema accepts, most ordinary first."""
    formats = {
        "uuid": str(uuid.uuid4()),
        "date-time": "2024-01-01T00:00:00Z",
        "date": "2024-01-01",
        "email": "conformance@example.com",
        "uri": "https://example.com/",
    }
    seeds = [formats[schema["format"]]] if schema.get("format") in formats else []
    seeds += ["example", "conformance", "a", "A", "1", "a1", "A1", "A-1", "a-1", "abc", "x", "probe"]
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    fitted = [seed + seed[-1] * (low - len(seed)) for seed in seeds]
    fitted = [text[:high] if high is not None else text for text in fitted]
    pattern = schema.get("pattern")
    try:
        return [text for text in fitted if pattern is None or re.search(pattern, text)]
    except re.error:  # an ECMA-only construct: trust the first
        return fitted


def _numbers(schema: dict[str, Any], integer: bool) -> list[float]:
    low, high = schema.get("minimum"), schema.get("maximum")
    step = 1 if integer else 0.5
    if schema.get("exclusiveMinimum") is True and low is not None:  # OpenAPI 3.0's boolean form
        low += step
    elif isinstance(schema.get("exclusiveMinimum"), int | float):
        low = schema["exclusiveMinimum"] + step
    if schema.get("exclusiveMaximum") is True and high is not None:
        high -= step
    elif isinstance(schema.get("exclusiveMaximum"), int | float):
        high = schema["exclusiveMaximum"] - step
    start = low if low is not None else (min(1, high) if high is not None else 1)
    if integer:
        start = math.ceil(start)
    values = [start, start + step]
    return [value for value in values if high is None or value <= high]


def example(schema: Any, document: dict[str, Any], depth: int = 0) -> Any:
    """A minimal value valid against `schema`: its example, default, const or first enum value, else
    the required properties of an object, the fewest items of an array, the lowest number, a string
    that fits its length and pattern."""
    schema = resolve(schema, document)
    for key in ("example", "default", "const"):
        if key in schema:
            return schema[key]
    if isinstance(schema.get("examples"), list) and schema["examples"]:
        return schema["examples"][0]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = _type(schema)
    if depth > 16:
        return None
    if kind == "object":
        properties = schema.get("properties", {})
        return {
            name: example(properties.get(name, {}), document, depth + 1)
            for name in schema.get("required", [])
        }
    if kind == "array":
        return [
            example(schema.get("items", {}), document, depth + 1) for _ in range(schema.get("minItems", 0))
        ]
    if kind in ("integer", "number"):
        values = _numbers(schema, kind == "integer")
        return values[0] if values else 0
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    strings = _strings(schema)
    return strings[0] if strings else "example"


def vary(schema: Any, document: dict[str, Any], body: Any) -> Any:
    """Another valid body, one field changed; None when none can be made."""
    schema = resolve(schema, document)
    if not isinstance(body, dict):
        return None
    properties = schema.get("properties", {})
    for name, value in body.items():
        prop = resolve(properties.get(name, {}), document)
        kind = _type(prop)
        if prop.get("enum"):
            options = [option for option in prop["enum"] if option != value]
        elif kind == "boolean":
            options = [not value]
        elif kind in ("integer", "number"):
            options = [number for number in _numbers(prop, kind == "integer") if number != value]
        elif kind == "string":
            options = [text for text in _strings(prop) if text != value]
        elif kind == "object":
            options = [changed] if (changed := vary(prop, document, value)) is not None else []
        else:
            options = []
        if options:
            return {**copy.deepcopy(body), name: options[0]}
    # Nothing to change: add an optional property instead (still valid, another request).
    for name, prop in properties.items():
        if name not in body:
            return {**copy.deepcopy(body), name: example(prop, document)}
    return None


def json_body_schema(operation: dict[str, Any]) -> Any:
    content = operation.get("requestBody", {}).get("content", {})
    media = next((value for key, value in content.items() if key.split(";")[0].endswith("json")), None)
    return None if media is None else media.get("schema", {})


def operations(document: dict[str, Any], method: str) -> list[tuple[str, dict[str, Any]]]:
    """(path, operation) for `method`, paths without parameters first."""
    found = [
        (path, item[method.lower()])
        for path, item in document.get("paths", {}).items()
        if isinstance(item, dict) and isinstance(item.get(method.lower()), dict)
    ]
    return sorted(found, key=lambda pair: "{" in pair[0])


def declares_idempotency_key(operation: dict[str, Any], document: dict[str, Any]) -> bool:
    return any(
        resolve(parameter, document).get("in") == "header"
        and str(resolve(parameter, document).get("name", "")).lower() == "idempotency-key"
        for parameter in operation.get("parameters", [])
    )


def concrete(path: str, operation: dict[str, Any], document: dict[str, Any]) -> str:
    """The path with each `{parameter}` replaced by an example of its schema."""
    for parameter in operation.get("parameters", []):
        parameter = resolve(parameter, document)
        if parameter.get("in") == "path":
            value = example(parameter.get("schema", {}), document)
            path = path.replace("{" + str(parameter.get("name")) + "}", quote(str(value), safe=""))
    return path


def idempotent_post(context: Context) -> tuple[str, dict[str, Any]] | None:
    document = context.openapi()
    return next(
        ((path, op) for path, op in operations(document, "post") if declares_idempotency_key(op, document)),
        None,
    )


def json_post(context: Context) -> tuple[str, dict[str, Any], dict[str, str]]:
    """The POST to send bodies to (the idempotent one, with a fresh key, else any with a JSON body)."""
    document = context.openapi()
    if (found := idempotent_post(context)) is not None:
        path, operation = found
        return concrete(path, operation, document), operation, {"Idempotency-Key": _fresh_key()}
    for path, operation in operations(document, "post"):
        if json_body_schema(operation) is not None:
            return concrete(path, operation, document), operation, {}
    raise ProbeFailed("the OpenAPI document has no POST operation with a JSON body to send it to")


def _fresh_key() -> str:
    return f"conformance-{uuid.uuid4()}"


JSON = {"Content-Type": "application/json"}


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# -- The standards ----------------------------------------------------------------------------------


def liveness(context: Context, evidence: list[str]) -> bool:
    for path in LIVENESS_PATHS:
        answer = context.client.request("GET", path)
        evidence.append(str(answer))
        if answer.status == 200 and answer.json() is not None:
            context.liveness_path = path
            evidence.append(f"liveness answered at {path}")
            return True
    evidence.append("none of /health, /healthz, /livez answered 200 with a JSON body")
    return False


def readiness(context: Context, evidence: list[str]) -> bool:
    for path in READINESS_PATHS:
        answer = context.client.request("GET", path)
        evidence.append(str(answer))
        body = answer.json()
        if answer.status == 200 and isinstance(body, dict):
            checks = next(
                (body[key] for key in ("checks", "dependencies", "components", "details") if body.get(key)),
                None,
            )
            if not isinstance(checks, dict | list):
                evidence.append("ready, but the body names no per-dependency checks (`checks`)")
                return False
            evidence.append(f"readiness answered at {path}, checks: {json.dumps(checks)}")
            return True
    evidence.append("neither /ready nor /readyz answered 200 with a JSON body")
    return False


def request_id(context: Context, evidence: list[str]) -> bool:
    path = context.liveness_path or "/"
    generated = [context.client.request("GET", path).header("x-request-id") for _ in range(2)]
    evidence.append(
        f"GET {path} without X-Request-ID, twice -> X-Request-ID {generated[0]!r}, {generated[1]!r}"
    )
    sent = f"conformance-{secrets.token_hex(8)}"
    echoed = context.client.request("GET", path, headers={"X-Request-ID": sent}).header("x-request-id")
    evidence.append(f"GET {path} with X-Request-ID {sent!r} -> X-Request-ID {echoed!r}")
    missing = context.client.request("GET", f"/conformance-{secrets.token_hex(6)}").header("x-request-id")
    evidence.append(f"GET of an unknown path (an error answer) -> X-Request-ID {missing!r}")
    fresh = all(generated) and generated[0] != generated[1]
    return fresh and echoed == sent and bool(missing)


def traceparent(context: Context, evidence: list[str]) -> bool:
    try:
        document = context.openapi()
    except ProbeFailed:
        document = {}  # the liveness path will do
    plain = [path for path, _ in operations(document, "get") if "{" not in path]
    path = next((p for p in plain if p not in PROBE_PATHS and p != "/metrics"), context.liveness_path or "/")
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    answer = context.client.request("GET", path, headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    evidence.append(f"GET {path} with traceparent 00-{trace_id}-{parent}-01 -> {answer.status}")
    carriers = [name for name, value in answer.headers if trace_id in value.lower()]
    if carriers:
        evidence.append(f"trace id continued in header {carriers[0]}: {answer.header(carriers[0])}")
        return True
    if trace_id.encode() in answer.body.lower():
        evidence.append("trace id continued in the response body")
        return True
    evidence.append(
        f"trace id not observable: not in any response header ({', '.join(n for n, _ in answer.headers)}) "
        "nor the body; a `traceresponse` or `traceparent` response header would show it"
    )
    return False


def not_found(context: Context, evidence: list[str]) -> bool:
    return _is_problem(context.client.request("GET", f"/conformance-{secrets.token_hex(6)}"), 404, evidence)


def method_not_allowed(context: Context, evidence: list[str]) -> bool:
    for path, item in context.openapi().get("paths", {}).items():
        declared = {
            method.upper() for method in item if method.upper() in ("GET", "POST", "PUT", "PATCH", "DELETE")
        }
        undeclared = [method for method in ("DELETE", "PATCH", "PUT", "POST") if method not in declared]
        if "{" in path or not declared or not undeclared:
            continue
        answer = context.client.request(undeclared[0], path, headers=JSON, body=b"{}")
        passed = _is_problem(answer, 405, evidence)
        allow = {
            method.strip().upper() for method in (answer.header("allow") or "").split(",") if method.strip()
        }
        evidence.append(f"declared {sorted(declared)}, Allow: {answer.header('allow')!r}")
        return passed and declared <= allow
    evidence.append("no path without parameters leaves an unsafe method undeclared")
    return False


def body_limit(context: Context, evidence: list[str]) -> bool:
    path, _, headers = json_post(context)
    size = context.body_limit_bytes + 1
    padding = b'{"padding":"' + b"x" * max(0, size - len(b'{"padding":""}')) + b'"}'
    answer = context.client.request("POST", path, headers=JSON | headers, body=padding, early_answer_s=1.0)
    evidence.append(
        f"sent a JSON body of {len(padding)} bytes (--body-limit-bytes {context.body_limit_bytes})"
    )
    return _is_problem(answer, 413, evidence)


def invalid_body(context: Context, evidence: list[str]) -> bool:
    path, operation, headers = json_post(context)
    schema = resolve(json_body_schema(operation), context.openapi())
    wrong = {"array": {"conformance": True}}.get(_type(schema) or "", ["conformance"])
    answer = context.client.request("POST", path, headers=JSON | headers, body=_dump(wrong))
    return _is_problem(answer, 422, evidence)


def malformed_json(context: Context, evidence: list[str]) -> bool:
    path, _, headers = json_post(context)
    answer = context.client.request("POST", path, headers=JSON | headers, body=b'{"')
    return _is_problem(answer, 400, evidence, accept=(400, 422))


def idempotency(context: Context, evidence: list[str]) -> bool:
    document = context.openapi()
    if (found := idempotent_post(context)) is None:
        evidence.append("no operation declares Idempotency-Key (a header parameter of a POST)")
        return False
    path, operation = found
    path = concrete(path, operation, document)
    schema = json_body_schema(operation)
    body = example(schema, document) if schema is not None else None
    raw = _dump(body) if schema is not None else b""
    key = _fresh_key()
    evidence.append(f"POST {path} declares Idempotency-Key; body {raw.decode()}, key {key}")
    headers = JSON | {"Idempotency-Key": key}

    first = context.client.request("POST", path, headers=headers, body=raw)
    evidence.append(f"first:    {first}")
    if not 200 <= first.status < 300:
        evidence.append("  the first request must succeed (2xx); nothing else can be judged")
        return False
    passed = (first.header("idempotent-replayed") or "").lower() != "true"
    if not passed:
        evidence.append("  a fresh key's first answer says Idempotent-Replayed: true")

    replay = context.client.request("POST", path, headers=headers, body=raw)
    evidence.append(f"replay:   {replay}")
    same_json = first.json() is not None and replay.json() == first.json()
    same = replay.status == first.status and (replay.body == first.body or same_json)
    flag = replay.header("idempotent-replayed")
    evidence.append(f"  same status and body: {same}; Idempotent-Replayed: {flag!r}")
    passed = passed and same and (flag or "").lower() == "true"

    changed = vary(schema, document, body) if schema is not None else None
    if changed is None:
        evidence.append("changed:  could not make a second valid body from the schema")
        passed = False
    else:
        evidence.append(f"changed:  same key, body {_dump(changed).decode()}")
        passed = (
            _is_problem(
                context.client.request("POST", path, headers=headers, body=_dump(changed)), 422, evidence
            )
            and passed
        )

    evidence.append("no key:")
    return _is_problem(context.client.request("POST", path, headers=JSON, body=raw), 400, evidence) and passed


def metrics(context: Context, evidence: list[str]) -> bool:
    answer = context.client.request("GET", context.metrics_url)
    evidence.append(f"GET {context.metrics_url} -> {answer.status} {answer.content_type}")
    text = answer.body.decode("utf-8", "replace") if answer.status == 200 else ""
    types = dict(re.findall(r"^# TYPE (\S+) (\w+)$", text, re.MULTILINE))
    if not types:
        evidence.append("not Prometheus text exposition: no `# TYPE` line")
        return False
    counters = [n for n, kind in types.items() if kind == "counter" and re.search(r"request", n, re.I)]
    counters = [n for n in counters if not re.search(r"duration|latency|size|bytes", n, re.I)]
    histograms = [
        n
        for n, kind in types.items()
        if kind == "histogram"
        and re.search(r"request", n, re.I)
        and re.search(r"duration|latency|seconds|time", n, re.I)
        and re.search(rf"^{re.escape(n)}_bucket\{{.*\ble=\"", text, re.MULTILINE)
    ]
    evidence.append(f"request counters: {counters or 'none'}")
    evidence.append(f"request latency histograms with _bucket{{le=...}} lines: {histograms or 'none'}")
    return bool(counters and histograms)


def retry_after(context: Context, evidence: list[str]) -> bool:
    # A probe's 503 speaks to the orchestrator, not to a client that would retry: not counted.
    refusals = [
        answer
        for answer in context.client.answers
        if answer.status in (429, 503) and answer.target not in PROBE_PATHS
    ]
    if not refusals:
        evidence.append(f"no 503/429 observed in {len(context.client.answers)} answers (probes aside)")
        return True
    passed = True
    for answer in refusals:
        value = answer.header("retry-after")
        evidence.append(f"{answer.method} {answer.target} -> {answer.status}, Retry-After: {value!r}")
        passed = passed and retry_after_valid(value)
    return passed


def retry_after_valid(value: str | None) -> bool:
    """Delay-seconds or an HTTP-date (RFC 9110, 10.2.3)."""
    if value is None or value.strip().isdigit():
        return value is not None
    try:
        return email.utils.parsedate_to_datetime(value) is not None
    except (TypeError, ValueError):
        return False


STANDARDS: list[tuple[str, str, Standard]] = [
    ("liveness", "GET /health answers 200 with a JSON body", liveness),
    ("readiness", "GET /ready answers 200 with a JSON body naming each dependency check", readiness),
    ("request-id", "X-Request-ID generated when absent, echoed when sent", request_id),
    ("traceparent", "W3C traceparent continued: its trace id observable in the answer", traceparent),
    ("problem-404", "404 unknown path as problem+json, no internals", not_found),
    ("problem-405", "405 undeclared method as problem+json with Allow", method_not_allowed),
    ("problem-413", "413 body over the limit as problem+json", body_limit),
    ("problem-422", "422 schema-invalid body as problem+json", invalid_body),
    ("problem-malformed-json", "malformed JSON body answered 400/422 problem+json", malformed_json),
    ("idempotency", "Idempotency-Key: replay, 422 on another body, 400 without a key", idempotency),
    ("metrics", "Prometheus /metrics: request counter and latency histogram", metrics),
    ("retry-after", "every 503/429 observed carries Retry-After", retry_after),
]


def run(context: Context, results: list[Result]) -> None:
    for name, title, standard in STANDARDS:
        evidence: list[str] = []
        try:
            passed = standard(context, evidence)
        except ProbeFailed as exc:
            evidence.append(str(exc))
            passed = False
        results.append(Result(name, title, passed, evidence))


# -- The command ------------------------------------------------------------------------------------


def report(url: str, results: list[Result]) -> str:
    lines = [f"Conformance of {url}"]
    for result in results:
        lines.append(f"{'PASS' if result.passed else 'FAIL'}  {result.name:<24} {result.title}")
        lines += [f"      {line}" for line in result.evidence]
    failed = [result.name for result in results if not result.passed]
    passed = len(results) - len(failed)
    lines.append(
        f"{passed} of {len(results)} standards pass" + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return "\n".join(lines)


def document(url: str, results: list[Result]) -> dict[str, Any]:
    failed = sum(not result.passed for result in results)
    return {
        "url": url,
        "passed": failed == 0,
        "standards": [vars(result) for result in results],
        "totals": {"standards": len(results), "passed": len(results) - failed, "failed": failed},
    }


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name.strip()):
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], prog="conformance.py")
    parser.add_argument("url", help="the service's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of the report")
    parser.add_argument("--openapi-url", help="where the OpenAPI document is (default URL/openapi.json)")
    parser.add_argument("--metrics-url", help="where the Prometheus metrics are (default URL/metrics)")
    parser.add_argument(
        "--header",
        action="append",
        type=_header,
        default=[],
        metavar="'NAME: VALUE'",
        help="sent on every request",
    )
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S", help="per request (default 5)")
    parser.add_argument(
        "--total-timeout", type=float, default=90.0, metavar="S", help="whole run (default 90)"
    )
    parser.add_argument(
        "--body-limit-bytes",
        type=int,
        default=DEFAULT_BODY_LIMIT_BYTES,
        metavar="N",
        help=f"the service's request body limit; N + 1 bytes must be refused (default {DEFAULT_BODY_LIMIT_BYTES})",
    )
    args = parser.parse_args(argv)
    for option in ("url", "openapi_url", "metrics_url"):
        value = getattr(args, option)
        if value is not None and (
            urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname
        ):
            parser.error(f"{option.replace('_', '-')}: not an http(s) URL: {value!r}")
    if args.timeout <= 0 or args.total_timeout <= 0 or args.body_limit_bytes < 1:
        parser.error("--timeout, --total-timeout and --body-limit-bytes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    base = args.url.rstrip("/")
    client = Client(base, headers=args.header, timeout_s=args.timeout, total_s=args.total_timeout)
    try:
        client.request("GET", "/")
    except ProbeFailed as exc:
        print(f"conformance: {base} does not answer: {exc}", file=sys.stderr)
        return 2
    context = Context(
        client,
        openapi_url=args.openapi_url or urljoin(base + "/", "openapi.json"),
        metrics_url=args.metrics_url or urljoin(base + "/", "metrics"),
        body_limit_bytes=args.body_limit_bytes,
    )
    # Each request has its timeout; this bounds the run against a server that answers a byte at a time.
    results: list[Result] = []
    worker = threading.Thread(target=run, args=(context, results), daemon=True)
    worker.start()
    worker.join(args.total_timeout + args.timeout)
    if worker.is_alive():
        stuck = STANDARDS[len(results)][0]
        print(f"conformance: no verdict within {args.total_timeout:g}s (stuck in {stuck})", file=sys.stderr)
        return 2
    print(json.dumps(document(base, results), indent=2) if args.json else report(base, results))
    return 0 if all(result.passed for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
