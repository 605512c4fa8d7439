"""`make lock`: resolve the baked service's dependencies once, here, and ship the result in every bake.

A bake's `uv.lock` is `{{cookiecutter.project_slug}}/uv.lock`, rendered like any other file: the
versions every bake installs are the ones this repository's tests ran with, not whatever is newest
on the day of the bake. This script bakes the default service, keeps the versions of the current
lock (or takes the newest the ranges allow, with `--upgrade`), and writes the lock back with the
service's own name as the template variable it is.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from cookiecutter.main import cookiecutter

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_LOCK = ROOT / "{{cookiecutter.project_slug}}" / "uv.lock"
SLUG_VARIABLE = "{{ cookiecutter.project_slug }}"
# The one place the lock names the service: its own (editable) package entry.
OWN_ENTRY = re.compile(
    r'(\[\[package\]\]\nname = )"([^"]+)"(\nversion = "[^"]+"\nsource = \{ editable = "\." \})'
)


def unrender(lock: str) -> str:
    lock, count = OWN_ENTRY.subn(rf'\1"{SLUG_VARIABLE}"\3', lock)
    if count != 1:
        raise SystemExit("lock: the service's own entry was not found once in uv.lock")
    return lock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="take the newest versions the ranges allow")
    parser.add_argument("--check", action="store_true", help="fail when the lock is not up to date")
    args = parser.parse_args(argv)
    uv = os.environ.get("UV", "uv").split()
    with tempfile.TemporaryDirectory(prefix="paved-lock-") as scratch:
        # The bake carries the current lock, rendered: uv keeps its versions unless told otherwise.
        baked = Path(cookiecutter(str(ROOT), no_input=True, output_dir=scratch, accept_hooks=True))
        command = [
            *uv,
            "lock",
            *(["--upgrade"] if args.upgrade else []),
            *(["--check"] if args.check else []),
        ]
        result = subprocess.run(command, cwd=baked, check=False)
        if result.returncode != 0:
            return result.returncode
        if not args.check:
            TEMPLATE_LOCK.write_text(unrender((baked / "uv.lock").read_text()))
            packages = (baked / "uv.lock").read_text().count("[[package]]")
            print(f"lock: {TEMPLATE_LOCK.relative_to(ROOT)} holds {packages} packages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
