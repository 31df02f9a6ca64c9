"""The Grafana dashboard and provisioning: queries use real metrics, panels cover the service."""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any

import yaml

# Metric families the dashboard may leave out, with the reason.
NOT_CHARTED = {
    # one sample per admin reload attempt; the loaded model is charted by apprentice_model_info
    "apprentice_model_reloads_total",
}


def test_dashboard_query_uses_exported_metrics(helpers: ModuleType, dashboard_query: Any) -> None:
    helpers.check_metric_names(dashboard_query.expr, dashboard_query.origin)


def test_every_service_metric_is_charted(helpers: ModuleType, dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for query in helpers.dashboard_queries(dashboard):
        used |= helpers.metric_names(query.expr)
    exported = helpers.exported_series()
    # a histogram counts as charted when its buckets are (quantiles)
    families = {re.sub(r"_(sum|count)$", "_bucket", n) for n in exported}
    missing = families - {re.sub(r"_(sum|count)$", "_bucket", n) for n in used} - NOT_CHARTED
    assert not missing, f"metrics exported but not on the dashboard: {sorted(missing)}"


def test_latency_panels_show_quantiles_of_each_histogram(
    helpers: ModuleType, dashboard: dict[str, Any]
) -> None:
    exprs = [q.expr for q in helpers.dashboard_queries(dashboard)]
    for histogram in (
        "apprentice_inference_seconds",
        "apprentice_feature_update_seconds",
        "apprentice_signal_latency_seconds",
        "apprentice_http_request_duration_seconds",
    ):
        quantiles = {
            float(m.group(1))
            for e in exprs
            if f"{histogram}_bucket" in e
            for m in [re.match(r"histogram_quantile\(([0-9.]+),", e)]
            if m
        }
        assert {0.5, 0.99} <= quantiles, f"{histogram}: quantiles {sorted(quantiles)}"
        for e in exprs:
            if f"{histogram}_bucket" in e:
                assert re.search(r"by \(([^)]*\b)?le\b", e), f"quantile must keep le: {e}"


def test_dashboard_layout_is_valid(helpers: ModuleType, dashboard: dict[str, Any]) -> None:
    panels = helpers.iter_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not area & cells, f"panel {p['title']!r} overlaps another"
        cells |= area
        if p["type"] != "row":
            assert p["targets"], f"panel {p['title']!r} has no query"
            assert p["datasource"]["uid"] == _datasource_uid(helpers)
            for t in p["targets"]:
                assert t["datasource"]["uid"] == _datasource_uid(helpers)
    assert dashboard["uid"] == "apprentice"


def test_provisioning_points_at_the_mounted_dashboards(helpers: ModuleType) -> None:
    provider = yaml.safe_load(
        (helpers.DEPLOY / "grafana/provisioning/dashboards/apprentice.yml").read_text()
    )["providers"][0]
    compose = yaml.safe_load(helpers.COMPOSE_YML.read_text())
    grafana = compose["services"]["grafana"]
    mounts = dict(
        v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith(".")
    )
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{helpers.DASHBOARD_JSON.name}"


def test_grafana_is_anonymous_viewer_without_baked_password(helpers: ModuleType) -> None:
    env = yaml.safe_load(helpers.COMPOSE_YML.read_text())["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    # passed through from the shell only when set: no value, no default baked in (without
    # it, the entrypoint creates no admin at all; tests/deploy/test_compose.py runs that)
    assert "GF_SECURITY_ADMIN_PASSWORD" in env and env["GF_SECURITY_ADMIN_PASSWORD"] is None


def _datasource_uid(helpers: ModuleType) -> str:
    doc = yaml.safe_load(
        (helpers.DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    (source,) = doc["datasources"]
    assert source["url"] == "http://prometheus:9090"
    return str(source["uid"])
