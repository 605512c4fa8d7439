"""`make mutation`: break the platform's code on purpose (mutmut) and see whether a test notices.

Each mutant is one small change to `platform/` or `db/` (a flipped comparison, a changed constant, a
dropped call); the tests that run that code (`[tool.mutmut]` in pyproject.toml) must fail on it. A
mutant that survives is a test that is missing, or a change no caller could notice (an equivalent
mutant): docs/mutation.md lists each with its reason.

    make mutation                                  # every module, within MUTATION_BUDGET_S
    make mutation MUTATION_MODULES="platform/deadline.py platform/resilience"
    make mutation MUTATION_MODULES=platform/ratelimit MUTATION_TESTS=tests/platform/test_ratelimit.py

MUTATION_MODULES: files or folders under the package (default: `platform db`). MUTATION_TESTS:
the tests that judge them, instead of `[tool.mutmut]`'s selection; for a module every request runs
(a middleware, the rate limiter), whose mutants the whole suite would otherwise run, minutes each.
Name every test file that reads the module, or its score is understated. MUTATION_BUDGET_S
(default 3600): mutmut is stopped then; what it checked is kept in mutants/ and the next run goes
on from there. MUTATION_MIN_SCORE (percent, default 0: report only): fail when a module whose
mutants were all checked scores less. The report, survivors with their diffs, is written to
mutants/report.md. Not part of `make test`: it runs the tests once per mutant.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = next(path.name for path in sorted((ROOT / "src").iterdir()) if (path / "__init__.py").is_file())
MUTMUT = str(Path(sys.executable).with_name("mutmut"))
REPORT = ROOT / "mutants" / "report.md"
# `x_function__mutmut_3` or `xǁClassǁmethod__mutmut_3` after the module's dotted name.
MUTANT = re.compile(r"^(?P<module>[\w.]+?)\.x(?:_|ǁ)[^:]*__mutmut_\d+$")
DETECTED = {"killed", "timeout", "caught by type check"}
# mutmut reads its configuration only from pyproject.toml; MUTATION_TESTS replaces the test selection
# in mutmut's own process (its workers are forked from it) rather than by rewriting the user's file.
NARROWED = """
import sys
from mutmut.__main__ import cli
from mutmut.configuration import config
config().pytest_add_cli_args_test_selection = sys.argv[1].split()
sys.argv = ["mutmut", *sys.argv[2:]]
cli()
"""


def globs(modules: list[str]) -> list[str]:
    """`platform/deadline.py` -> `<package>.platform.deadline.*`; a folder takes its subtree."""
    names = []
    for module in modules:
        dotted = module.removesuffix(".py").strip("/").replace("/", ".")
        names.append(f"{PACKAGE}.{dotted}.*")
    return names


def run(names: list[str], tests: str, budget_s: float) -> bool:
    """mutmut on the mutants `names` match, one at a time (each run of the tests recreates the test
    database, which parallel runs would drop under each other), judged by `tests` when given. False
    when the budget ran out."""
    command = [MUTMUT] if not tests else [sys.executable, "-c", NARROWED, tests]
    process = subprocess.Popen(
        [*command, "run", "--max-children", "1", *names], cwd=ROOT, start_new_session=True
    )
    try:
        process.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        return False
    return True


def results(prefixes: list[str]) -> dict[str, dict[str, str]]:
    """module -> {mutant: status}, for the mutants under `prefixes`."""
    listed = subprocess.run(
        [MUTMUT, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    by_module: dict[str, dict[str, str]] = defaultdict(dict)
    for line in listed.splitlines():
        name, _, status = line.strip().rpartition(": ")
        match = MUTANT.match(name)
        if match and any(name.startswith(prefix) for prefix in prefixes):
            by_module[match["module"]][name] = status
    return by_module


def score(statuses: dict[str, str]) -> tuple[float | None, Counter[str]]:
    counts = Counter("killed" if status in DETECTED else status for status in statuses.values())
    judged = sum(counts.values()) - counts["not checked"]
    return (100.0 * counts["killed"] / judged if judged else None), counts


def report(by_module: dict[str, dict[str, str]], finished: bool, took_s: float) -> list[str]:
    lines = [
        "# Mutation report",
        "",
        f"mutmut, {took_s:.0f} s{'' if finished else ', stopped by MUTATION_BUDGET_S'}. "
        "Score: killed (or timed out) / mutants checked.",
        "",
        "| module | score | killed | survived | no tests | not checked |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    survivors = []
    for module, statuses in sorted(by_module.items()):
        value, counts = score(statuses)
        shown = "-" if value is None else f"{value:.0f}%"
        lines.append(
            f"| {module} | {shown} | {counts['killed']} | {counts['survived']} | "
            f"{counts['no tests']} | {counts['not checked']} |"
        )
        survivors += [name for name, status in sorted(statuses.items()) if status in {"survived", "no tests"}]
    lines += ["", f"## Survivors ({len(survivors)})", ""]
    for name in survivors:
        diff = subprocess.run([MUTMUT, "show", name], cwd=ROOT, capture_output=True, text=True).stdout
        lines += [f"### {name}", "", "```diff", diff.strip(), "```", ""]
    return lines


def main() -> int:
    modules = os.environ.get("MUTATION_MODULES", "platform db").split()
    budget_s = float(os.environ.get("MUTATION_BUDGET_S", "3600"))
    minimum = float(os.environ.get("MUTATION_MIN_SCORE", "0"))
    tests = os.environ.get("MUTATION_TESTS", "").strip()
    names = globs(modules)
    started = time.monotonic()
    finished = run(names, tests, budget_s)
    by_module = results([name.removesuffix("*") for name in names])
    REPORT.write_text("\n".join(report(by_module, finished, time.monotonic() - started)) + "\n")
    failing = []
    for module, statuses in sorted(by_module.items()):
        value, counts = score(statuses)
        print(f"mutation: {module}: {'-' if value is None else f'{value:.0f}%'} {dict(counts)}")
        if value is not None and not counts["not checked"] and value < minimum:
            failing.append(module)
    print(f"mutation: report in {REPORT.relative_to(ROOT)}")
    if failing:
        print(f"mutation: below {minimum:g}%: {', '.join(failing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
