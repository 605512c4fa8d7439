"""`make dashboard-preview`: what each panel of the Grafana dashboard shows, without a Grafana.

Starts the service (`python -m <package> serve --migrate`, on free ports of 127.0.0.1; the
embedded PostgreSQL unless DATABASE_URL is set), drives a short load through it (every GET route of
openapi.json without a path parameter, `/ready`, and a 404), scrapes `/metrics` every second as
Prometheus would, evaluates each panel's query on the samples with a small PromQL evaluator (the
subset the dashboard uses: selectors, `rate`, `sum`/`max`/`min`/`count` with `by`, arithmetic,
`histogram_quantile`) and plots every panel with matplotlib: one PNG per panel and `dashboard.png`,
all of them on one page, in build/dashboard-preview/ (git-ignored).

Ranges longer than the run (the burn rate's 1h and 6h) use what the run has. matplotlib comes from
the `preview` dependency group (`uv run --group preview`): `make install` does not install it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

PROJECT = Path(__file__).resolve().parents[1]
DASHBOARD = PROJECT / "deploy" / "grafana" / "dashboards" / "service.json"
OUT = PROJECT / "build" / "dashboard-preview"

Labels = frozenset[tuple[str, str]]
Vector = dict[Labels, float]
# One scrape: (seconds since the first, {(metric, labels): value}).
Scrape = tuple[float, dict[tuple[str, Labels], float]]


# --- samples -------------------------------------------------------------------------------------


def parse(text: str, job: str, instance: str) -> dict[tuple[str, Labels], float]:
    """A /metrics page as Prometheus stores it: each sample under its name, `job` and `instance` added."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset({**sample.labels, "job": job, "instance": instance}.items())
            samples[(sample.name, labels)] = sample.value
    return samples


# --- a PromQL subset -----------------------------------------------------------------------------

