"""A command-line tool the checks need that is not a Python package: found on PATH, else installed
from Debian's packages when we may (root with apt-get: CI machines and containers), else skipped
with the reason said, except under CI (`CI` set), where a skipped check would be a silent pass.

    python scripts/debian_tool.py promtool prometheus check rules deploy/prometheus/*.yaml
                       # make lint: run `promtool check rules ...`, installing `prometheus` first

Tests import `ensure` (and `missing`) to find the same tools: promtool (`prometheus`), jq (`jq`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def ensure(command: str, package: str) -> str | None:
    """The tool's path, installing its package if it is missing and we may; None if it is not there."""
    found = shutil.which(command)
    if found:
        return found
    apt_get = shutil.which("apt-get")
    if hasattr(os, "geteuid") and os.geteuid() == 0 and apt_get:
        print(f"installing {command} from Debian's package {package}", file=sys.stderr)
        quiet = {"capture_output": True, "check": False, "timeout": 600}
        subprocess.run([apt_get, "update", "-qq"], **quiet)  # type: ignore[call-overload]
        subprocess.run(  # type: ignore[call-overload]
            [apt_get, "install", "-y", "-qq", "--no-install-recommends", package],
            env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"},
            **quiet,
        )
        found = shutil.which(command)
    return found


def missing(command: str, package: str) -> str:
    """Why the tool is not there, and how to get it."""
    return (
        f"{command} is not installed and could not be installed here (needs root and apt-get): "
        f"`sudo apt-get install {package}` (Debian, Ubuntu), or the upstream release binary"
    )


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: debian_tool.py COMMAND PACKAGE [ARGS...]", file=sys.stderr)
        return 2
    command, package, *args = argv
    found = ensure(command, package)
    if found is None:
        if os.environ.get("CI"):
            print(f"error: {missing(command, package)}", file=sys.stderr)
            return 1
        print(f"skipped `{command} {' '.join(args)}`: {missing(command, package)}", file=sys.stderr)
        return 0
    return subprocess.run([found, *args], check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
