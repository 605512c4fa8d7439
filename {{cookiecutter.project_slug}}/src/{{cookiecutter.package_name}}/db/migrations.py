"""Alembic, driven from Python: the `migrate` command, the tests and `/ready` share this.

Migrations are their own deploy step (`python -m {{ cookiecutter.package_name }} migrate`, a Kubernetes
Job), never a side effect of serving: `/ready` reports a schema behind the heads instead.

The chain has two branches off `0002_idempotency_keys`: the platform's revisions (each marked
`platform_revision = True`, each revising the previous platform one, so a template update adds to
its own branch) and the service's own. Both are applied together (`heads`, never `head`);
`domain_heads` says what a new revision of the service revises (`make migration`).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING

from {{ cookiecutter.package_name }}.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config


def alembic_config(migrations_dir: Path, url: str | None = None, settings: Settings | None = None) -> Config:
    from alembic.config import Config  # Alembic costs ~0.4 s of start-up: only the commands load it

    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    if url is not None:
        # Passed as an attribute, not an option: options are interpolated and may be logged.
        config.attributes["url"] = url
    if settings is not None:
        config.attributes["settings"] = settings
    return config


def _chain(migrations_dir: Path) -> dict[str, tuple[str, ...]]:
    """Each revision of `versions/` and the revisions it revises, read from the files' top-level
    `revision` and `down_revision` without importing Alembic: `/ready` needs them at start-up,
    and Alembic's import would be most of that start-up. A test holds this to Alembic's reading."""
    return {revision: downs for revision, (downs, _) in _read(migrations_dir).items()}


def _read(migrations_dir: Path) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Each revision: what it revises, and whether it is the platform's (`platform_revision`)."""
    chain = {}
    for path in sorted((migrations_dir / "versions").glob("*.py")):
        values: dict[str, object] = {}
        for node in ast.parse(path.read_text(), str(path)).body:
            target: ast.expr
            if isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id in {
                "revision",
                "down_revision",
                "platform_revision",
            }:
                values[target.id] = ast.literal_eval(value)
        revision, down = values.get("revision"), values.get("down_revision")
        if isinstance(revision, str):
            downs = (
                (down,) if isinstance(down, str) else tuple(down) if isinstance(down, tuple | list) else ()
            )
            chain[revision] = (tuple(str(d) for d in downs), values.get("platform_revision") is True)
    return chain


def expected_heads(migrations_dir: Path) -> frozenset[str]:
    """The revision(s) this code's models expect the database to be at."""
    if not (migrations_dir / "env.py").is_file():
        raise FileNotFoundError(f"MIGRATIONS_DIR={migrations_dir} holds no Alembic environment (env.py)")
    chain = _chain(migrations_dir)
    revised = {down for downs in chain.values() for down in downs}
    return frozenset(chain) - revised


def domain_heads(migrations_dir: Path) -> frozenset[str]:
    """What a new revision of the service revises: the heads outside the platform's branch, or the
    platform's head while the service has no revision of its own (`scripts/migration_base.py`)."""
    read = _read(migrations_dir)
    heads = expected_heads(migrations_dir)
    return frozenset(head for head in heads if not read[head][1]) or heads


def known_revisions(migrations_dir: Path) -> frozenset[str]:
    """Every revision this code ships: a database at one it does not know is ahead of it."""
    return frozenset(_chain(migrations_dir))


def upgrade(
    migrations_dir: Path, url: str, revision: str = "heads", settings: Settings | None = None
) -> None:
    from alembic import command

    command.upgrade(alembic_config(migrations_dir, url, settings), revision)


def downgrade(migrations_dir: Path, url: str, revision: str, settings: Settings | None = None) -> None:
    from alembic import command

    command.downgrade(alembic_config(migrations_dir, url, settings), revision)
