"""The monitoring stack against the real thing: replay exchange -> service -> Prometheus.

Three real processes on loopback (free ports): ``python -m service.replay`` (bundled Bybit
klines, accelerated), ``python -m service`` against it (committed student, or the service
tests' fixture model while none is committed), and Debian's ``prometheus`` scraping the
service every second with the committed alert rules loaded. Then every PromQL expression
of the Grafana dashboard and of the alert rules goes through Prometheus' HTTP API:

* dashboard queries (Grafana variables substituted: ``$__rate_interval`` -> 1m, ``$symbol``
  -> ``.*``), and each template variable's series selector, must return series, at least one
  of them a number (a latency quantile is NaN only where no request fell in the window);
* alert expressions must evaluate without error; since a healthy service makes them empty,
  their probes (:func:`conftest.alert_probes`: the expression split at ``and``/``or``/
  ``unless``, thresholds and ``offset`` removed) must each return series;
* every loaded rule must report health "ok" from the rule manager.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.timeout(180)

SYMBOLS = "BTCUSDT,ETHUSDT,SOLUSDT"
SPEED = "600"  # one 5-minute candle per 0.5 s per symbol
START_TIMEOUT_S = 40.0
DATA_TIMEOUT_S = 45.0


@dataclass
class Stack:
    """The running processes' URLs."""

    service: str
    prometheus: str
    service_port: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


class Process:
    """A child process whose output goes to a log file, shown when something fails."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._fh = self.log.open("wb")
        self.proc = subprocess.Popen(
            argv, stdout=self._fh, stderr=subprocess.STDOUT, env=env, cwd=log_dir
        )

    def tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines()[-n:]
        return f"--- {self.name} (rc={self.proc.poll()}) ---\n" + "\n".join(lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._fh.close()


def _wait_for(what: str, check: Any, procs: list[Process], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for p in procs:
            if p.proc.poll() is not None:
                pytest.fail(f"{p.name} exited while waiting for {what}\n{p.tail()}")
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}\n" + "\n".join(p.tail() for p in procs))


def _model(helpers: ModuleType, directory: Path) -> Path:
    """The committed student, or the service tests' fixture model (same builder)."""
    from service.settings import DEFAULT_MODEL

    if DEFAULT_MODEL.exists() and DEFAULT_MODEL.with_suffix(".json").exists():
        return DEFAULT_MODEL
    import importlib.util

    path = helpers.ROOT / "tests" / "service" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_service_fixture_models", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return Path(module.write_fixture_model(directory).onnx_path)


