"""The committed API contract: openapi.json is what the code serves, and breaking changes fail."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import PROJECT


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("openapi_script", PROJECT / "scripts" / "openapi.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = load_script()

# A small contract of the shapes a real one has: a list with a query parameter, a create with a body
# and a 201, a read whose answer is a referenced schema.
BASE: dict[str, Any] = {
    "openapi": "3.1.0",
    "paths": {
        "/v1/items": {
            "get": {
                "parameters": [
                    {
                        "in": "query",
                        "name": "limit",
                        "required": False,
                        "schema": {"type": "integer", "maximum": 100},
                    },
                    {"in": "query", "name": "kind", "required": False, "schema": {"enum": ["a", "b"]}},
                ],
                "responses": {
                    "200": {
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}
                    }
                },
            },
            "post": {
                "requestBody": {
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ItemCreate"}}}
                },
                "responses": {
                    "201": {
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}
                    }
                },
            },
        },
    },
    "components": {
        "schemas": {
            "Item": {"properties": {"id": {"type": "string"}, "name": {"type": "string"}}},
            "ItemCreate": {
                "properties": {"name": {"type": "string"}, "note": {"type": "string"}},
                "required": ["name"],
            },
        }
    },
}


def changed(edit: Any) -> list[str]:
    after = copy.deepcopy(BASE)
    edit(after)
    changes: list[str] = script.breaking_changes(BASE, after)
    return changes


BREAKING = {
    "removed method": (lambda d: d["paths"]["/v1/items"].pop("post"), "POST /v1/items: removed"),
    "removed path": (lambda d: d["paths"].pop("/v1/items"), "GET /v1/items: removed"),
    "removed response field": (
        lambda d: d["components"]["schemas"]["Item"]["properties"].pop("name"),
        "GET /v1/items: response 200 field 'name' removed",
    ),
    "new required parameter": (
        lambda d: d["paths"]["/v1/items"]["get"]["parameters"].append(
            {"in": "header", "name": "X-Tenant", "required": True, "schema": {"type": "string"}}
        ),
        "GET /v1/items: header parameter 'X-Tenant' is now required",
    ),
    "new required body field": (
        lambda d: d["components"]["schemas"]["ItemCreate"]["required"].append("note"),
        "POST /v1/items: request field 'note' is now required",
    ),
    "narrowed type": (
        lambda d: d["components"]["schemas"]["ItemCreate"]["properties"].update(name={"type": "integer"}),
        "POST /v1/items: request field 'name' narrowed: type ['string'] -> ['integer']",
    ),
    "narrowed enum": (
        lambda d: d["paths"]["/v1/items"]["get"]["parameters"][1].update(schema={"enum": ["a"]}),
        "GET /v1/items: query parameter 'kind' narrowed: enum loses ['b']",
    ),
    "narrowed bound": (
        lambda d: d["paths"]["/v1/items"]["get"]["parameters"][0]["schema"].update(maximum=50),
        "GET /v1/items: query parameter 'limit' narrowed: maximum 100 -> 50",
    ),
    "changed status code": (
        lambda d: d["paths"]["/v1/items"]["post"]["responses"].update(
            {"200": d["paths"]["/v1/items"]["post"]["responses"].pop("201")}
        ),
        "POST /v1/items: success status 201 is no longer answered",
    ),
}


@pytest.mark.parametrize("kind", BREAKING)
def test_each_kind_of_breaking_change_is_named(kind: str) -> None:
    edit, expected = BREAKING[kind]
    assert expected in changed(edit)


ADDITIVE = {
    "new path": lambda d: d["paths"].update({"/v1/other": {"get": {"responses": {"200": {}}}}}),
    "new optional parameter": lambda d: d["paths"]["/v1/items"]["get"]["parameters"].append(
        {"in": "query", "name": "q", "required": False, "schema": {"type": "string"}}
    ),
    "new response field": lambda d: d["components"]["schemas"]["Item"]["properties"].update(
        kind={"type": "string"}
    ),
    "new optional body field": lambda d: d["components"]["schemas"]["ItemCreate"]["properties"].update(
        tag={"type": "string"}
    ),
    "wider enum": lambda d: d["paths"]["/v1/items"]["get"]["parameters"][1].update(
        schema={"enum": ["a", "b", "c"]}
    ),
    "looser bound": lambda d: d["paths"]["/v1/items"]["get"]["parameters"][0]["schema"].update(maximum=500),
    "new error response": lambda d: d["paths"]["/v1/items"]["post"]["responses"].update({"409": {}}),
}


@pytest.mark.parametrize("kind", ADDITIVE)
def test_additive_changes_pass(kind: str) -> None:
    assert changed(ADDITIVE[kind]) == []


def test_the_committed_document_is_what_the_code_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    committed = (PROJECT / "openapi.json").read_text()
    assert committed == script.dump(script.generate())
    monkeypatch.chdir(tmp_path)  # `check` reads openapi.json where it runs
    document = json.loads(committed)
    document["paths"].pop(next(iter(document["paths"])))
    (tmp_path / "openapi.json").write_text(script.dump(document))
    assert script.main(["check"]) == 1
    (tmp_path / "openapi.json").write_text(committed)
    assert script.main(["check"]) == 0
