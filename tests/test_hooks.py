"""The hooks: bad answers are refused before anything is written; options remove whole files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEMPLATE, load_hook

pre_gen = load_hook("pre_gen_project")
post_gen = load_hook("post_gen_project")

VALID = {
    "project_name": "Orders Service",
    "project_slug": "orders-service",
    "package_name": "orders_service",
    "slo_availability": "99.9",
    "slo_latency_p99_ms": "300",
    "runbook_url_base": "https://github.com/acme/orders-service/blob/main/RUNBOOK.md",
}

INVALID = [
    ("project_name", 'Bob "B" Orders', "project_name: must not contain double quotes"),
    ("description", "line one\nline two", "description: must not contain double quotes"),
    ("owner_team", "back\\slash", "owner_team: must not contain"),
    ("oncall_channel", "#ops {{ x }}", "oncall_channel: must not contain"),
    ("package_name", "anyio", "package_name: 'anyio' shadows a dependency"),
    ("package_name", "a" * 41, "package_name: '" + "a" * 41 + "' must be at most 40 characters"),
    ("project_name", "   ", "project_name: must not be empty"),
    ("project_slug", "Orders_Service", "project_slug: 'Orders_Service' must match ^[a-z][a-z0-9-]*$"),
    ("project_slug", "9lives", "project_slug: '9lives' must match"),
    (
        "package_name",
        "orders-service",
        "package_name: 'orders-service' must be a lowercase Python identifier",
    ),
    ("package_name", "Orders", "package_name: 'Orders' must be a lowercase Python identifier"),
    ("package_name", "class", "package_name: 'class' must be a lowercase Python identifier"),
    ("package_name", "logging", "package_name: 'logging' shadows the standard library"),
    ("package_name", "fastapi", "package_name: 'fastapi' shadows a dependency"),
    ("slo_availability", "three nines", "slo_availability: 'three nines' must be a number"),
    ("slo_availability", "100", "slo_availability: '100' must be a percentage between 0 and 100"),
    ("slo_latency_p99_ms", "fast", "slo_latency_p99_ms: 'fast' must be a number"),
    ("slo_latency_p99_ms", "-5", "slo_latency_p99_ms: '-5' must be a positive number"),
    ("runbook_url_base", "RUNBOOK.md", "runbook_url_base: 'RUNBOOK.md' must be an absolute http(s) URL"),
    (
        "runbook_url_base",
        "https://wiki.example.com/runbook#top",
        "runbook_url_base: 'https://wiki.example.com/runbook#top' must be an absolute",
    ),
]


def test_valid_answers_pass() -> None:
    assert pre_gen.validate(VALID) == []


@pytest.mark.parametrize(("field", "value", "message"), INVALID)
def test_each_rule_names_its_field(field: str, value: str, message: str) -> None:
    problems = pre_gen.validate(VALID | {field: value})
    assert len(problems) == 1
    assert problems[0].startswith(message)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("project_slug", "Bad_Slug", "project_slug:"),
        ("package_name", "json", "package_name: 'json' shadows the standard library"),
        ("slo_availability", "lots", "slo_availability: 'lots' must be a number"),
        ("project_name", "", "project_name: must not be empty"),
        ("project_name", "Foo\\", "project_name: must not contain double quotes"),
        ("description", 'Says "hi"', "description: must not contain double quotes"),
    ],
)
def test_cookiecutter_refuses_bad_input_and_leaves_nothing_behind(
    tmp_path: Path, field: str, value: str, message: str
) -> None:
    # project_slug and package_name are derived: set both, so only the field under test is wrong.
    answers = {"project_name": "Some Service", "project_slug": "some-service", "package_name": "some_service"}
    answers[field] = value
    result = subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--no-input", "--output-dir", str(tmp_path), str(TEMPLATE)]
        + [f"{key}={val}" for key, val in answers.items()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert f"paved: invalid input: {message}" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_turning_the_example_domain_off_removes_its_files() -> None:
    assert post_gen.files_to_remove({"include_example_domain": True}, "pkg") == []
    assert post_gen.files_to_remove({"include_example_domain": False}, "pkg") == [
        "src/pkg/orders",
        "tests/orders",
        "migrations/versions/2026-11-22_orders.py",
        "migrations/versions/2026-11-22_orders_updated_at.py",
        "scripts/bench_migration.py",
    ]


def test_every_path_in_the_removal_table_exists_in_the_template() -> None:
    root = TEMPLATE / "{{cookiecutter.project_slug}}"
    for paths in post_gen.OPTIONAL_FILES.values():
        for path in paths:
            assert (root / path.format(package="{{cookiecutter.package_name}}")).exists(), path


def test_the_direct_dependencies_cannot_be_shadowed() -> None:
    """Each import name of the service's runtime dependencies is refused as a package name."""
    import tomllib

    pyproject = tomllib.loads((TEMPLATE / "{{cookiecutter.project_slug}}" / "pyproject.toml").read_text())
    import_names = {
        "prometheus-client": "prometheus_client",
        "pydantic-settings": "pydantic_settings",
        "opentelemetry-api": "opentelemetry",
        "opentelemetry-sdk": "opentelemetry",
        "opentelemetry-exporter-otlp-proto-http": "opentelemetry",
        "pyjwt": "jwt",
    }
    for requirement in pyproject["project"]["dependencies"]:
        name = requirement.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()
        module = import_names.get(name, name.replace("-", "_"))
        assert module in pre_gen.DEPENDENCIES, name
