"""The Kubernetes deployment as a whole: the database connections every part may open fit the
server's limit, one release (image and configuration) reaches the service and its migration Job,
and the scheduling, disruption, network and failure policies hold."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from {{ cookiecutter.package_name }}.settings import SUPERUSER_RESERVED_CONNECTIONS
from {{ cookiecutter.package_name }}.settings import Settings

from tests.manifests import K8S
from tests.manifests import deploy_config
from tests.manifests import documents
from tests.manifests import kustomize_command
from tests.manifests import manifest
from tests.manifests import render

SLUG = "{{ cookiecutter.project_slug }}"

# What the code opens beside the pools (db/session.py, db/migrations.py, migrations/env.py):
# /ready's pool-less probe engine, one connection at a time per server process (probes share a
# check in flight); the migrate command's lock session and one lock-retry attempt's session.
READY_PROBE_CONNECTIONS = 1
MIGRATE_CONNECTIONS = 2
# Sessions nobody deploys but somebody opens: an operator's psql, a metrics exporter, a backup.
OPERATOR_CONNECTIONS = 3


def _container_env(workload: dict[str, Any]) -> dict[str, str]:
    [container] = workload["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item["value"] for item in container.get("env", ()) if "value" in item}


def _surge(workload: dict[str, Any]) -> int:
    surge = workload["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    assert isinstance(surge, int), "the budget counts maxSurge as a number of pods, not a percentage"
    return surge


def connection_budget(directory: Path = K8S) -> dict[str, int]:
    """The most connections the deployment may hold at once: a rollout of the server while the HPA
    is at its maximum, and of the worker at the same time, with the migration Job running."""
    config = deploy_config(directory)
    deployment, worker, hpa, job = (
        next(yaml.safe_load_all((directory / path).read_text()))
        for path in ("deployment.yaml", "worker.yaml", "hpa.yaml", "migrate/job.yaml")
    )
    [server] = deployment["spec"]["template"]["spec"]["containers"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/ready"  # the probe's connection is counted
    pool = int(config["DB_POOL_SIZE"]) + int(config["DB_MAX_OVERFLOW"])
    worker_env = config | _container_env(worker)
    server_pods = hpa["spec"]["maxReplicas"] + _surge(deployment)
    worker_pods = worker["spec"]["replicas"] + _surge(worker)
    return {
        "server": server_pods * int(config["WORKERS"]) * (pool + READY_PROBE_CONNECTIONS),
        # The worker's /health checks its loop, not the database: no probe connection.
        "worker": worker_pods * (int(worker_env["DB_POOL_SIZE"]) + int(worker_env["DB_MAX_OVERFLOW"])),
        "migrate": job["spec"].get("parallelism", 1) * MIGRATE_CONNECTIONS,
        "reserved": SUPERUSER_RESERVED_CONNECTIONS,
        "operators": OPERATOR_CONNECTIONS,
    }


def test_the_shipped_deployment_fits_the_databases_connection_limit() -> None:
    """(HPA max + surge) x (pool + overflow + /ready) + the worker's + the migration Job's + the
    reserve <= DATABASE_MAX_CONNECTIONS: past it every new connection is refused, every pod goes
    unready at once. release/config.env shows the same arithmetic."""
    budget = connection_budget()
    limit = int(deploy_config()["DATABASE_MAX_CONNECTIONS"])
    assert limit == Settings.model_fields["database_max_connections"].default  # PostgreSQL's default
    assert sum(budget.values()) <= limit, f"{budget} = {sum(budget.values())} > {limit}"
    assert f"= {sum(budget.values())} of {limit}" in (K8S / "release" / "config.env").read_text()


def test_the_budget_counts_the_hpa_maximum_and_the_surge(tmp_path: Path) -> None:
    """The arithmetic itself: scaling the HPA to 10 with the settings' own pool defaults (10 + 5)
    is refused, as it would exhaust a default PostgreSQL during a rollout."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    hpa = copy / "hpa.yaml"
    hpa.write_text(hpa.read_text().replace("maxReplicas: 8", "maxReplicas: 10"))
    config = copy / "release" / "config.env"
    config.write_text(
        config.read_text()
        .replace("DB_POOL_SIZE=4", "DB_POOL_SIZE=10")
        .replace("DB_MAX_OVERFLOW=2", "DB_MAX_OVERFLOW=5")
    )
    budget = connection_budget(copy)
    assert budget["server"] == (10 + 1) * (10 + 5 + 1)
    assert sum(budget.values()) > int(deploy_config(copy)["DATABASE_MAX_CONNECTIONS"])


def test_one_pod_of_the_shipped_configuration_fits_the_database() -> None:
    """The start-up check (settings/checks.py) accepts the shipped pool against the shipped limit."""
    config = deploy_config()
    names = ("DB_POOL_SIZE", "DB_MAX_OVERFLOW", "DATABASE_MAX_CONNECTIONS")
    Settings(**{name.lower(): config[name] for name in names})  # type: ignore[arg-type]


needs_kustomize = pytest.mark.skipif(kustomize_command() is None, reason="needs kubectl or kustomize")


def _pods(rendered: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"] for d in rendered if d["kind"] in {"Deployment", "Job"}
    }


