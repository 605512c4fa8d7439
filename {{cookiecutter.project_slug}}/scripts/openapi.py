"""The API contract, committed: `openapi.json` is what the code serves at /openapi.json.

    python scripts/openapi.py write            # make openapi: regenerate openapi.json
    python scripts/openapi.py check            # make lint: fail when the code and the file differ
    python scripts/openapi.py compat [--base REF]
                                               # make api-compat: fail on breaking changes between
                                               # the committed document at REF (HEAD) and the code

A breaking change is one a client built against the old document notices: a path or method
removed; a success status changed; a field removed from a response; a request parameter or body
field that becomes required or is new and required; a type, enum or bound that narrows what a
request may send. Additive changes (new paths, optional parameters, new response fields, wider
types) pass. The comparison is written here, about a hundred lines: the maintained tools that do
it (oasdiff, openapi-diff) are Go and Java programs, not Python packages a bake installs with uv.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

DOCUMENT = Path("openapi.json")
METHODS = ("get", "put", "post", "delete", "patch", "options", "head")


def generate() -> dict[str, Any]:
    from {{ cookiecutter.package_name }}.main import create_app
    from {{ cookiecutter.package_name }}.settings import Settings

    # Nothing is connected: the document comes from the routes alone.
    migrations_dir = Path(__file__).resolve().parents[1] / "migrations"
    document: dict[str, Any] = create_app(Settings(migrations_dir=migrations_dir)).openapi()
    return document


def dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


class Contract:
    """One OpenAPI document, with its `$ref`s resolved on demand."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def resolve(self, schema: dict[str, Any] | None) -> dict[str, Any]:
        while schema and "$ref" in schema:
            node: Any = self.document
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = node
        return schema or {}

    def operations(self) -> dict[str, dict[str, Any]]:
        return {
            f"{method.upper()} {path}": operation
            for path, item in self.document.get("paths", {}).items()
            for method, operation in item.items()
            if method in METHODS
        }

    def types(self, schema: dict[str, Any] | None) -> set[str]:
        schema = self.resolve(schema)
        if "anyOf" in schema or "oneOf" in schema:
            return {
                kind for option in schema.get("anyOf", schema.get("oneOf", [])) for kind in self.types(option)
            }
        kind = schema.get("type")
        return {kind} if isinstance(kind, str) else set(kind or ["any"])


def _narrowed(
    old: Contract, new: Contract, before: dict[str, Any] | None, after: dict[str, Any] | None
) -> str | None:
    """How a request schema accepts less than it did, if it does."""
    was, now = old.resolve(before), new.resolve(after)
    if "any" not in new.types(after) and not old.types(before) <= new.types(after):
        return f"type {sorted(old.types(before))} -> {sorted(new.types(after))}"
    if "enum" in now and not set(was.get("enum", now["enum"])) <= set(now["enum"]):
        return f"enum loses {sorted(set(was.get('enum', [])) - set(now['enum']))}"
    for bound in ("maxLength", "maximum"):
        if bound in now and now[bound] < was.get(bound, float("inf")):
            return f"{bound} {was.get(bound, 'none')} -> {now[bound]}"
    for bound in ("minLength", "minimum"):
        if bound in now and now[bound] > was.get(bound, float("-inf")):
            return f"{bound} {was.get(bound, 'none')} -> {now[bound]}"
    if "pattern" in now and now["pattern"] != was.get("pattern"):
        return f"pattern {was.get('pattern', 'none')!r} -> {now['pattern']!r}"
    return None


def breaking_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    old, new = Contract(before), Contract(after)
    found: list[str] = []
    new_operations = new.operations()
    for name, was in old.operations().items():
        now = new_operations.get(name)
        if now is None:
            found.append(f"{name}: removed")
            continue
        found += [f"{name}: {change}" for change in _parameters(old, new, was, now)]
        found += [f"{name}: {change}" for change in _request_body(old, new, was, now)]
        found += [f"{name}: {change}" for change in _responses(old, new, was, now)]
    return found


def _parameters(old: Contract, new: Contract, was: dict[str, Any], now: dict[str, Any]) -> list[str]:
    before = {(p["in"], p["name"]): p for p in map(old.resolve, was.get("parameters", []))}
    changes = []
    for parameter in map(new.resolve, now.get("parameters", [])):
        key = (parameter["in"], parameter["name"])
        previous = before.get(key)
        if parameter.get("required") and not (previous or {}).get("required"):
            changes.append(f"{parameter['in']} parameter {parameter['name']!r} is now required")
        elif previous and (narrowed := _narrowed(old, new, previous.get("schema"), parameter.get("schema"))):
            changes.append(f"{parameter['in']} parameter {parameter['name']!r} narrowed: {narrowed}")
    return changes


def _body_schema(contract: Contract, operation: dict[str, Any]) -> dict[str, Any]:
    content = operation.get("requestBody", {}).get("content", {})
    return contract.resolve(next(iter(content.values()), {}).get("schema"))


def _request_body(old: Contract, new: Contract, was: dict[str, Any], now: dict[str, Any]) -> list[str]:
    before, after = _body_schema(old, was), _body_schema(new, now)
    changes = [
        f"request field {field!r} is now required"
        for field in sorted(set(after.get("required", [])) - set(before.get("required", [])))
    ]
    for field, schema in after.get("properties", {}).items():
        previous = before.get("properties", {}).get(field)
        if previous is not None and (narrowed := _narrowed(old, new, previous, schema)):
            changes.append(f"request field {field!r} narrowed: {narrowed}")
    return changes


def _responses(old: Contract, new: Contract, was: dict[str, Any], now: dict[str, Any]) -> list[str]:
    changes = []
    for status, response in was.get("responses", {}).items():
        if not status.startswith("2"):
            continue
        if status not in now.get("responses", {}):
            changes.append(f"success status {status} is no longer answered")
            continue
        removed = _fields(old, response) - _fields(new, now["responses"][status])
        changes += [f"response {status} field {field!r} removed" for field in sorted(removed)]
    return changes


def _fields(contract: Contract, response: dict[str, Any]) -> set[str]:
    content = response.get("content", {})
    return set(contract.resolve(next(iter(content.values()), {}).get("schema")).get("properties", {}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["write", "check", "compat"])
    parser.add_argument("--base", default="HEAD", help="with compat: the git ref of the previous contract")
    args = parser.parse_args(argv)
    current = dump(generate())
    if args.command == "write":
        DOCUMENT.write_text(current)
        return 0
    if args.command == "check":
        if not DOCUMENT.is_file() or DOCUMENT.read_text() != current:
            print(
                f"{DOCUMENT} differs from what the code serves: run `make openapi` and commit it",
                file=sys.stderr,
            )
            return 1
        return 0
    git = shutil.which("git") or "git"
    shown = subprocess.run(
        [git, "show", f"{args.base}:{DOCUMENT}"], capture_output=True, text=True, check=False
    )
    if shown.returncode != 0:
        print(f"no {DOCUMENT} at {args.base}: nothing to compare with", file=sys.stderr)
        return 0
    changes = breaking_changes(json.loads(shown.stdout), json.loads(current))
    for change in changes:
        print(f"breaking: {change}", file=sys.stderr)
    return 1 if changes else 0


if __name__ == "__main__":
    raise SystemExit(main())
