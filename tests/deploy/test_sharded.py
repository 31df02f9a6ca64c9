"""Symbol-sharded replicas: the split, the compose example, and two real replicas on loopback
scraped by one real Prometheus."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SHARDED = ROOT / "deploy" / "docker-compose.sharded.yml"
PROM_SHARDED = ROOT / "deploy" / "prometheus" / "prometheus-sharded.yml"
DEFAULT_SYMBOLS = "BTCUSDT,ETHUSDT,SOLUSDT"  # docker-compose.yml's default list


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "shard_symbols", ROOT / "deploy" / "shard_symbols.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_split_is_complete_disjoint_and_stable() -> None:
    tool = _tool()
    symbols = [f"S{i:04d}USDT" for i in range(300)]
    parts = tool.split(symbols, 3)
    assert sorted(s for part in parts for s in part) == sorted(symbols)
    assert all(len(p) > 60 for p in parts)  # roughly balanced at this size
    more = tool.split([*symbols, "NEWUSDT", "OTHERUSDT"], 3)
    for old, new in zip(parts, more, strict=True):
        assert set(old) <= set(new)  # adding symbols moves no existing one
    with pytest.raises(ValueError, match="repeats"):
        tool.split(["BTCUSDT", "BTCUSDT"], 2)


def test_the_tool_prints_the_compose_variables(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "shard_symbols.py"), "--shards", "2", "--env",
         DEFAULT_SYMBOLS],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert set(lines) == {"APPRENTICE_SYMBOLS_SHARD_0", "APPRENTICE_SYMBOLS_SHARD_1"}
    assert "shard 0:" in out.stderr


def _compose_config(**env: str) -> dict[str, Any]:
    binary = subprocess.run(
        ["which", "docker-compose"], capture_output=True, text=True
    ).stdout.strip()
    if not binary:
        pytest.skip("docker-compose not installed")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "APPRENTICE_"))}
    proc = subprocess.run(
        [binary, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"),
         "-f", str(SHARDED), "--profile", "sharded", "config"],
        capture_output=True, text=True, timeout=60, env={**clean, **env}, cwd=ROOT, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return dict(yaml.safe_load(proc.stdout))


def test_compose_example_runs_disjoint_replicas_and_one_prometheus_over_both() -> None:
    services = _compose_config()["services"]
    shards = {k: v for k, v in services.items() if k.startswith("apprentice-shard-")}
    assert set(shards) == {"apprentice-shard-0", "apprentice-shard-1"}
    got = [
        shards[f"apprentice-shard-{i}"]["environment"]["APPRENTICE_SYMBOLS"].split(",")
        for i in (0, 1)
    ]
    assert got == _tool().split(DEFAULT_SYMBOLS.split(","), 2)  # the defaults are the tool's split
    for s in shards.values():
        assert s["profiles"] == ["sharded"]
        assert all(str(p).startswith("127.0.0.1:") for p in s["ports"])
    volumes = {str(s["volumes"][0]).split(":")[0] for s in shards.values()}
    assert volumes == {"apprentice-shard-0-state", "apprentice-shard-1-state"}
    prom = [str(v) for v in services["prometheus"]["volumes"]]
    assert any(v.endswith("prometheus-sharded.yml:/etc/prometheus/prometheus.yml:ro") for v in prom)
    assert not any(v.split(":")[0].endswith("deploy/prometheus/prometheus.yml") for v in prom)
    # the split a user computes lands in the replicas
    env = {"APPRENTICE_SYMBOLS_SHARD_0": "AUSDT,BUSDT", "APPRENTICE_SYMBOLS_SHARD_1": "CUSDT"}
    services = _compose_config(**env)["services"]
    assert services["apprentice-shard-1"]["environment"]["APPRENTICE_SYMBOLS"] == "CUSDT"
    # one scrape target per replica, each labelled with its shard
    config = yaml.safe_load(PROM_SHARDED.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "apprentice"]
    targets = {t["targets"][0].split(":")[0]: t["labels"]["shard"] for t in job["static_configs"]}
    assert targets == {name: name.rsplit("-", 1)[1] for name in shards}


def test_promtool_accepts_the_sharded_config() -> None:
    promtool = subprocess.run(["which", "promtool"], capture_output=True, text=True).stdout.strip()
    if not promtool:
        pytest.skip("promtool not installed")
    proc = subprocess.run(
        [promtool, "check", "config", str(PROM_SHARDED)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def test_two_replicas_on_loopback_one_prometheus_sees_every_symbol_once(tmp_path: Path) -> None:
    """The many-symbol exchange, two service replicas with the tool's split and one Prometheus
    with the sharded config pointed at them: every symbol's signal series appears exactly
    once, under its replica's shard label."""
    prometheus = subprocess.run(
        ["which", "prometheus"], capture_output=True, text=True
    ).stdout.strip()
    if not prometheus:
        pytest.skip("prometheus not installed")
    from bench import procs
    from bench.many_symbols import symbol_names
    from bench.market_point import MODEL

    if not MODEL.exists():
        pytest.skip("no committed student")
    n = 12
    names = symbol_names(n)
    parts = _tool().split(names, 2)
    xport, pport = procs.free_port(), procs.free_port()
    ports = [procs.free_port() for _ in parts]
    running: list[procs.Proc] = []
    try:
        running.append(procs.Proc(procs.python("-m", "bench.many_symbols", "--symbols", str(n),
                                               "--period-s", "1.0", "--port", str(xport)),
                                  tmp_path / "exchange.log"))  # fmt: skip
        procs.wait_port(xport, running[0], timeout=60)
        for i, (part, port) in enumerate(zip(parts, ports, strict=True)):
            env = {
                "APPRENTICE_SYMBOLS": ",".join(part), "APPRENTICE_INTERVAL": "5",
                "APPRENTICE_WS_URL": f"ws://127.0.0.1:{xport}/v5/public/linear",
                "APPRENTICE_REST_URL": f"http://127.0.0.1:{xport}", "APPRENTICE_MODEL": str(MODEL),
                "APPRENTICE_STATE_DIR": str(tmp_path / f"state-{i}"),
                "APPRENTICE_HOST": "127.0.0.1",
                "APPRENTICE_PORT": str(port), "APPRENTICE_LOG_LEVEL": "warning",
            }  # fmt: skip
            running.append(procs.Proc(procs.python("-m", "service"), tmp_path / f"svc{i}.log", env))
        for svc, port in zip(running[1:], ports, strict=True):
            procs.wait_http(port, "/ready", svc, timeout=120)
        config = yaml.safe_load(PROM_SHARDED.read_text())
        config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
        config["rule_files"] = [str(PROM_SHARDED.parent / f) for f in config["rule_files"]]
        (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "apprentice"]
        for target, port in zip(job["static_configs"], ports, strict=True):
            target["targets"] = [f"127.0.0.1:{port}"]
        job["scrape_interval"] = "1s"
        config["scrape_configs"] = [job]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        running.append(procs.Proc([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{pport}", "--log.level=warn"],
                                  tmp_path / "prometheus.log"))  # fmt: skip
        expr = "count by (symbol, shard) (apprentice_signal_probability_up)"
        url = f"http://127.0.0.1:{pport}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        deadline = time.monotonic() + 60
        seen: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            status, body = _get(url)
            if status == 200:
                result = json.loads(body)["data"]["result"]
                seen = {}
                for r in result:
                    seen.setdefault(r["metric"]["symbol"], []).append(r["metric"]["shard"])
                if len(seen) == n:
                    break
            time.sleep(0.5)
        assert sorted(seen) == sorted(names)
        for i, part in enumerate(parts):
            for sym in part:
                assert seen[sym] == [str(i)]  # once, from its own replica
    finally:
        for p in reversed(running):
            p.stop()
