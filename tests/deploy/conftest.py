"""Shared helpers for the deploy tests: where the files are, and PromQL taken apart.

The dashboard and the alert rules are the subject; these helpers extract every PromQL
expression from them, turn Grafana-only syntax into plain PromQL, list the metric names an
expression uses, and derive "probes" from alert expressions (see :func:`alert_probes`).
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST_YML = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD_JSON = DEPLOY / "grafana" / "dashboards" / "apprentice.json"
COMPOSE_YML = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# Grafana variables -> PromQL for running a dashboard query outside Grafana. $symbol is the
# "All" value of the dashboard's multi-value variable (its allValue is ".*").
GRAFANA_SUBSTITUTIONS = {
    "${__rate_interval}": "1m",
    "$__rate_interval": "1m",
    "${symbol}": ".*",
    "$symbol": ".*",
}
# Series Prometheus itself attaches to a scrape, allowed besides the service's metrics.
PROMETHEUS_SERIES = {"up"}


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it came from (for failure messages)."""

    origin: str
    expr: str


def require_binary(name: str) -> str:
    """Path of ``name``, or skip: Debian's package provides it (.ci/run installs it)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` not installed (apt-get install prometheus docker-compose)")
    return path


def load_dashboard() -> dict[str, Any]:
    """The provisioned Grafana dashboard."""
    return dict(json.loads(DASHBOARD_JSON.read_text()))


def iter_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    out: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def to_promql(expr: str) -> str:
    """Replace Grafana variables by the values the tests run the query with."""
    for var, value in GRAFANA_SUBSTITUTIONS.items():
        expr = expr.replace(var, value)
    return expr


def dashboard_queries(dashboard: dict[str, Any]) -> list[Query]:
    """Every panel target's expression, plus each template variable's ``label_values``
    selector (the series it reads labels from), as runnable PromQL."""
    queries: list[Query] = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            queries.append(
                Query(f"panel {panel['title']!r} {target['refId']}", to_promql(target["expr"]))
            )
    for var in dashboard.get("templating", {}).get("list", []):
        raw = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", raw)
        assert match, f"variable {var['name']}: expected label_values(selector, label)"
        queries.append(Query(f"variable ${var['name']}", to_promql(match.group(1))))
    return queries


def alert_rules() -> list[dict[str, Any]]:
    """The alerting rules of deploy/prometheus/alerts.yml."""
    doc = yaml.safe_load(ALERTS_YML.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


# ---- a small PromQL scanner: enough to split at top level and find names ----

_STRING = re.compile(r"\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*'|`[^`]*`")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "inf",
    "nan",
}


def _mask(expr: str) -> str:
    """``expr`` with string literals blanked out (same length), so scanning ignores them."""
    return _STRING.sub(lambda m: '"' + " " * (len(m.group()) - 2) + '"', expr)


def _depths(expr: str) -> list[int]:
    """Bracket depth ((), {}, []) at each character of a masked expression."""
    depth, out = 0, []
    for ch in expr:
        if ch in "({[":
            depth += 1
        out.append(depth)
        if ch in ")}]":
            depth -= 1
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names used by ``expr``: its identifiers less functions, keywords, label names
    (in braces or in by/on/without clauses), durations, numbers and Grafana variables."""
    masked = _mask(expr)
    depth = _depths(masked)
    names: set[str] = set()
    for m in _IDENT.finditer(masked):
        name, start, end = m.group(), m.start(), m.end()
        before = masked[start - 1 : start]
        if name in _KEYWORDS or before in ("$", ".") or before.isdigit():
            continue  # keywords, Grafana variables, numbers like 1e-4 or durations like 5m
        rest = masked[end:].lstrip()
        if rest.startswith("("):  # a function call
            continue
        # inside by (...) / on (...) / without (...) the identifiers are label names
        head = masked[:start].rstrip()
        opener = head.rfind("(")
        if (
            opener >= 0
            and depth[opener] == depth[start]
            and re.search(r"\b(by|without|on|ignoring|group_left|group_right)\s*$", masked[:opener])
        ):
            continue
        if masked[:start].count("{") > masked[:start].count("}"):  # a label matcher
            continue
        names.add(name)
    return names


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched in its braces) for each ``name{...}`` selector."""
    masked = _mask(expr)
    out = []
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}", masked):
        labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2)))
        out.append((m.group(1), labels))
    return out


_SET_OP = re.compile(r"\b(and|or|unless)\b(\s*(?:on|ignoring)\s*\([^)]*\))?", re.IGNORECASE)
_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(\s*bool)?")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+)")


def _split_top(expr: str, pattern: re.Pattern[str]) -> list[str]:
    """Split ``expr`` where ``pattern`` matches at bracket depth 0."""
    masked = _mask(expr)
    depth = _depths(masked)
    parts, last = [], 0
    for m in pattern.finditer(masked):
        if depth[m.start()] == 0 and m.start() >= last:
            parts.append(expr[last : m.start()])
            last = m.end()
    parts.append(expr[last:])
    return [p.strip() for p in parts]


def _matching_close(masked: str, start: int) -> int:
    """Index of the bracket closing the one at ``start``."""
    depth = 0
    for i in range(start, len(masked)):
        depth += masked[i] in "({["
        depth -= masked[i] in ")}]"
        if depth == 0:
            return i
    raise ValueError(f"unbalanced brackets in {masked!r}")


def _strip_parens(expr: str) -> str:
    """``(a + b)`` -> ``a + b``; ``(a) + (b)`` stays."""
    expr = expr.strip()
    while expr.startswith("(") and _matching_close(_mask(expr), 0) == len(expr) - 1:
        expr = expr[1:-1].strip()
    return expr


def alert_probes(expr: str) -> list[str]:
    """What must return data for an alert expression to be meaningful, although the alert
    itself is (normally) empty on a healthy service.

    The expression is split at its top-level set operators (``and``/``or``/``unless`` with
    their ``on(...)`` matching); in each operand a top-level comparison with a number (the
    threshold) is removed, keeping the vector side, and ``offset`` modifiers are dropped (a
    short test run has no data 10 minutes back). Each probe thus evaluates the very
    selectors, functions and aggregations of the alert, and must return series.
    """
    probes = []
    for operand in _split_top(expr, _SET_OP):
        operand = _strip_parens(operand)
        sides = _split_top(operand, _COMPARISON)
        if len(sides) == 2:
            left, right = (_strip_parens(s) for s in sides)
            if _NUMBER.fullmatch(right):
                operand = left
            elif _NUMBER.fullmatch(left):
                operand = right
        operand = re.sub(r"\s+offset\s+-?\d+[smhdwy]", "", operand)
        probes.append(" ".join(operand.split()))
    return probes


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    """The dashboard JSON, parsed."""
    return load_dashboard()


@pytest.fixture(scope="session")
def helpers() -> ModuleType:
    """This module, for the test files (conftest modules cannot be imported by name)."""
    return sys.modules[__name__]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One test case per dashboard query / alert rule for tests that ask for one."""
    if "dashboard_query" in metafunc.fixturenames:
        queries = dashboard_queries(load_dashboard())
        metafunc.parametrize("dashboard_query", queries, ids=[q.origin for q in queries])
    if "alert_rule" in metafunc.fixturenames:
        rules = alert_rules()
        metafunc.parametrize("alert_rule", rules, ids=[r["alert"] for r in rules])


