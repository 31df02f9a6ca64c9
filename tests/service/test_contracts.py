"""Contract tests: the service stays torch-free; settings and metrics follow DESIGN."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from service.metrics import Metrics
from service.settings import MAINNET_REST, MAINNET_WS, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "module",
    [
        "service.features",
        "service.market.kline_io",
        "service.settings",
        "service.metrics",
        "service.model.card",
    ],
)
def test_service_modules_import_without_torch(module: str) -> None:
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_whole_service_package_never_imports_torch_or_training() -> None:
    code = (
        "import importlib, pkgutil, sys, service\n"
        "for m in pkgutil.walk_packages(service.__path__, 'service.'):\n"
        "    if m.name.endswith('__main__'): continue\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'training')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_settings_defaults_are_mainnet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPRENTICE_SYMBOLS", "BTCUSDT,ETHUSDT")
    s = load_settings()
    assert s.symbols == ["BTCUSDT", "ETHUSDT"]
    assert s.ws_url == MAINNET_WS and s.rest_url == MAINNET_REST and s.interval == "5"


@pytest.mark.parametrize(
    ("var", "value", "hint"),
    [
        ("APPRENTICE_SYMBOLS", "btcusdt", "upper-case"),
        ("APPRENTICE_INTERVAL", "5m", "Bybit's spelling"),
        ("APPRENTICE_PORT", "http", "APPRENTICE_PORT"),
        ("APPRENTICE_WS_URL", "http://x", "ws://"),
        ("APPRENTICE_SHORT_THRESHOLD", "0.9", "must not exceed"),
    ],
)
def test_bad_settings_refuse_with_a_fix(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, hint: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert hint in str(err.value) and "refusing to start" in str(err.value)


def test_design_metric_names_exist() -> None:
    m = Metrics()
    m.klines.labels(symbol="BTCUSDT", confirmed="true").inc()
    m.klines_rejected.labels(reason="malformed_json").inc()
    m.backfilled_klines.labels(symbol="BTCUSDT").inc()
    m.signals.labels(symbol="BTCUSDT", direction="up").inc()
    m.last_kline_age_seconds.labels(symbol="BTCUSDT").set(1)
    m.model_info.labels(name="x", version="1").set(1)
    m.paper_position.labels(symbol="BTCUSDT").set(0)
    m.paper_trades.labels(symbol="BTCUSDT", side="buy").inc()
    m.http_request_duration_seconds.labels(route="/health", method="GET", status="200").observe(1)
    text = generate_latest(m.registry).decode()
    for name in (
        'apprentice_inference_seconds_bucket{le="5e-06"}',
        "apprentice_feature_update_seconds_bucket",
        "apprentice_signal_latency_seconds_bucket",
        'apprentice_klines_total{confirmed="true",symbol="BTCUSDT"}',
        "apprentice_klines_rejected_total",
        "apprentice_ws_connected",
        "apprentice_ws_reconnects_total",
        "apprentice_backfilled_klines_total",
        "apprentice_signals_total",
        "apprentice_last_kline_age_seconds",
        "apprentice_model_info",
        "apprentice_paper_equity_usdt",
        "apprentice_paper_position",
        "apprentice_paper_trades_total",
        "apprentice_http_request_duration_seconds_bucket",
    ):
        assert name in text, name


def test_metrics_are_not_global() -> None:
    a, b = Metrics(), Metrics()
    a.ws_reconnects.inc()
    assert b.ws_reconnects._value.get() == 0