_TOKEN = re.compile(
    r'\s*(?:(?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?)|(?P<string>"(?:[^"\\]|\\.)*")|(?P<duration>\[[^\]]+\])'
    r"|(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)|(?P<op>=~|!~|!=|[-+*/(){},=<>]))"
)
_AGGREGATIONS = {"sum": sum, "max": max, "min": min, "count": len}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(expr.rstrip()):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read {expr[position:]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class Query:
    """Evaluates one expression at a time `at` over the scrapes (instant vectors as dicts)."""

    def __init__(self, expr: str, scrapes: list[Scrape], variables: dict[str, str]) -> None:
        for name, value in variables.items():
            expr = expr.replace(f"${name}", value)
        self.tokens = tokenize(expr)
        self.scrapes = scrapes
        self.position = 0
        self.at = 0.0

    def evaluate(self, at: float) -> Vector | float:
        self.position, self.at = 0, at
        value = self._sum()
        if self.position != len(self.tokens):
            raise ValueError(f"unexpected {self.tokens[self.position :]}")
        return value

    def _peek(self) -> str:
        return self.tokens[self.position][1] if self.position < len(self.tokens) else ""

    def _take(self, expected: str | None = None) -> str:
        _, value = self.tokens[self.position]
        if expected is not None and value != expected:
            raise ValueError(f"expected {expected!r}, got {value!r}")
        self.position += 1
        return value

    def _sum(self) -> Vector | float:
        left = self._product()
        while self._peek() in {"+", "-"}:
            op = self._take()
            left = _binary(op, left, self._product())
        return left

    def _product(self) -> Vector | float:
        left = self._primary()
        while self._peek() in {"*", "/"}:
            op = self._take()
            left = _binary(op, left, self._primary())
        return left

    def _primary(self) -> Vector | float:
        kind, value = self.tokens[self.position]
        if kind == "number":
            self.position += 1
            return float(value)
        if value == "(":
            self._take("(")
            inner = self._sum()
            self._take(")")
            return inner
        if value in _AGGREGATIONS:
            return self._aggregation()
        if value == "rate":
            self._take("rate")
            self._take("(")
            name, matchers = self._selector()
            window = self._duration()
            self._take(")")
            return self._rate(name, matchers, window)
        if value == "histogram_quantile":
            self._take("histogram_quantile")
            self._take("(")
            q = float(self._take())
            self._take(",")
            buckets = self._sum()
            self._take(")")
            assert isinstance(buckets, dict)
            return _histogram_quantile(q, buckets)
        name, matchers = self._selector()
        return self._instant(name, matchers)

    def _aggregation(self) -> Vector:
        how = _AGGREGATIONS[self._take()]
        by: list[str] = []
        if self._peek() == "by":
            self._take("by")
            self._take("(")
            while self._peek() != ")":
                by.append(self._take())
                if self._peek() == ",":
                    self._take(",")
            self._take(")")
        self._take("(")
        inner = self._sum()
        self._take(")")
        assert isinstance(inner, dict)
        groups: dict[Labels, list[float]] = defaultdict(list)
        for labels, value in inner.items():
            groups[frozenset((k, v) for k, v in labels if k in by)].append(value)
        return {labels: float(how(values)) for labels, values in groups.items()}

    def _selector(self) -> tuple[str, list[tuple[str, str, str]]]:
        name = self._take()
        matchers = []
        if self._peek() == "{":
            self._take("{")
            while self._peek() != "}":
                label, op, value = self._take(), self._take(), json.loads(self._take())
                matchers.append((label, op, value))
                if self._peek() == ",":
                    self._take(",")
            self._take("}")
        return name, matchers

    def _duration(self) -> float:
        text = self._take()[1:-1]
        return float(text[:-1]) * _UNITS[text[-1]]

    def _matching(self, samples: dict[tuple[str, Labels], float], name: str, matchers: list[Any]) -> Vector:
        found = {}
        for (sample_name, labels), value in samples.items():
            if sample_name == name and all(_matches(dict(labels), *matcher) for matcher in matchers):
                found[labels] = value
        return found

    def _instant(self, name: str, matchers: list[Any]) -> Vector:
        latest = [scrape for scrape in self.scrapes if scrape[0] <= self.at]
        return self._matching(latest[-1][1], name, matchers) if latest else {}

    def _rate(self, name: str, matchers: list[Any], window: float) -> Vector:
        points: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
        for at, samples in self.scrapes:
            if self.at - window <= at <= self.at:
                for labels, value in self._matching(samples, name, matchers).items():
                    points[labels].append((at, value))
        rates = {}
        for labels, series in points.items():
            if len(series) < 2:
                continue
            # A counter that went down was reset: it counted from 0 again.
            increase = sum(b - a if b >= a else b for (_, a), (_, b) in itertools.pairwise(series))
            rates[labels] = increase / (series[-1][0] - series[0][0])
        return rates


def _matches(labels: dict[str, str], label: str, op: str, value: str) -> bool:
    actual = labels.get(label, "")
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    found = re.fullmatch(value, actual) is not None
    return found if op == "=~" else not found


def _binary(op: str, left: Vector | float, right: Vector | float) -> Vector | float:
    def apply(a: float, b: float) -> float:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        return a / b if b else math.nan

    if isinstance(left, float) and isinstance(right, float):
        return apply(left, right)
    if isinstance(left, float):
        assert isinstance(right, dict)
        return {labels: apply(left, value) for labels, value in right.items()}
    if isinstance(right, float):
        return {labels: apply(value, right) for labels, value in left.items()}
    return {labels: apply(value, right[labels]) for labels, value in left.items() if labels in right}


def _histogram_quantile(q: float, buckets: Vector) -> Vector:
    """Prometheus's interpolation: linear inside the bucket the rank falls in."""
    series: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
    for labels, count in buckets.items():
        bound = dict(labels).get("le")
        if bound is not None:
            series[frozenset((k, v) for k, v in labels if k != "le")].append((float(bound), count))
    result = {}
    for labels, points in series.items():
        points.sort()
        total = points[-1][1]
        if total <= 0 or not math.isinf(points[-1][0]):
            continue
        rank = q * total
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in points:
            if count >= rank:
                if math.isinf(bound):
                    result[labels] = points[-2][0] if len(points) > 1 else math.nan
                elif count == lower_count:
                    result[labels] = bound
                else:
                    result[labels] = lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                        count - lower_count
                    )
                break
            lower_bound, lower_count = bound, count
    return result


def series_of(
    panel: dict[str, Any], scrapes: list[Scrape], variables: dict[str, str]
) -> dict[str, list[tuple[float, float]]]:
    """Each line a panel draws: its legend -> [(seconds, value)]."""
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for target in panel["targets"]:
        query = Query(target["expr"], scrapes, variables)
        for at, _ in scrapes:
            value = query.evaluate(at)
            vector = {frozenset(): value} if isinstance(value, float) else value
            for labels, number in vector.items():
                if math.isnan(number):
                    continue
                legend = target["legendFormat"]
                if legend == "__auto" or len(vector) > 1:
                    shown = ",".join(f'{k}="{v}"' for k, v in sorted(labels))
                    legend = "{" + shown + "}" if shown else target["expr"][:40]
                lines[legend].append((at, number))
    return dict(lines)


