"""Prometheus configuration and alert rules: promtool checks, rule unit tests, metric names."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

# The alerts the deployment promises (issue 7), by name.
REQUIRED_ALERTS = {
    "ApprenticeFeedDisconnected",
    "ApprenticeNoClosedKline",
    "ApprenticeNotReady",
    "ApprenticeInferenceP99AboveBudget",
    "ApprenticeReconnectStorm",
    "ApprenticePaperDrawdown",
}


def _promtool(helpers: ModuleType, *args: str, cwd: Path | None = None) -> str:
    promtool = helpers.require_binary("promtool")
    proc = subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_promtool_check_config(helpers: ModuleType) -> None:
    out = _promtool(helpers, "check", "config", str(helpers.PROMETHEUS_YML))
    assert "SUCCESS" in out


def test_promtool_check_rules(helpers: ModuleType) -> None:
    out = _promtool(helpers, "check", "rules", str(helpers.ALERTS_YML))
    assert f"{len(helpers.alert_rules())} rules found" in out


def test_promtool_rule_unit_tests(helpers: ModuleType) -> None:
    """Each alert fires on a failing synthetic series and not on a healthy one."""
    out = _promtool(helpers, "test", "rules", str(helpers.ALERTS_TEST_YML))
    assert "SUCCESS" in out
    tested = set(re.findall(r"alertname:\s*(\w+)", helpers.ALERTS_TEST_YML.read_text()))
    assert tested == {rule["alert"] for rule in helpers.alert_rules()}, "every alert unit-tested"


def test_required_alerts_exist_with_severity_and_text(helpers: ModuleType) -> None:
    rules = {rule["alert"]: rule for rule in helpers.alert_rules()}
    assert set(rules) >= REQUIRED_ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_alert_rule_uses_exported_metrics(helpers: ModuleType, alert_rule: dict[str, Any]) -> None:
    helpers.check_metric_names(alert_rule["expr"], f"alert {alert_rule['alert']}")


def test_prometheus_scrapes_the_compose_service(helpers: ModuleType) -> None:
    """The scrape target is the compose network alias and container port of the service, and
    the rule file is the one compose mounts beside the config."""
    config = yaml.safe_load(helpers.PROMETHEUS_YML.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["apprentice"]["static_configs"] for t in sc["targets"]]
    assert targets == ["apprentice:8000"]
    assert jobs["apprentice"].get("metrics_path", "/metrics") == "/metrics"
    assert config["rule_files"] == ["alerts.yml"]
    compose = yaml.safe_load(helpers.COMPOSE_YML.read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