def _prometheus_config(helpers: ModuleType, service_port: int, path: Path) -> Path:
    """The committed prometheus.yml, pointed at the local service, scraping every second."""
    config = yaml.safe_load(helpers.PROMETHEUS_YML.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(helpers.PROMETHEUS_YML.parent / f) for f in config["rule_files"]]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "apprentice"]
    job.update(scrape_interval="1s", static_configs=[{"targets": [f"127.0.0.1:{service_port}"]}])
    config["scrape_configs"] = [job]
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def stack(helpers: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = helpers.require_binary("prometheus")
    for module in ("service/__main__.py", "service/replay/__main__.py"):
        if not (helpers.ROOT / module).exists():
            pytest.skip(f"this checkout has no {module}")
    tmp = tmp_path_factory.mktemp("stack")
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPRENTICE_")}
    env["PYTHONPATH"] = str(helpers.ROOT)
    replay_port, service_port, prom_port = _free_port(), _free_port(), _free_port()
    procs: list[Process] = []
    try:
        replay = Process(
            "replay",
            [
                sys.executable,
                "-m",
                "service.replay",
                "--symbols",
                SYMBOLS,
                "--interval",
                "5",
                "--speed",
                SPEED,
                "--host",
                "127.0.0.1",
                "--port",
                str(replay_port),
            ],
            tmp,
            env,
        )
        procs.append(replay)
        kline = f"http://127.0.0.1:{replay_port}/v5/market/kline?category=linear&symbol=BTCUSDT&interval=5&limit=1"
        _wait_for("the replay exchange", lambda: _get(kline)[0] == 200, procs, START_TIMEOUT_S)

        service_env = {
            **env,
            "APPRENTICE_SYMBOLS": SYMBOLS,
            "APPRENTICE_INTERVAL": "5",
            "APPRENTICE_WS_URL": f"ws://127.0.0.1:{replay_port}/v5/public/linear",
            "APPRENTICE_REST_URL": f"http://127.0.0.1:{replay_port}",
            "APPRENTICE_HOST": "127.0.0.1",
            "APPRENTICE_PORT": str(service_port),
            "APPRENTICE_STATE_DIR": str(tmp / "state"),
            "APPRENTICE_MODEL": str(_model(helpers, tmp / "models")),
            "APPRENTICE_LOG_LEVEL": "warning",
            # every signal long or short, so paper fills (and their series) appear quickly
            "APPRENTICE_LONG_THRESHOLD": "0.5",
            "APPRENTICE_SHORT_THRESHOLD": "0.5",
            # the committed card's default policy is flat (issue 28): trade the direction rule
            "APPRENTICE_POLICY": "direction",
        }
        procs.append(Process("service", [sys.executable, "-m", "service"], tmp, service_env))
        base = f"http://127.0.0.1:{service_port}"
        _wait_for("/ready", lambda: _get(f"{base}/ready")[0] == 200, procs, START_TIMEOUT_S)

        config = _prometheus_config(helpers, service_port, tmp / "prometheus.yml")
        procs.append(
            Process(
                "prometheus",
                [
                    prometheus,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--log.level=warn",
                ],
                tmp,
                env,
            )
        )
        prom = f"http://127.0.0.1:{prom_port}"
        _wait_for("Prometheus", lambda: _get(f"{prom}/-/ready")[0] == 200, procs, START_TIMEOUT_S)
        # requests on every read route, for the HTTP panels
        for route in ("/health", "/ready", "/signals", "/signal/BTCUSDT", "/paper", "/model"):
            assert _get(base + route)[0] in (200, 503), route
        yield Stack(service=base, prometheus=prom, service_port=service_port)
    except BaseException:
        for p in procs:
            print(p.tail(), file=sys.stderr)
        raise
    finally:
        for p in reversed(procs):
            p.stop()


def _query(stack: Stack, expr: str) -> dict[str, Any]:
    url = f"{stack.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body = _get(url)
    assert status == 200, f"{expr!r}: HTTP {status} {body[:300]!r}"
    doc = json.loads(body)
    assert doc["status"] == "success", doc
    return dict(doc["data"])


def _values(data: dict[str, Any]) -> list[float]:
    if data["resultType"] == "vector":
        return [float(s["value"][1]) for s in data["result"]]
    if data["resultType"] == "scalar":
        return [float(data["result"][1])]
    return [float(v[1]) for s in data["result"] for v in s["values"]]


def _expressions(helpers: ModuleType, dashboard: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(origin, PromQL, needs a finite value) for every dashboard query and alert probe."""
    out = [(q.origin, q.expr, True) for q in helpers.dashboard_queries(dashboard)]
    for rule in helpers.alert_rules():
        for i, probe in enumerate(helpers.alert_probes(rule["expr"])):
            out.append((f"alert {rule['alert']} probe {i}", probe, False))
    return out


def test_every_dashboard_and_alert_expression_returns_data(
    stack: Stack, helpers: ModuleType, dashboard: dict[str, Any]
) -> None:
    for rule in helpers.alert_rules():  # the alert expressions themselves are valid PromQL
        _query(stack, rule["expr"])
    pending = _expressions(helpers, dashboard)
    total = len(pending)
    deadline = time.monotonic() + DATA_TIMEOUT_S
    while pending and time.monotonic() < deadline:
        still = []
        for origin, expr, finite in pending:
            values = _values(_query(stack, expr))
            if not values or (finite and not any(math.isfinite(v) for v in values)):
                still.append((origin, expr, finite))
        pending = still
        if pending:
            time.sleep(1.0)
    assert not pending, "no data from:\n" + "\n".join(f"  {o}: {e}" for o, e, _ in pending)
    print(f"\n{total} expressions returned data from a real Prometheus")


def test_every_rule_evaluates_healthy(stack: Stack, helpers: ModuleType) -> None:
    names = {rule["alert"] for rule in helpers.alert_rules()}
    deadline = time.monotonic() + DATA_TIMEOUT_S
    while True:
        _, body = _get(f"{stack.prometheus}/api/v1/rules")
        rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
        evaluated = {r["name"]: r for r in rules if r.get("lastEvaluation", "").startswith("2")}
        if set(evaluated) >= names or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(evaluated) == names
    for name, rule in evaluated.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"


def test_scrape_target_is_up_and_container_probe_passes(stack: Stack, helpers: ModuleType) -> None:
    data = _query(stack, 'up{job="apprentice"}')
    assert _values(data) == [1.0]
    env = {**os.environ, "APPRENTICE_PORT": str(stack.service_port)}
    probe = subprocess.run(helpers.healthcheck_argv(), env=env, capture_output=True, timeout=30)
    assert probe.returncode == 0, probe.stderr
