"""Remove the files of options that are off, then print the next steps.

The table below is the only place an option turns into files: generated Python carries no
Jinja conditionals. Importable: tests call `files_to_remove` directly.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# option -> paths (relative to the baked project) that exist only when the option is on
OPTIONAL_FILES: dict[str, tuple[str, ...]] = {
    "include_example_domain": (
        "src/{package}/orders",
        "tests/orders",
        "migrations/versions/2026-11-22_orders.py",
        "migrations/versions/2026-11-22_orders_updated_at.py",
        "scripts/bench_migration.py",
    ),
}


def files_to_remove(options: dict[str, bool], package: str) -> list[str]:
    return [
        path.format(package=package)
        for option, paths in OPTIONAL_FILES.items()
        if not options[option]
        for path in paths
    ]


def remove(root: Path, relative_paths: list[str]) -> None:
    for relative in relative_paths:
        path = root / relative
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            raise FileNotFoundError(f"post-gen table names {relative}, which the template does not have")


def next_steps(slug: str) -> str:
    return f"""
Baked {slug}. Next:
  cd {slug}
  make install      # .venv with the service and its dev tools (needs uv: python3 -m pip install uv)
  make run          # embedded PostgreSQL, migrations, http://127.0.0.1:8000/docs
  make test         # the suite, against a real PostgreSQL
  make lint         # ruff, ruff format --check, mypy --strict
Then read RUNBOOK.md and fill in what only your team knows.
"""


if __name__ == "__main__":
    options = {"include_example_domain": "{{ cookiecutter.include_example_domain }}" == "True"}
    remove(Path.cwd(), files_to_remove(options, "{{ cookiecutter.package_name }}"))
    print(next_steps("{{ cookiecutter.project_slug }}"), file=sys.stderr)