@functools.cache
def exported_series() -> dict[str, frozenset[str]]:
    """Series name -> label names, for every metric of ``service.metrics.Metrics()``:
    histograms as ``_bucket`` (plus ``le``), ``_sum``, ``_count``; counters as ``_total``."""
    from service.metrics import Metrics

    metrics = Metrics()
    labels_of = {
        m._name: frozenset(m._labelnames)  # private, but the only way to read label names
        for m in vars(metrics).values()
        if hasattr(m, "_labelnames")
    }
    series: dict[str, frozenset[str]] = {}
    for family in metrics.registry.collect():
        labels = labels_of[family.name]
        if family.type == "histogram":
            series[f"{family.name}_bucket"] = labels | {"le"}
            series[f"{family.name}_sum"] = labels
            series[f"{family.name}_count"] = labels
        elif family.type == "counter":
            series[f"{family.name}_total"] = labels
        else:
            series[family.name] = labels
    return series


def check_metric_names(expr: str, origin: str) -> None:
    """Every metric in ``expr`` is exported by service.metrics (or is Prometheus' ``up``),
    and every label it matches or groups by exists on the metrics it uses."""
    exported = exported_series()
    names = metric_names(expr)
    assert names, f"{origin}: no metric found in {expr!r}"
    unknown = names - set(exported) - PROMETHEUS_SERIES
    assert not unknown, f"{origin}: {sorted(unknown)} not exported by service.metrics"
    target_labels = {"job", "instance"}
    for name, labels in selector_labels(expr):
        known = exported.get(name, set()) | target_labels
        assert labels <= known, f"{origin}: {name} has no label {sorted(labels - known)}"
    available = set().union(*(exported.get(n, set()) for n in names)) | target_labels
    for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        grouped = {label.strip() for label in clause.split(",") if label.strip()}
        assert grouped <= available, f"{origin}: grouping by unknown {grouped - available}"


def healthcheck_argv() -> list[str]:
    """The Dockerfile's HEALTHCHECK command, runnable here (``python`` -> this interpreter)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    (line,) = re.findall(r"^HEALTHCHECK .*$", text, re.MULTILINE)
    argv = json.loads(line[line.index(" CMD ") + 5 :])
    assert argv[0] == "python" and "urllib" in argv[2], argv  # python:slim has no curl
    return [sys.executable, *argv[1:]]
