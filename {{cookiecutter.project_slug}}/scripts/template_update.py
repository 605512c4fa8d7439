"""Take a newer release of the paved template, keep the team's own work: `make template-update`.

The bake records where it came from in `.cruft.json` (cruft's format, so `cruft check` and
`cruft diff` read it too): the template, the commit it was rendered from, and the answers. An
update renders the template at the recorded commit and at the new release with the same answers,
and applies the difference between the two renders to this repository as a three-way merge
(`git apply --3way`): what the team changed and the template did not stays; what the template
changed and the team did not arrives; where both changed the same lines, git leaves conflict
markers, the command names the files and exits 1, and the record stays at the old version. Only
an update that applied moves the record (`--resolved REF` moves it once the conflicts are fixed).

cruft's own `update` is not used: cruft 2.16 exits 0 and moves the record to the new version
when the merge left conflicts, so a CI job would take a half-applied update for a clean one.

    python scripts/template_update.py                 # the newest release (the highest v* tag)
    python scripts/template_update.py --version v1.4.0
    python scripts/template_update.py --check         # CI: say when a newer release exists
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RECORD = Path(".cruft.json")
# `--check` fails instead of warning when this is set (the baked CI workflow passes it through).
STRICT_VARIABLE = "TEMPLATE_DRIFT_FAIL"


class UpdateError(Exception):
    """Something the user must fix before an update can run; the message says what."""


# git by its full path; every call goes through `run_git`.
GIT = shutil.which("git") or "git"


def run_git(
    *args: str, cwd: Path | None = None, stdin: str | None = None, ok: tuple[int, ...] = (0,)
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([GIT, *args], cwd=cwd, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode not in ok:
        raise UpdateError(f"git {args[0]} failed: {result.stderr.strip()}")
    return result


def git(*args: str, cwd: Path | None = None) -> str:
    return run_git(*args, cwd=cwd).stdout.strip()


def clone(source: str, into: Path) -> Path:
    """A private clone of the template, so that checking out versions never touches a working copy."""
    from cookiecutter import config
    from cookiecutter import repository

    url = repository.expand_abbreviations(source, config.BUILTIN_ABBREVIATIONS)
    git("clone", "--quiet", url.removeprefix("git+"), str(into))
    return into


def latest_release(template: Path) -> str:
    tags = git("tag", "--list", "v[0-9]*", "--sort=-v:refname", cwd=template).split()
    if not tags:
        raise UpdateError("the template has no release yet (no vMAJOR.MINOR.PATCH tag)")
    return tags[0]


def render(template: Path, commit: str, answers: dict[str, Any], into: Path) -> Path:
    """The template at `commit`, baked with the recorded answers (hooks included), without the
    record the bake writes of itself."""
    from cookiecutter import main as baking

    git("checkout", "--quiet", "--detach", commit, cwd=template)
    baked = Path(
        baking.cookiecutter(str(template), no_input=True, extra_context=answers, output_dir=str(into))
    )
    (baked / RECORD.name).unlink(missing_ok=True)
    return baked


def changes(old: Path, new: Path, work: Path) -> str:
    """The template's change between two renders, as a patch with the usual a/ and b/ paths."""
    (work / "a").symlink_to(old, target_is_directory=True)
    (work / "b").symlink_to(new, target_is_directory=True)
    # Exit status 1: there are differences.
    return run_git("diff", "--no-index", "--binary", "--no-prefix", "a/", "b/", cwd=work, ok=(0, 1)).stdout


