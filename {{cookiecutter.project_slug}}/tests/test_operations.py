"""The operations pack checked against the code: the runbook and the alert rules name only metrics
and log events the service really has, every alert links a runbook section that exists, and the
Kubernetes manifests pass the Kubernetes schemas (strict)."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI

from {{ cookiecutter.package_name }}.platform.metrics import LATENCY_BUCKETS
from {{ cookiecutter.package_name }}.platform.metrics import SLO_LATENCY_S
from {{ cookiecutter.package_name }}.platform.metrics import Metrics
from {{ cookiecutter.package_name }}.settings import Settings

from tests.conftest import PROJECT
from tests.conftest import scrape
from tests.manifests import deploy_config

RUNBOOK = PROJECT / "RUNBOOK.md"
ALERTS = PROJECT / "deploy" / "prometheus" / "alerts.yaml"
MANIFESTS = sorted((PROJECT / "deploy" / "k8s").rglob("*.yaml"))
SOURCE = PROJECT / "src"


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, PROJECT / "scripts" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEBIAN_TOOL = _load_script("debian_tool")

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
    "instance",
    "job",
    "le",
    "container_memory_working_set_bytes",
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
    known = metric_names | events | NOT_OURS | set(EXTERNAL_SERIES)
    unknown = sorted(name for name in named if name not in known)
    assert unknown == [], f"the runbook names what the code does not have: {unknown}"
    # And it does name the important ones.
    assert {"http_server_requests_total", "circuit_breaker_state", "idempotency_outcomes_total"} <= named
    assert {"http_request", "unhandled_exception", "circuit_state_changed", "shutdown_draining"} <= named


# Series the rules read that the service does not export, each with where it comes from. Anything
# else an expression names must be on the service's own /metrics.
EXTERNAL_SERIES = {
    "up": "Prometheus, per scrape target",
    "kube_deployment_status_replicas_available": "kube-state-metrics",
    "kube_deployment_spec_replicas": "kube-state-metrics",
    "kube_horizontalpodautoscaler_spec_min_replicas": "kube-state-metrics",
    "kube_horizontalpodautoscaler_spec_max_replicas": "kube-state-metrics",
    "kube_horizontalpodautoscaler_status_current_replicas": "kube-state-metrics",
    "kube_pod_container_status_restarts_total": "kube-state-metrics",
    "kube_pod_container_status_last_terminated_reason": "kube-state-metrics",
    "kube_pod_container_status_waiting_reason": "kube-state-metrics",
    "kube_job_status_failed": "kube-state-metrics",
    "container_cpu_cfs_throttled_periods_total": "cAdvisor (the kubelet)",
    "container_cpu_cfs_periods_total": "cAdvisor (the kubelet)",
}
# Labels those series carry (kube-state-metrics, cAdvisor), and what Prometheus adds to every target.
EXTERNAL_LABELS = {
    "job",
    "instance",
    "namespace",
    "deployment",
    "horizontalpodautoscaler",
    "pod",
    "container",
    "job_name",
    "reason",
}
PROMQL_WORDS = {
    "sum",
    "rate",
    "increase",
    "by",
    "on",
    "and",
    "or",
    "max",
    "min_over_time",
    "group_left",
    "changes",
    "absent",
}
PROMETHEUS = PROJECT / "deploy" / "prometheus"
RECORDING = PROMETHEUS / "recording.yaml"


def _rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def _series(expr: str) -> set[str]:
    """The metric and recording-rule names an expression reads."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers name labels, not series
    identifiers = set(re.findall(r"\b([a-z_][a-z0-9_:]*)\b(?=\s*[{(\[]|\s*\)|\s*$|\s*[/<>=*-])", expr))
    return {name for name in identifiers if "_" in name or name == "up"} - PROMQL_WORDS - {"job", "le"}


