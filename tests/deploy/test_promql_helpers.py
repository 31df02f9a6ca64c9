"""The PromQL helpers the deploy tests rely on, on hand-written expressions."""

from __future__ import annotations

from types import ModuleType


def test_metric_names_skip_functions_labels_durations_and_variables(helpers: ModuleType) -> None:
    expr = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(a_seconds_bucket{route=~"/x"}'
        "[$__rate_interval]))) / on (instance) group_left (name) b_info > 1e-4 or vector(0)"
    )
    assert helpers.metric_names(expr) == {"a_seconds_bucket", "b_info"}
    assert helpers.metric_names('c_total{symbol="sum"} offset 10m') == {"c_total"}


def test_selector_labels(helpers: ModuleType) -> None:
    assert helpers.selector_labels('x{a="1", b=~"2"} + y{c!="3"}') == [
        ("x", {"a", "b"}),
        ("y", {"c"}),
    ]


def test_alert_probes_drop_thresholds_offsets_and_split_set_operators(
    helpers: ModuleType,
) -> None:
    expr = """
      increase(k_total{confirmed="true"}[10m]) == 0
      and on (instance, symbol)
      (k_total{confirmed="true"} offset 10m)
    """
    assert helpers.alert_probes(expr) == [
        'increase(k_total{confirmed="true"}[10m])',
        'k_total{confirmed="true"}',
    ]
    assert helpers.alert_probes("(a > 0.5) unless 3 < b") == ["a", "b"]
    # a comparison between two vectors is kept: both sides are data already
    assert helpers.alert_probes("a > b") == ["a > b"]
    # comparisons inside a function are not thresholds of the alert
    assert helpers.alert_probes("count(x == 1) > 2") == ["count(x == 1)"]


def test_dashboard_queries_substitute_grafana_variables(helpers: ModuleType) -> None:
    dashboard = {
        "panels": [
            {
                "title": "t",
                "type": "row",
                "panels": [
                    {
                        "title": "inner",
                        "targets": [
                            {"refId": "A", "expr": 'rate(x{s=~"$symbol"}[$__rate_interval])'}
                        ],
                    }
                ],
            }
        ],
        "templating": {"list": [{"name": "symbol", "query": "label_values(y{j='a'}, s)"}]},
    }
    queries = helpers.dashboard_queries(dashboard)
    assert [q.expr for q in queries] == ['rate(x{s=~".*"}[1m])', "y{j='a'}"]