def update(record: dict[str, Any], version: str | None) -> int:
    answers = {
        key: value for key, value in record["context"]["cookiecutter"].items() if not key.startswith("_")
    }
    with tempfile.TemporaryDirectory(prefix="template-update-") as scratch:
        work = Path(scratch)
        template = clone(record["template"], work / "template")
        ref = version or latest_release(template)
        target = git("rev-parse", "--verify", ref + "^{commit}", cwd=template)
        if target == record["commit"]:
            print(f"template-update: already at {ref}; nothing to update")
            return 0
        if git("status", "--porcelain"):
            raise UpdateError("the working tree has uncommitted changes: commit or stash them first")
        old = render(template, record["commit"], answers, work / "old")
        new = render(template, target, answers, work / "new")
        patch = changes(old, new, work)
        if patch:
            # The old render's files, so that git can merge three ways where the team changed a file.
            files = "\n".join(str(path) for path in old.rglob("*") if path.is_file())
            run_git("hash-object", "-w", "--stdin-paths", stdin=files)
            applied = run_git("apply", "--3way", "--whitespace=nowarn", stdin=patch, ok=(0, 1))
            conflicts = git("diff", "--name-only", "--diff-filter=U").split()
            if applied.returncode != 0 or conflicts:
                print(applied.stderr.strip(), file=sys.stderr)
                named = ", ".join(conflicts) or "see above"
                print(
                    f"template-update: {ref} conflicts with this service's own changes in: {named}.\n"
                    "Resolve the conflict markers (both sides are kept), `git add` the files, then run "
                    f"`make template-update VERSION={ref} RESOLVED=1` to record {ref}. "
                    "The record still names the previous version.",
                    file=sys.stderr,
                )
                return 1
    write_record(record, target, ref)
    print(
        f"template-update: updated to {ref}; review `git diff --staged`, run `make install` (the lock "
        "may have changed), `make lint` and `make test`, then commit"
    )
    return 0


def write_record(record: dict[str, Any], commit: str, ref: str) -> None:
    record = record | {"commit": commit, "checkout": ref}
    record["context"]["cookiecutter"]["_commit"] = commit
    RECORD.write_text(json.dumps(record, indent=2) + "\n")
    git("add", str(RECORD))


def resolved(record: dict[str, Any], version: str | None) -> int:
    """Record `version` once its conflicts have been resolved by hand."""
    if version is None:
        raise UpdateError("RESOLVED=1 needs VERSION=<the release whose conflicts you resolved>")
    markers = run_git("grep", "-lE", "^(<<<<<<<|>>>>>>>)( |$)", ok=(0, 1)).stdout.split()
    remaining = sorted(set(git("diff", "--name-only", "--diff-filter=U").split()) | set(markers))
    if remaining:
        raise UpdateError(f"conflicts remain in: {', '.join(remaining)}")
    with tempfile.TemporaryDirectory(prefix="template-update-") as scratch:
        template = clone(record["template"], Path(scratch) / "template")
        target = git("rev-parse", "--verify", version + "^{commit}", cwd=template)
    write_record(record, target, version)
    print(f"template-update: recorded {version}; commit the resolution")
    return 0


def check(record: dict[str, Any]) -> int:
    """Whether a newer release is out: a warning, or a failure with TEMPLATE_DRIFT_FAIL set."""
    strict = os.environ.get(STRICT_VARIABLE, "").lower() in {"1", "true", "yes"}
    try:
        with tempfile.TemporaryDirectory(prefix="template-check-") as scratch:
            template = clone(record["template"], Path(scratch) / "template")
            latest = latest_release(template)
            current = git("rev-parse", latest + "^{commit}", cwd=template) == record["commit"]
    except UpdateError as exc:
        message = f"cannot tell whether the template has a newer release: {exc}"
    else:
        if current:
            print(f"template-check: at the latest release, {latest}")
            return 0
        at = record.get("checkout") or str(record["commit"])[:12]
        message = f"this service is at template {at}; {latest} is out: `make template-update` takes it"
    # A GitHub Actions annotation; a plain line anywhere else.
    print(f"::{'error' if strict else 'warning'}::{message}")
    return 1 if strict else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--version", help="a release tag or commit of the template (default: the newest release)"
    )
    parser.add_argument("--check", action="store_true", help="only say whether a newer release exists")
    parser.add_argument(
        "--resolved", action="store_true", help="record VERSION after resolving conflicts by hand"
    )
    args = parser.parse_args(argv)
    try:
        if not RECORD.is_file():
            raise UpdateError(f"no {RECORD}: this project does not say which template it was baked from")
        record = json.loads(RECORD.read_text())
        if args.check:
            return check(record)
        if args.resolved:
            return resolved(record, args.version)
        return update(record, args.version)
    except UpdateError as exc:
        print(f"template-update: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