@needs_kustomize
def test_one_release_reaches_the_service_and_its_migration(tmp_path: Path) -> None:
    """Rendered as `kubectl apply -k` does: the Deployment, the worker and the migration Job run the
    same image with the same generated ConfigMap, whose name carries its content's hash (an edit of
    config.env is a new name: the pods roll, and `rollout undo` brings back the old one)."""
    service, migration = render(K8S), render(K8S / "migrate")
    [configmap] = [d for d in service if d["kind"] == "ConfigMap"]
    assert [d for d in migration if d["kind"] == "ConfigMap"] == [configmap]
    name = configmap["metadata"]["name"]
    assert name.startswith(f"{SLUG}-config-")
    pods = _pods(service) | _pods(migration)
    assert set(pods) == {
        SLUG,
        f"{SLUG}-worker",
        f"{SLUG}-migrate",
    }
    images = set()
    for pod in pods.values():
        [container] = pod["spec"]["containers"]
        images.add(container["image"])
        assert {s["configMapRef"]["name"] for s in container["envFrom"] if "configMapRef" in s} == {name}
        assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == SLUG
    assert len(images) == 1, images
    assert images != {"app"}  # kustomize's images: replaced the placeholder
    # The Service and the PodDisruptionBudget select the server's pods, never the worker's or the Job's.
    for kind in ("Service", "PodDisruptionBudget"):
        [selecting] = [d for d in service if d["kind"] == kind]
        selector = selecting["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        chosen = {n for n, pod in pods.items() if selector.items() <= pod["metadata"]["labels"].items()}
        assert chosen == {SLUG}, kind

    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    config = copy / "release" / "config.env"
    config.write_text(config.read_text().replace("LOG_LEVEL=INFO", "LOG_LEVEL=DEBUG"))
    [edited] = [d for d in render(copy) if d["kind"] == "ConfigMap"]
    assert edited["metadata"]["name"] != name


@needs_kustomize
@pytest.mark.parametrize("directory", ["", "migrate"])
def test_the_rendered_manifests_pass_the_schemas(directory: str, tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(render(K8S / directory)))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", str(rendered)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_configuration_error_fails_the_migration_job_at_once() -> None:
    """Exit 2 (load_settings: a bad variable) would fail every retry the same way: FailJob."""
    job = manifest("migrate/job.yaml")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    [container] = pod["containers"]
    fail_on = [
        rule["onExitCodes"]
        for rule in job["spec"]["podFailurePolicy"]["rules"]
        if rule["action"] == "FailJob" and "onExitCodes" in rule
    ]
    assert {"containerName": container["name"], "operator": "In", "values": [2]} in fail_on


@pytest.mark.parametrize("path", ["deployment.yaml", "worker.yaml", "migrate/job.yaml"])
def test_cpu_is_requested_never_limited(path: str) -> None:
    """One event loop per process: a CFS quota throttles it mid-request; requests only."""
    for container in manifest(path)["spec"]["template"]["spec"]["containers"]:
        assert "cpu" in container["resources"]["requests"]
        assert "cpu" not in container["resources"].get("limits", {})
        assert "memory" in container["resources"]["limits"]


@pytest.mark.parametrize("path", ["deployment.yaml", "worker.yaml"])
def test_replicas_spread_over_zones_and_nodes(path: str) -> None:
    pod = manifest(path)["spec"]["template"]
    spread = {c["topologyKey"]: c for c in pod["spec"]["topologySpreadConstraints"]}
    assert set(spread) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for constraint in spread.values():
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert constraint["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_a_drain_takes_one_pod_at_a_time_and_never_waits_on_a_broken_one() -> None:
    pdb = manifest("pdb.yaml")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert "minAvailable" not in pdb
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert manifest("hpa.yaml")["spec"]["minReplicas"] >= 2  # one serves while one is evicted


def test_the_network_policies_admit_the_gateway_and_the_scraper_only() -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in documents("networkpolicy.yaml")}
    policies |= {p["metadata"]["name"]: p["spec"] for p in documents("migrate/networkpolicy.yaml")}
    workloads = {
        SLUG: manifest("deployment.yaml"),
        f"{SLUG}-worker": manifest("worker.yaml"),
        f"{SLUG}-migrate": manifest("migrate/job.yaml"),
    }
    assert set(policies) == set(workloads)
    for name, policy in policies.items():
        pod = workloads[name]["spec"]["template"]
        assert policy["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(), name
        assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
        # Ingress only on the ports the pod names (the API's for the gateway, metrics for the scraper).
        [container] = pod["spec"]["containers"]
        named = {port["name"] for port in container.get("ports", ())}
        ingress = {port["port"] for rule in policy.get("ingress", ()) for port in rule["ports"]}
        assert ingress <= named - {"health"}, name
        egress = {(port["protocol"], port["port"]) for rule in policy["egress"] for port in rule["ports"]}
        assert {("UDP", 53), ("TCP", 53), ("TCP", 5432)} <= egress, name
        if name != f"{SLUG}-migrate":
            assert {("TCP", 4317), ("TCP", 4318), ("TCP", 443)} <= egress, name
    assert {p["port"] for r in policies[SLUG]["ingress"] for p in r["ports"]} == {
        "http",
        "metrics",
    }
