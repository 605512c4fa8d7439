"""The operations pack checked against the code: the runbook and the alert rules name only metrics
and log events the service really has, every alert links a runbook section that exists, and the
Kubernetes manifests pass the Kubernetes schemas (strict)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi import FastAPI

from {{ cookiecutter.package_name }}.platform.metrics import Metrics
from {{ cookiecutter.package_name }}.settings import Settings

from tests.conftest import PROJECT
from tests.conftest import scrape

RUNBOOK = PROJECT / "RUNBOOK.md"
ALERTS = PROJECT / "deploy" / "prometheus" / "alerts.yaml"
MANIFESTS = sorted((PROJECT / "deploy" / "k8s").rglob("*.yaml"))
SOURCE = PROJECT / "src"

# Lower-case names the runbook also quotes that are neither metrics nor events: PostgreSQL's own
# (settings, views, functions), the service's tables, labels and values, and check names.
NOT_OURS = {
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "max_connections",
    "pg_stat_activity",
    "pg_locks",
    "pg_cancel_backend",
    "pg_terminate_backend",
    "application_name",
    "idempotency_keys",
    "audit_events",
    "occurred_at",
    "actor",
    "action",
    "resource_type",
    "resource_id",
    "success",
    "failure",
    "denied",
    "anonymous",
    "alembic_version",
    "histogram_quantile",
    "database",
    "schema",
    "shutdown",
    "upstream",
    "outcome",
    "method",
    "route",
    "status",
    "why",
    "ok",
    "failed",
    "timeout",
    "unreachable",
    "circuit_open",
    "pool_timeout",
    "budget",
    "deadline",
    "retry_after",
    "stored",
    "replay",
    "conflict",
    "mismatch",
    "checks",
    "request_id",
    "trace_id",
    "span_id",
    "duration_ms",
    "orders",
    "type",
}
# The service's own names, which a one-word name makes look like an identifier.
NOT_OURS.update(["{{ cookiecutter.project_slug }}", "{{ cookiecutter.package_name }}"])


def exported_metrics(metrics_text: str) -> set[str]:
    """Every sample name /metrics can carry, from its `# TYPE` lines (labelled series appear there
    before their first sample)."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", metrics_text, re.MULTILINE):
        names.add(name)
        # No `_created`: metrics.py turns those series off.
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names.update(name + suffix for suffix in suffixes.get(kind, []))
    return names


def log_events() -> set[str]:
    """The event names the code logs: the first argument of log.info/warning/... (the second of log.log)."""
    events = set()
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "log"):
                continue
            position = 1 if node.func.attr == "log" else 0
            if len(node.args) > position and isinstance(node.args[position], ast.Constant):
                events.add(str(node.args[position].value))
    return events


def anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


@pytest.fixture
async def metric_names(app: FastAPI, client: httpx.AsyncClient) -> set[str]:
    return exported_metrics(await scrape(app))


async def test_every_metric_and_event_the_runbook_names_exists(metric_names: set[str]) -> None:
    text = RUNBOOK.read_text()
    named = {m.group(1) for m in re.finditer(r"`([a-z][a-z0-9_]*)(?:\{[^}`]*\})?`", text)}
    named |= set(re.findall(r'\.event == "([a-z_]+)"', text))
    events = log_events()
    unknown = sorted(name for name in named if name not in metric_names | events | NOT_OURS)
    assert unknown == [], f"the runbook names what the code does not have: {unknown}"
    # And it does name the important ones.
    assert {"http_server_requests_total", "circuit_breaker_state", "idempotency_outcomes_total"} <= named
    assert {"http_request", "unhandled_exception", "circuit_state_changed", "shutdown_draining"} <= named


async def test_alert_rules_use_exported_metrics_and_link_runbook_sections(metric_names: set[str]) -> None:
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    anchors = {anchor(line[3:]) for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")}
    functions = {
        "sum",
        "rate",
        "by",
        "and",
        "max",
        "histogram_quantile",
        "changes",
        "absent",
        "le",
        "upstream",
    }
    # Labels a matcher may use: the service's own, plus what Prometheus adds (job) and `le`.
    labels = {
        name for metric in Metrics().registry.collect() for sample in metric.samples for name in sample.labels
    }
    labels |= {
        name for collector in Metrics().__dict__.values() for name in getattr(collector, "_labelnames", ())
    }
    labels |= {"job", "le"}
    for rule in rules:
        identifiers = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b(?=\s*[{(\[]|\s*\)|\s*$)", rule["expr"]))
        series = {name for name in identifiers if "_" in name or name == "up"} - functions
        assert series, rule["alert"]
        assert series <= metric_names | {"up"}, (rule["alert"], series - metric_names)
        matchers = {
            m
            for block in re.findall(r"\{([^}]*)\}", rule["expr"])
            for m in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", block)
        }
        assert matchers <= labels, (rule["alert"], matchers - labels)
        link = rule["annotations"]["runbook"]
        assert link.startswith("RUNBOOK.md#")
        assert link.removeprefix("RUNBOOK.md#") in anchors, (rule["alert"], link)


@pytest.mark.parametrize(
    "manifest", MANIFESTS, ids=[str(m.relative_to(PROJECT / "deploy")) for m in MANIFESTS]
)
def test_kubernetes_manifests_pass_the_schemas(manifest: Path) -> None:
    if manifest.name == "kustomization.yaml":
        listed = yaml.safe_load(manifest.read_text())["resources"]
        beside = [m.name for m in manifest.parent.glob("*.yaml") if m.name != "kustomization.yaml"]
        assert sorted(listed) == sorted(beside)
        return
    result = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _secrets(manifest: str) -> set[str]:
    pod = yaml.safe_load((PROJECT / "deploy" / "k8s" / manifest).read_text())["spec"]["template"]["spec"]
    return {
        source["secretRef"]["name"]
        for container in pod["containers"]
        for source in container.get("envFrom", ())
        if "secretRef" in source
    }


def test_the_migration_and_the_service_use_different_secrets() -> None:
    """Least privilege: the schema owner's credentials reach the migrate Job only."""
    job, deployment = _secrets("migrate/job.yaml"), _secrets("deployment.yaml")
    assert job == {"{{ cookiecutter.project_slug }}-migration-secrets"}
    assert deployment == {"{{ cookiecutter.project_slug }}-secrets"}
    config = yaml.safe_load((PROJECT / "deploy" / "k8s" / "configmap.yaml").read_text())["data"]
    assert config["DB_RUNTIME_ROLE"] == Settings.model_fields["db_runtime_role"].default


def test_the_deployment_drains_before_it_is_killed() -> None:
    deployment = yaml.safe_load((PROJECT / "deploy" / "k8s" / "deployment.yaml").read_text())
    config = yaml.safe_load((PROJECT / "deploy" / "k8s" / "configmap.yaml").read_text())["data"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = float(config["SHUTDOWN_DELAY_S"]) + float(config["GRACEFUL_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
