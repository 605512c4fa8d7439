"""Alembic, driven from Python: the `migrate` command, the tests and `/ready` share this.

Migrations are their own deploy step (`python -m {{ cookiecutter.package_name }} migrate`, a Kubernetes
Job), never a side effect of serving: `/ready` reports a schema behind the head instead.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from {{ cookiecutter.package_name }}.settings import Settings


def alembic_config(migrations_dir: Path, url: str | None = None, settings: Settings | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    if url is not None:
        # Passed as an attribute, not an option: options are interpolated and may be logged.
        config.attributes["url"] = url
    if settings is not None:
        config.attributes["settings"] = settings
    return config


def expected_heads(migrations_dir: Path) -> frozenset[str]:
    """The revision(s) this code's models expect the database to be at."""
    if not (migrations_dir / "env.py").is_file():
        raise FileNotFoundError(f"MIGRATIONS_DIR={migrations_dir} holds no Alembic environment (env.py)")
    return frozenset(ScriptDirectory.from_config(alembic_config(migrations_dir)).get_heads())


def known_revisions(migrations_dir: Path) -> frozenset[str]:
    """Every revision this code ships: a database at one it does not know is ahead of it."""
    script = ScriptDirectory.from_config(alembic_config(migrations_dir))
    return frozenset(revision.revision for revision in script.walk_revisions())


def upgrade(migrations_dir: Path, url: str, revision: str = "head", settings: Settings | None = None) -> None:
    command.upgrade(alembic_config(migrations_dir, url, settings), revision)