async def test_alert_rules_use_exported_metrics_and_link_runbook_sections(metric_names: set[str]) -> None:
    recorded = {rule["record"] for rule in _rules(RECORDING)}
    anchors = {anchor(line[3:]) for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")}
    # Labels a matcher may use: the service's own, plus the external series' and `le`.
    labels = {
        name for metric in Metrics().registry.collect() for sample in metric.samples for name in sample.labels
    }
    labels |= {
        name for collector in Metrics().__dict__.values() for name in getattr(collector, "_labelnames", ())
    }
    labels |= EXTERNAL_LABELS | {"le"}
    bases = set()
    for rule in _rules(RECORDING) + _rules(ALERTS):
        name = rule.get("alert") or rule["record"]
        series = _series(rule["expr"])
        assert series, name
        unknown = series - metric_names - set(EXTERNAL_SERIES) - recorded
        assert unknown == set(), (name, unknown)
        matchers = {
            m
            for block in re.findall(r"\{([^}]*)\}", rule["expr"])
            for m in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", block)
        }
        assert matchers <= labels, (name, matchers - labels)
        if "alert" not in rule:
            continue
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        assert "$value" in rule["annotations"]["description"], name
        base, _, section = rule["annotations"]["runbook_url"].partition("#")
        assert base.startswith(("https://", "http://")), (name, base)
        assert section in anchors, (name, section)
        bases.add(base)
    assert len(bases) == 1, bases


async def test_the_external_series_are_not_the_services_own(metric_names: set[str]) -> None:
    """The allow-list stays honest: a series the service starts exporting leaves it."""
    exported = set(EXTERNAL_SERIES) & metric_names
    assert exported == set(), f"exported by the service now, remove from EXTERNAL_SERIES: {exported}"


def test_the_thresholds_follow_the_slo() -> None:
    """The rules' budget and latency bucket are the SLO the runbook states and metrics.py counts."""
    runbook = RUNBOOK.read_text()
    availability = float(re.search(r"Availability SLO \| ([0-9.]+)%", runbook).group(1))  # type: ignore[union-attr]
    latency_ms = float(re.search(r"Latency SLO \| p99 under ([0-9.]+) ms", runbook).group(1))  # type: ignore[union-attr]
    assert round(SLO_LATENCY_S, 9) == round(latency_ms / 1000, 9)
    assert SLO_LATENCY_S in LATENCY_BUCKETS
    budget = (100 - availability) / 100
    burns = {"ErrorBudgetBurnFast": 14.4, "ErrorBudgetBurnSlow": 6, "ErrorBudgetBurnTicket": 1}
    for rule in _rules(ALERTS):
        if rule["alert"] in burns:
            divisors = {float(d) for d in re.findall(r"ratio_rate\w+\{[^}]*\} / ([0-9.]+) > ", rule["expr"])}
            thresholds = {float(t) for t in re.findall(r" / [0-9.]+ > ([0-9.]+)", rule["expr"])}
            assert [round(d, 9) for d in divisors] == [round(budget, 9)], rule["alert"]
            assert thresholds == {burns[rule["alert"]]}, rule["alert"]
    slow = [
        rule["expr"] for rule in _rules(RECORDING) if rule["record"].startswith("job:http_server_slow:rate")
    ]
    for expr in slow:
        [le] = re.findall(r'le=~?"([^"]+)"', expr)
        assert any(re.fullmatch(le, form) for form in (str(SLO_LATENCY_S), f"{SLO_LATENCY_S:g}")), le


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    """Every alert fires on the synthetic series it should and stays quiet on the noise
    (deploy/prometheus/alerts.test.yaml), and the rule files are valid Prometheus rules."""
    promtool = DEBIAN_TOOL.ensure("promtool", "prometheus")
    if promtool is None:
        pytest.skip(DEBIAN_TOOL.missing("promtool", "prometheus"))
    for command in (
        ["check", "rules", "recording.yaml", "alerts.yaml"],
        ["test", "rules", "alerts.test.yaml"],
    ):
        result = subprocess.run(
            [promtool, *command], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "alerts.test.yaml").read_text()))
    assert tested == {rule["alert"] for rule in _rules(ALERTS)}


def test_the_podmonitor_scrapes_the_pods_the_rules_name() -> None:
    """The job label the rules select is what the PodMonitor gives the server's and the worker's pods."""
    monitor = yaml.safe_load((PROMETHEUS / "podmonitor.yaml").read_text())
    spec = monitor["spec"]
    [selector] = spec["selector"]["matchExpressions"]
    rules_jobs = set(re.findall(r'job="([^"]+)"', ALERTS.read_text() + RECORDING.read_text()))
    for manifest in ("deployment.yaml", "worker.yaml"):
        pod = yaml.safe_load((PROJECT / "deploy" / "k8s" / manifest).read_text())["spec"]["template"]
        job = pod["metadata"]["labels"][spec["jobLabel"]]
        assert selector["key"] == spec["jobLabel"]
        assert job in selector["values"]
        assert job in rules_jobs
        ports = {port["name"] for container in pod["spec"]["containers"] for port in container["ports"]}
        assert {endpoint["port"] for endpoint in spec["podMetricsEndpoints"]} <= ports
    assert rules_jobs <= set(selector["values"])


@pytest.mark.parametrize(
    "manifest", MANIFESTS, ids=[str(m.relative_to(PROJECT / "deploy")) for m in MANIFESTS]
)
def test_kubernetes_manifests_pass_the_schemas(manifest: Path) -> None:
    if manifest.name == "kustomization.yaml":
        listed = yaml.safe_load(manifest.read_text()).get("resources", [])  # release/ is a component
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
    config = deploy_config()
    assert config["DB_RUNTIME_ROLE"] == Settings.model_fields["db_runtime_role"].default


def test_the_deployment_drains_before_it_is_killed() -> None:
    deployment = yaml.safe_load((PROJECT / "deploy" / "k8s" / "deployment.yaml").read_text())
    config = deploy_config()
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


# A log as `kubectl logs` gives it: JSON lines, and lines that are not JSON (a configuration error
# printed before logging starts, a traceback).
LOG = "\n".join(
    [
        "configuration error: DB_POOL_SIZE: Input should be a valid integer",
        '{"event": "unhandled_exception", "request_id": "r1"}',
        "Traceback (most recent call last):",
        '{"event": "database_transient_error", "request_id": "<id>"}',
        '{"event": "circuit_state_changed", "upstream": "inventory"}',
        '{"event": "token_refused", "reason": "has expired"}',
        '{"event": "idempotency_conflict"}',
        '{"level": "info"}',
    ]
)


def test_the_runbooks_jq_pipelines_skip_lines_that_are_not_json(tmp_path: Path) -> None:
    jq = DEBIAN_TOOL.ensure("jq", "jq")
    if jq is None:
        pytest.skip(DEBIAN_TOOL.missing("jq", "jq"))
    found = re.findall(r"jq -([cr])R '([^']*)'", RUNBOOK.read_text())
    programs = [(mode, program) for mode, program in found if "..." not in program]  # not the pattern
    assert len(programs) >= 6
    for mode, program in programs:
        assert program.startswith("fromjson? | "), program
        result = subprocess.run(
            [jq, f"-{mode}R", program], input=LOG, capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 0, (program, result.stderr)
        assert result.stdout.strip(), f"{program} selected nothing from the log"
        if mode == "c":
            assert all(isinstance(json.loads(line), dict) for line in result.stdout.splitlines())
    # Without -R and fromjson?, the first non-JSON line stops jq: what the runbook's form avoids.
    plain = subprocess.run(
        [jq, "-c", 'select(.event == "circuit_state_changed")'],
        input=LOG,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert plain.returncode != 0
