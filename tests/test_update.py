"""Day two: a baked service takes the template's next release with `make template-update`.

A fixture template repository (this template, in a git repository of its own) gets two releases:
v1.0.0 as it is, and v1.1.0 with what a real release carries (a platform module changed, a file
added, a dependency bumped and re-locked). A service is baked from v1.0.0 and committed, the team
changes it, and the update is run as its users would: real git, no network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

from tests.conftest import SMOKE_TESTS, TEMPLATE, make

PACKAGE = "src/orders_service"
DEADLINE = f"{PACKAGE}/platform/deadline.py"
# v1.1.0's platform change, and the line of it a conflicting team edits too.
DEADLINE_LINE = "Standard: Reliability / Timeouts."
DEADLINE_V2 = "Standard: Reliability / Timeouts (v1.1.0: one clock for every outbound call)."
TEAM_DEADLINE = "Standard: Reliability / Timeouts (ours: the budget our callers agreed)."
NEW_FILE = "docs/standards-changelog.md"


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-q", "-m", message)


def replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This template as a repository with releases v1.0.0 and v1.1.0."""
    repo = tmp_path_factory.mktemp("paved")
    tracked = git(TEMPLATE, "ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    for name in filter(None, tracked):
        source = TEMPLATE / name
        if source.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    git(repo, "init", "-q", "-b", "main")
    commit_all(repo, "paved 1.0.0")
    git(repo, "tag", "v1.0.0")

    service = repo / "{{cookiecutter.project_slug}}"
    package = service / "src/{{cookiecutter.package_name}}"
    replace(package / "platform/deadline.py", DEADLINE_LINE, DEADLINE_V2)
    (service / NEW_FILE).write_text(
        "# What changed in the standards\n\nv1.1.0: one clock for outbound calls.\n"
    )
    replace(service / "pyproject.toml", '"tenacity>=9,<10"', '"tenacity>=9.1,<10"')
    lock = subprocess.run(
        [sys.executable, "tools/lock.py"],
        cwd=repo,
        env=os.environ | {"UV_OFFLINE": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert lock.returncode == 0, lock.stderr
    commit_all(repo, "paved 1.1.0")
    git(repo, "tag", "v1.1.0")
    git(repo, "checkout", "-q", "v1.0.0")  # bakes below start from the first release
    return repo


def bake(template: Path, into: Path) -> Path:
    """Bake from the template's current checkout and commit it, as a team starts its repository."""
    project = Path(cookiecutter(str(template), no_input=True, output_dir=str(into)))
    git(project, "init", "-q", "-b", "main")
    commit_all(project, "Bake from paved")
    assert make(project, "install").returncode == 0
    return project


def record(project: Path) -> dict[str, object]:
    recorded: dict[str, object] = json.loads((project / ".cruft.json").read_text())
    return recorded


def test_the_bake_records_where_it_came_from(releases: Path, tmp_path: Path) -> None:
    project = Path(cookiecutter(str(releases), no_input=True, output_dir=str(tmp_path)))
    recorded = record(project)
    assert recorded["template"] == str(releases)
    assert recorded["commit"] == git(releases, "rev-parse", "v1.0.0")
    assert recorded["checkout"] == "v1.0.0"
    answers = recorded["context"]["cookiecutter"]  # type: ignore[index]
    assert answers["project_slug"] == "orders-service"
    assert answers["include_example_domain"] is True


def test_an_update_brings_the_release_and_keeps_the_teams_work(releases: Path, tmp_path: Path) -> None:
    project = bake(releases, tmp_path)
    # The team's own work: the example domain and a setting.
    replace(project / f"{PACKAGE}/orders/router.py", "MAX_PAGE_SIZE = 100", "MAX_PAGE_SIZE = 50")
    replace(
        project / f"{PACKAGE}/settings/fields.py",
        "db_pool_size: int = Field(default=10,",
        "db_pool_size: int = Field(default=20,",
    )
    assert make(project, "openapi").returncode == 0  # the page size is in the API's description
    commit_all(project, "Our page size and pool")

    result = make(project, "template-update", VERSION="v1.1.0")
    assert result.returncode == 0, result.stdout + result.stderr

    assert DEADLINE_V2 in (project / DEADLINE).read_text()  # the platform change arrived
    assert (project / NEW_FILE).is_file()  # and the new file
    assert '"tenacity>=9.1,<10"' in (project / "pyproject.toml").read_text()  # and the bump, locked
    assert 'specifier = ">=9.1,<10"' in (project / "uv.lock").read_text()
    assert "MAX_PAGE_SIZE = 50" in (project / f"{PACKAGE}/orders/router.py").read_text()  # ours stay
    assert "db_pool_size: int = Field(default=20," in (project / f"{PACKAGE}/settings/fields.py").read_text()
    conflicted = subprocess.run(
        ["git", "grep", "-lE", "^(<<<<<<<|>>>>>>>)"], cwd=project, capture_output=True, text=True
    )
    assert conflicted.stdout == ""
    assert record(project)["commit"] == git(releases, "rev-parse", "v1.1.0")

    for target in ("install", "lint", "test"):
        done = make(project, target, PYTEST_ARGS=SMOKE_TESTS)
        assert done.returncode == 0, f"make {target} after the update:\n{done.stdout}\n{done.stderr}"
    assert re.search(r"\d+ passed", done.stdout)

    commit_all(project, "Take paved v1.1.0")
    again = make(project, "template-update")  # the newest release is the one it has
    assert again.returncode == 0, again.stderr
    assert "already at v1.1.0; nothing to update" in again.stdout
    assert git(project, "status", "--porcelain") == ""


def test_a_conflict_is_shown_never_resolved_and_the_record_stays(releases: Path, tmp_path: Path) -> None:
    project = bake(releases, tmp_path)
    replace(project / DEADLINE, DEADLINE_LINE, TEAM_DEADLINE)
    commit_all(project, "Our own words on the deadline")

    result = make(project, "template-update", VERSION="v1.1.0")
    assert result.returncode != 0
    assert DEADLINE in result.stderr  # the file is named
    text = (project / DEADLINE).read_text()
    assert "<<<<<<<" in text
    assert ">>>>>>>" in text
    assert TEAM_DEADLINE in text
    assert DEADLINE_V2 in text
    assert record(project)["commit"] == git(releases, "rev-parse", "v1.0.0")