# --- the run -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def load_paths() -> list[str]:
    paths = json.loads((PROJECT / "openapi.json").read_text())["paths"]
    found = [path for path, operations in paths.items() if "get" in operations and "{" not in path]
    return [*found, "/does-not-exist"]


async def drive(base: str, metrics_url: str, seconds: float, concurrency: int, job: str) -> list[Scrape]:
    """Requests from `concurrency` clients for `seconds`, and a scrape every second meanwhile."""
    paths, scrapes = load_paths(), []
    instance = metrics_url.split("/")[2]
    deadline = time.monotonic() + seconds
    began = time.monotonic()

    async def client(number: int) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            sent = number
            while time.monotonic() < deadline:
                await http.get(paths[sent % len(paths)])
                sent += 1

    async def scraper() -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            while time.monotonic() < deadline + 2:
                text = (await http.get(metrics_url)).text
                scrapes.append((round(time.monotonic() - began, 2), parse(text, job, instance)))
                await asyncio.sleep(1.0)

    await asyncio.gather(scraper(), *(client(n) for n in range(concurrency)))
    return scrapes


def start(port: int, metrics_port: int) -> subprocess.Popen[bytes]:
    env = os.environ | {"PORT": str(port), "METRICS_PORT": str(metrics_port), "HOST": "127.0.0.1"}
    env.setdefault("LOG_LEVEL", "WARNING")
    return subprocess.Popen(
        [sys.executable, "-m", _package(), "serve", "--migrate"],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )


def _package() -> str:
    [package] = [p.name for p in (PROJECT / "src").iterdir() if (p / "__init__.py").is_file()]
    return package


def plot(panels: list[dict[str, Any]], lines: list[dict[str, list[tuple[float, float]]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    columns = 3
    rows = math.ceil(len(panels) / columns)
    grid, axes = plt.subplots(rows, columns, figsize=(18, 3.6 * rows), squeeze=False)
    for index, (panel, series) in enumerate(zip(panels, lines, strict=True)):
        single, axis = plt.subplots(figsize=(7, 3.6))
        for target_axis in (axes[index // columns][index % columns], axis):
            _draw(target_axis, panel, series)
        single.tight_layout()
        slug = re.sub(r"[^a-z0-9]+", "-", panel["title"].lower()).strip("-")
        single.savefig(out / f"{index + 1:02d}-{slug}.png", dpi=90)
        plt.close(single)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].axis("off")
    grid.tight_layout()
    grid.savefig(out / "dashboard.png", dpi=70)
    plt.close(grid)


def _draw(axis: Any, panel: dict[str, Any], series: dict[str, list[tuple[float, float]]]) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    unit = defaults.get("unit", "")
    axis.set_title(panel["title"], fontsize=10)
    axis.set_xlabel("seconds into the run", fontsize=8)
    axis.set_ylabel(unit, fontsize=8)
    axis.tick_params(labelsize=7)
    for legend, points in sorted(series.items())[:10]:
        axis.plot([p[0] for p in points], [p[1] for p in points], label=legend[:60], linewidth=1.2)
    for step in defaults.get("thresholds", {}).get("steps", [])[1:]:
        axis.axhline(step["value"], color=step["color"], linestyle="--", linewidth=0.8)
    if not series:
        axis.text(0.5, 0.5, "no data in this run", ha="center", va="center", transform=axis.transAxes)
    else:
        axis.legend(fontsize=6, loc="upper left")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the load runs")
    parser.add_argument("--concurrency", type=int, default=8, help="clients sending requests at once")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    dashboard = json.loads(DASHBOARD.read_text())
    job = dashboard["templating"]["list"][1]["current"]["value"]
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    port, metrics_port = free_port(), free_port()
    base, metrics_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    server = start(port, metrics_port)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                print("dashboard-preview: the service did not start (see its output above)", file=sys.stderr)
                return 1
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        print(f"dashboard-preview: {args.seconds:g}s of load on {base}", file=sys.stderr)
        scrapes = asyncio.run(drive(base, metrics_url, args.seconds, args.concurrency, job))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
    # Grafana's $__rate_interval: four scrape intervals.
    variables = {"job": job, "__rate_interval": "4s", "datasource": "preview"}
    lines = [series_of(panel, scrapes, variables) for panel in panels]
    plot(panels, lines, args.out)
    empty = [panel["title"] for panel, series in zip(panels, lines, strict=True) if not series]
    print(
        f"dashboard-preview: {len(panels)} panels from {len(scrapes)} scrapes in {args.out}/ "
        f"(dashboard.png, one PNG per panel); no data in this run: {', '.join(empty) or 'none'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
