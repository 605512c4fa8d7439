"""Start-up: the environment read once, and a bad one refused without a traceback.

`load_settings` is what the service, its worker and migrations (migrations/env.py) call: each bad
variable is one line on stderr (`configuration error: PORT: ...`), a conflict between settings names
them itself (checks.py), and the process exits 2: RUNBOOK reads exit 2 as a configuration error.
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from {{ cookiecutter.package_name }}.settings.fields import Settings


def load_settings() -> Settings:
    """Read the environment; on bad configuration print one line per variable and exit 2."""
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            variable = "_".join(str(part) for part in error["loc"][:1]).upper()
            message = error["msg"].removeprefix("Value error, ")
            # A conflict between settings names them itself; a validator may report several.
            for line in message.splitlines():
                print(f"configuration error: {variable + ': ' if variable else ''}{line}", file=sys.stderr)
        raise SystemExit(2) from None
