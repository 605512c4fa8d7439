"""The service's domain packages, found by their shape rather than listed.

A domain is a subpackage with a `router.py` exposing `router` (and usually a `models.py`). Found by
discovery, so that the template can leave the example domain out as whole files, and adding a domain
is adding its package. `platform` and `db` are not domains.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from types import ModuleType

import {{ cookiecutter.package_name }} as package

NOT_DOMAINS = frozenset({"platform", "db"})


def modules(leaf: str) -> list[ModuleType]:
    """Import `<domain>.<leaf>` for every domain that has it, in name order."""
    found = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda info: info.name):
        if not info.ispkg or info.name in NOT_DOMAINS:
            continue
        name = f"{package.__name__}.{info.name}.{leaf}"
        if importlib.util.find_spec(name) is not None:
            found.append(importlib.import_module(name))
    return found
