"""Fixtures that bake the template. Bakes live under pytest's tmp directory, never in the repo."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

TEMPLATE = Path(__file__).resolve().parents[1]

# Every supported combination of the prompts that change which files a bake has, and a long package
# name (40 characters, the most the hook allows, sorting after `tests`): generated lines that hold
# the name must still pass ruff and its formatter.
COMBINATIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-example-domain": {"project_name": "Ledger", "include_example_domain": False},
    "long-name": {
        "project_name": "Warehouse Stock Reconciliation Service",
        "package_name": "warehouse_stock_reconciliation_service_x",
        "slo_availability": "99.95",
        "slo_latency_p99_ms": "250",
    },
}


# What a bake's suite must pass where the whole suite would prove nothing new: the long-name bake
# (its generated lines and names are what differ; lint checks those) and a bake after a template
# update. The app starts, its settings, migrations, probes and operations files hold. The whole
# suite runs on the default bake and the one without the example domain.
SMOKE_TESTS = (
    "tests/test_main.py tests/test_settings.py tests/test_operations.py "
    "tests/platform/test_health.py tests/db/test_migrations.py"
)


def load_hook(name: str) -> ModuleType:
    """Import a hook as a module (hooks are importable by design)."""
    spec = importlib.util.spec_from_file_location(name, TEMPLATE / "hooks" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_pair(taken: frozenset[int] = frozenset()) -> int:
    """A port P with P + 1 free too, neither in `taken`: `make run` starts its worker beside the
    server on PORT + 1 and METRICS_PORT + 1, which another test's server could hold otherwise."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            if {port, port + 1} & taken:
                continue
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two adjacent free ports on 127.0.0.1")


def make(project: Path, target: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a target of the baked project's Makefile, as its users would."""
    # Nor the outer make's variables: `make test PYTEST_ARGS=-v` here travels in MAKEFLAGS and would
    # override the bake's own (a command-line variable beats the environment in every sub-make).
    outer = ("DATABASE_URL", "PORT", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    merged = {key: value for key, value in os.environ.items() if not key.startswith(outer)}
    merged.update(env)
    return subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=project,
        env=merged,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def baked(cookies_session: Any) -> dict[str, Path]:
    """Each combination baked once per session."""
    projects = {}
    for name, context in COMBINATIONS.items():
        result = cookies_session.bake(extra_context=context)
        assert result.exception is None, result.exception
        assert result.exit_code == 0
        projects[name] = Path(result.project_path)
    return projects


# The two whole baked suites are most of `make test`'s time (each several minutes; everything else
# is seconds to a minute or two). `make test` runs two workers with `--dist worksteal`: each takes
# one half of the list in order, and an idle one takes over the tail of the other's queue. Heading
# each half with one whole suite puts the two on different workers from the start, so neither waits
# behind the other and the shorter tests fill in around them.
WHOLE_SUITES = (
    "test_the_bake_passes_its_own_lint_and_tests[default]",
    "test_the_bake_passes_its_own_lint_and_tests[no-example-domain]",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    whole = [item for item in items if item.name in WHOLE_SUITES]
    if len(whole) != len(WHOLE_SUITES):
        return  # a selection (-k, a single file): keep the collected order
    rest = [item for item in items if item.name not in WHOLE_SUITES]
    half = len(items) // 2
    items[:] = [whole[0], *rest[: half - 1], whole[1], *rest[half - 1 :]]
