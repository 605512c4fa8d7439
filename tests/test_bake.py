"""Bake each combination and hold the result to what its users will run: lint and tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests.conftest import COMBINATIONS, SMOKE_TESTS, TEMPLATE, make

DEFAULTS = json.loads((TEMPLATE / "cookiecutter.json").read_text())
# The fewest tests each combination's `make test` may run (what it ran when last raised, rounded
# down): the platform's guarantees run in every bake (tests/platform/, tests/app.py), so the bake
# without the example domain loses only the domain's own tests.
MIN_TESTS = {"default": 330, "no-example-domain": 295, "long-name": 65}

# Jinja left unrendered; `${{ ... }}` in GitHub workflows is GitHub's own syntax, not residue, nor
# is `{{ $value }}` / `{{ $labels.pod }}` in Prometheus alert annotations (Go templates).
RESIDUE = re.compile(r"(?<!\$)\{\{(?! \$)|\{%|cookiecutter\.")


# What running a bake leaves beside what it was baked with (its .gitignore): venv, database, caches.
RUN_ARTEFACTS = {
    ".venv",
    ".data",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "__pycache__",
    ".hypothesis",
    "build",
}


def _files(project: Path) -> list[Path]:
    return [
        p for p in project.rglob("*") if p.is_file() and not RUN_ARTEFACTS & set(p.relative_to(project).parts)
    ]


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_no_template_residue(baked: dict[str, Path], combination: str) -> None:
    project = baked[combination]
    leftovers = [
        f"{path.relative_to(project)}: {line.strip()}"
        for path in _files(project)
        for line in path.read_text().splitlines()
        if RESIDUE.search(line)
    ]
    assert leftovers == []


def test_the_default_bake_has_the_example_domain(baked: dict[str, Path]) -> None:
    project = baked["default"]
    assert project.name == "orders-service"
    assert (project / "src/orders_service/orders/router.py").is_file()
    assert (project / "migrations/versions/2026-11-22_orders.py").is_file()
    assert "/v1/orders" in (project / "README.md").read_text()


def test_without_the_example_domain_no_trace_of_it_is_left(baked: dict[str, Path]) -> None:
    project = baked["no-example-domain"]
    assert project.name == "ledger"
    package = project / "src/ledger"
    assert not (package / "orders").exists()
    assert not (project / "tests/orders").exists()
    assert not (project / "migrations/versions/2026-11-22_orders.py").exists()
    mentions = [str(path) for path in _files(project) if "/v1/orders" in path.read_text()]
    assert mentions == []


def test_no_bake_carries_the_default_names_it_was_not_given(baked: dict[str, Path]) -> None:
    """A default bake's names copied back into the template would ship in every other bake."""
    project = baked["long-name"]
    mentions = [
        str(path)
        for path in _files(project)
        if re.search(r"orders[-_]service|Orders Service", path.read_text())
    ]
    assert mentions == []


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_the_runbook_is_rendered_with_the_answers(baked: dict[str, Path], combination: str) -> None:
    """Each combination's own answers, the SLO figures the alerts and the on-call go by included."""
    answers = DEFAULTS | COMBINATIONS[combination]
    runbook = (baked[combination] / "RUNBOOK.md").read_text()
    assert not re.search(r"\{\{|\{%|\}\}|%\}", runbook), "unrendered Jinja in RUNBOOK.md"
    assert f"# {answers['project_name']} runbook" in runbook
    assert answers["oncall_channel"] in runbook
    assert f"| Availability SLO | {answers['slo_availability']}% of requests" in runbook
    assert f"{answers['slo_availability']}% SLO's budget burning" in runbook
    assert f"| Latency SLO | p99 under {answers['slo_latency_p99_ms']} ms |" in runbook
    assert f"requests slower than\n{answers['slo_latency_p99_ms']} ms, whose budget is 1%" in runbook


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_the_bake_passes_its_own_lint_and_tests(
    baked: dict[str, Path], combination: str, tmp_path: Path
) -> None:
    project = baked[combination]
    report = tmp_path / "junit.xml"
    # The long name changes generated lines, which lint checks; its behaviour is the default's.
    selection = SMOKE_TESTS if combination == "long-name" else ""
    for target in ("install", "lint", "test"):
        result = make(project, target, timeout=900, PYTEST_ARGS=f"{selection} --junitxml={report}")
        assert result.returncode == 0, f"make {target} in {project.name}:\n{result.stdout}\n{result.stderr}"
    # What ran, from pytest's own report: a bake whose tests were lost (a file the hook removed, a
    # module no longer collected) or skipped (a fixture that could not start) fails here.
    [suite] = ElementTree.parse(report).getroot().iter("testsuite")
    counts = {name: int(suite.get(name, "0")) for name in ("tests", "failures", "errors", "skipped")}
    assert counts["tests"] >= MIN_TESTS[combination], counts
    assert (counts["failures"], counts["errors"], counts["skipped"]) == (0, 0, 0), counts


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_the_bake_ships_its_lock_and_installs_from_it_offline(
    baked: dict[str, Path], combination: str, tmp_path: Path
) -> None:
    """The versions a bake installs are the template's tested ones: its uv.lock matches its
    pyproject.toml, and with the package cache warm it installs without the network."""
    project = baked[combination]
    uv = os.environ.get("UV", "uv").split()
    offline = os.environ | {"UV_OFFLINE": "1", "UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv")}
    checked = subprocess.run(
        [*uv, "lock", "--check"], cwd=project, env=offline, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    installed = subprocess.run(
        [*uv, "sync", "--locked", "--no-dev"], cwd=project, env=offline, capture_output=True, text=True
    )
    assert installed.returncode == 0, installed.stderr
    # Production gets no development extras: no auto-reloader, no test tools.
    packages = {
        path.name.split("-")[0].lower()
        for path in (tmp_path / "venv").glob("lib/python*/site-packages/*.dist-info")
    }
    assert "uvicorn" in packages
    assert "httptools" in packages
    assert not {"watchfiles", "pytest", "cookiecutter"} & packages
