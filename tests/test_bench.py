"""`make bench` runs end to end (tiny durations): it is a benchmark, so this checks it works,
not what it measures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TEMPLATE


@pytest.mark.skipif(
    shutil.which("wrk") is None and (os.geteuid() != 0 or shutil.which("apt-get") is None),
    reason="wrk is not installed and cannot be (make bench installs it from Debian's packages as root)",
)
def test_make_bench_runs_and_reports_every_scenario(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "bench",
            f"BENCH_ARGS=--duration 1 --rounds 1 --cold-starts 1 --out {tmp_path}",
        ],
        cwd=TEMPLATE,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "latest.json").read_text())
    assert set(report["scenarios"]) == {
        "trivial",
        "trivial_exported",
        "trivial_exported_10pct",
        "db_read",
        "db_read_exported",
        "idempotent_post",
    }
    for name, entry in report["scenarios"].items():
        for side in ("baseline", "candidate"):
            assert entry[side]["rps"] > 0, name
            assert entry[side]["non_2xx"] == 0, (name, side)
            assert entry[side]["socket_errors"] == 0, (name, side)
            assert entry["latency_at_load"][side]["p99_ms"] > 0, (name, side)
        assert entry["ratio"] > 0
        # Every target is judged, not only measured.
        assert entry["pass"] is (entry["ratio"] >= entry["target"])
        assert entry["p99_pass"] is (entry["p99_ratio"] <= 1.5)
    # The exported scenarios reached a real OTLP receiver: spans arrived, about one per request
    # (the read's statements add theirs), and the 10% sampler sent fewer.
    exported = report["exported"]
    assert exported["trivial_exported"]["spans"] >= 0.9 * exported["trivial_exported"]["requests"] > 0
    assert exported["db_read_exported"]["spans"] >= 1.5 * exported["db_read_exported"]["requests"] > 0
    ten = exported["trivial_exported_10pct"]
    assert 0 < ten["spans"] < 0.5 * ten["requests"]
    assert report["cold_start_s"] > 0
    assert report["cold_start_bare_s"] > 0
    assert report["cold_start_pass"] is (report["cold_start_ratio"] <= 1.15)
    table = (tmp_path / "latest.md").read_text()
    assert "| trivial route" in table
    assert "pass" in table or "fail" in table
