"""Remove the files of options that are off, then print the next steps.

The table below is the only place an option turns into files: generated Python carries no
Jinja conditionals. Importable: tests call `files_to_remove` directly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from cookiecutter import config, repository

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


def _git(repo: str, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    except OSError:  # no git on this machine
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _expanded(template: str) -> str:
    return repository.expand_abbreviations(template, config.BUILTIN_ABBREVIATIONS)


def record(context: dict[str, Any]) -> dict[str, Any]:
    """Where this bake came from, in cruft's `.cruft.json` format: the template (a local one by its
    absolute path), the commit and release it was baked from, and the answers. `make
    template-update` renders the template again from it; `cruft check` and `cruft diff` read it too."""
    template, repo_dir = str(context["_template"]), str(context["_repo_dir"])
    if not os.path.isabs(repo_dir):
        # The hook runs inside the new project: a relative template path is relative to where the
        # bake was started, which the shell's PWD still names.
        repo_dir = os.path.normpath(os.path.join(os.environ.get("PWD", os.getcwd()), repo_dir))
    # A local template is recorded by its absolute path; a remote one as it was given (gh:org/paved).
    source = template if repository.is_repo_url(_expanded(template)) else repo_dir
    commit = _git(repo_dir, "rev-parse", "HEAD")
    release = _git(repo_dir, "describe", "--tags", "--exact-match", "--match", "v[0-9]*", "HEAD")
    answers = {key: value for key, value in context.items() if not key.startswith("_")}
    return {
        "template": source,
        "commit": commit,
        "checkout": release or context.get("_checkout"),
        "context": {"cookiecutter": {**answers, "_template": source, "_commit": commit}},
        "directory": None,
    }


def next_steps(slug: str) -> str:
    return f"""
Baked {slug}. Next:
  cd {slug}
  make install      # .venv with the service and its dev tools (pip installs uv when it is missing)
  make run          # embedded PostgreSQL, migrations, http://127.0.0.1:8000/docs
  make test         # the suite, against a real PostgreSQL
  make lint         # ruff, ruff format --check, mypy --strict
Then read RUNBOOK.md and fill in what only your team knows.
"""


if __name__ == "__main__":
    options = {"include_example_domain": "{{ cookiecutter.include_example_domain }}" == "True"}
    remove(Path.cwd(), files_to_remove(options, "{{ cookiecutter.package_name }}"))
    context = json.loads(r"""{{ cookiecutter | jsonify }}""")
    Path(".cruft.json").write_text(json.dumps(record(context), indent=2) + "\n")
    print(next_steps("{{ cookiecutter.project_slug }}"), file=sys.stderr)
