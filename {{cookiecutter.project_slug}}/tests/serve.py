"""`python -m tests.serve MODULE:FACTORY`: the service's own `serve` command (its drain, workers and
exit codes), serving another app factory, such as `tests.app:create`."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # Imported here, not above: uvicorn's worker processes import this module again before they
    # answer their supervisor's first ping, and the whole service takes longer than that to import
    # on a loaded machine (the supervisor then kills them, over and over).
    from {{ cookiecutter.package_name }}.__main__ import main

    sys.exit(main(["serve"], app_factory=sys.argv[1]))
