"""The Grafana dashboard (deploy/grafana/) checked against the live service: every panel's query
names only series /metrics exports, with labels they carry, so no panel is blank in production
because a name was mistyped or a metric renamed; and every panel the runbook points to exists."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI

from {{ cookiecutter.package_name }}.platform.metrics import SLO_LATENCY_S
from {{ cookiecutter.package_name }}.platform.metrics import Metrics

from tests.conftest import PROJECT
from tests.conftest import scrape
from tests.test_operations import RUNBOOK
from tests.test_operations import exported_metrics

DASHBOARD = PROJECT / "deploy" / "grafana" / "dashboards" / "service.json"
PROVISIONING = PROJECT / "deploy" / "grafana" / "provisioning" / "dashboards.yaml"
# PromQL's words in the panels' queries; anything else a query names must be a series.
FUNCTIONS = {"sum", "max", "min", "count", "rate", "histogram_quantile", "by", "and", "or"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def panels() -> list[dict[str, Any]]:
    return [panel for panel in json.loads(DASHBOARD.read_text())["panels"] if panel["type"] != "row"]


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """Each `metric{label="value",...}` of a query, with its matchers."""
    found = []
    for name, block in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", expr):
        matchers = dict(re.findall(r'(\w+)\s*(?:=~|!~|!=|=)\s*"([^"]*)"', block))
        found.append((name, matchers))
    return found


def bare_words(expr: str) -> set[str]:
    """The words left once selectors, `by (...)` groupings, strings and numbers are taken out:
    only PromQL's own may remain (a metric named without a selector would show here)."""
    rest = re.sub(r"[a-zA-Z_:][a-zA-Z0-9_:]*\{[^}]*\}", " ", expr)
    rest = re.sub(r"\bby\s*\([^)]*\)", " by ", rest)
    rest = re.sub(r"\[[^\]]*\]|\"[^\"]*\"|\b\d+(\.\d+)?\b", " ", rest)
    return set(re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", rest))


@pytest.fixture
async def live_metrics(app: FastAPI, client: httpx.AsyncClient) -> str:
    """/metrics after some traffic: a probe, a 404 and a validation error."""
    await client.get("/ready")
    await client.get("/nowhere")
    return await scrape(app)


def test_the_dashboard_is_provisioning_json_with_its_two_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"]
    assert len(dashboard["uid"]) <= 40  # Grafana's limit
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["datasource"] == DATASOURCE
    assert variables["job"]["current"]["value"] == PROJECT.name  # the job alerts.yaml names
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = [panel["title"] for panel in panels()]
    assert len(titles) == len(set(titles))
    for panel in panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["description"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
    provider = yaml.safe_load(PROVISIONING.read_text())
    assert provider["apiVersion"] == 1
    assert provider["providers"][0]["type"] == "file"


async def test_every_panel_query_names_exported_series_and_labels(live_metrics: str) -> None:
    exported = exported_metrics(live_metrics)
    labels = {
        name for metric in Metrics().registry.collect() for sample in metric.samples for name in sample.labels
    }
    labels |= {
        name for collector in Metrics().__dict__.values() for name in getattr(collector, "_labelnames", ())
    }
    labels |= {"job", "instance", "le"}  # what Prometheus adds, and the histogram's own
    for panel in panels():
        for target in panel["targets"]:
            expr, where = target["expr"], (panel["title"], target["expr"])
            assert target["datasource"] == DATASOURCE, where
            assert bare_words(expr) <= FUNCTIONS, (where, bare_words(expr) - FUNCTIONS)
            found = selectors(expr)
            assert found, where
            for name, matchers in found:
                assert name in exported, (where, name)
                assert matchers.get("job") == "$job", (where, name)  # the dashboard's job variable
                assert set(matchers) <= labels, (where, set(matchers) - labels)
                # A bucket boundary a query names must be one the histogram has.
                if "le" in matchers:
                    bucket = "^" + re.escape(name) + r'\{[^}]*le="' + re.escape(matchers["le"]) + '"'
                    assert re.search(bucket, live_metrics, re.MULTILINE), (where, matchers["le"])
            grouped = {
                g.strip() for block in re.findall(r"\bby\s*\(([^)]*)\)", expr) for g in block.split(",")
            }
            assert grouped <= labels, (where, grouped - labels)


def test_request_latency_panels_draw_the_slo_threshold_and_exemplars() -> None:
    latency = [
        panel
        for panel in panels()
        if any(
            "histogram_quantile" in t["expr"] and "http_server_request_duration" in t["expr"]
            for t in panel["targets"]
        )
    ]
    assert len(latency) == 2
    for panel in latency:
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert SLO_LATENCY_S in [step["value"] for step in steps], panel["title"]
        assert all(target["exemplar"] for target in panel["targets"])  # dots that link to traces


def test_the_runbook_links_panels_that_exist() -> None:
    titles = {panel["title"] for panel in panels()}
    linked = re.findall(r"^Dashboard: (.+)$", RUNBOOK.read_text(), re.MULTILINE)
    named = {title.strip() for line in linked for title in re.findall(r'"([^"]+)"', line)}
    assert len(named) >= 8
    assert named <= titles, named - titles


def _preview() -> Any:
    """scripts/dashboard_preview.py, imported (its plotting needs matplotlib; its queries do not)."""
    spec = importlib.util.spec_from_file_location(
        "dashboard_preview", PROJECT / "scripts" / "dashboard_preview.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_preview_interpolates_quantiles_as_prometheus_does() -> None:
    preview = _preview()
    buckets = {
        frozenset({("le", "0.1")}): 50.0,
        frozenset({("le", "0.25")}): 100.0,
        frozenset({("le", "+Inf")}): 100.0,
    }
    assert preview._histogram_quantile(0.5, buckets) == {frozenset(): 0.1}
    assert preview._histogram_quantile(0.75, buckets) == {frozenset(): pytest.approx(0.175)}
    assert preview._histogram_quantile(0.99, {**buckets, frozenset({("le", "+Inf")}): 200.0}) == {
        frozenset(): 0.25
    }


async def test_the_preview_draws_the_core_panels_from_live_scrapes(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """What `make dashboard-preview` plots, on two scrapes of the live app with requests between."""
    preview = _preview()
    job, instance = PROJECT.name, f"127.0.0.1:{app.state.metrics_port}"
    await client.get("/nowhere")  # a series needs two samples for a rate
    scrapes = [(0.0, preview.parse(await scrape(app), job, instance))]
    for _ in range(5):
        await client.get("/ready")
        await client.get("/nowhere")
    await asyncio.sleep(1.0)
    scrapes.append((2.0, preview.parse(await scrape(app), job, instance)))
    variables = {"job": job, "__rate_interval": "4s"}
    drawn = {panel["title"]: preview.series_of(panel, scrapes, variables) for panel in panels()}
    [rate] = drawn["Request rate by route"].values()
    assert rate[-1] == (2.0, pytest.approx(2.5))  # five 404s in two seconds (as scraped); no probes
    assert drawn["Latency p50 / p95 / p99 against the SLO"]
    assert drawn["Resident memory per pod"]
    assert drawn["Database pool connections"]
    assert drawn["Ready pods"]["ready"][-1] == (2.0, 1.0)
