"""The image's supply chain: base images pinned by digest, CI actions pinned by commit, and the
workflow's token scoped per job, with the signing identity (id-token) on the publishing job only."""

from __future__ import annotations

import re

import yaml

from tests.conftest import PROJECT

WORKFLOW = PROJECT / ".github" / "workflows" / "ci.yml"


def test_base_images_are_pinned_by_digest_with_their_tag() -> None:
    dockerfile = (PROJECT / "Dockerfile").read_text()
    images = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    images += re.findall(r"COPY\s+--from=(\S+)", dockerfile)
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, re.MULTILINE | re.IGNORECASE))
    external = [image for image in images if image not in stages]
    assert external
    for image in external:
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), image


def test_actions_are_pinned_by_commit_with_their_release_beside() -> None:
    uses = re.findall(r"^\s*(?:-\s*)?uses:\s*(\S+)(.*)$", WORKFLOW.read_text(), re.MULTILINE)
    assert uses
    for action, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", action), action
        assert re.fullmatch(r"\s*# v\d+(\.\d+)*", comment), (action, comment)


def test_the_workflow_token_is_least_privilege() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow["permissions"] == {}
    jobs = workflow["jobs"]
    for name, job in jobs.items():
        assert job["permissions"].get("contents") == "read", name
        assert ("id-token" in job["permissions"]) == (name == "publish"), name
    assert jobs["publish"]["permissions"]["id-token"] == "write"
    assert "refs/heads/main" in jobs["publish"]["if"]  # never on a pull request
    assert set(jobs["publish"]["needs"]) == {"check", "image"}  # tested, scanned, then pushed
