"""``python -m service.demo`` (make demo): serves signals and paper trades, stops on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_serves_signals_and_trades_then_stops_on_ctrl_c(
    fixture_model: Any, tmp_path: Path
) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPRENTICE_")}
    env.update(
        APPRENTICE_MODEL=str(fixture_model.onnx_path),
        APPRENTICE_PORT=str(port),
        APPRENTICE_STATE_DIR=str(tmp_path / "state"),
        PYTHONUNBUFFERED="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.demo", "--speed", "600"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60  # "serves GET /signal/BTCUSDT within a minute"
        signal_ok = trades = 0
        while time.monotonic() < deadline and not (signal_ok and trades):
            time.sleep(0.25)
            try:
                signal_ok = httpx.get(f"{base}/signal/BTCUSDT").status_code == 200
                trades = httpx.get(f"{base}/paper/trades").json()["total"] if signal_ok else 0
            except httpx.HTTPError:
                continue
        assert signal_ok and trades > 0
        body = httpx.get(f"{base}/signal/BTCUSDT").json()
        assert 0 <= body["volatility"]["probability_high"] <= 1  # both heads served
        # a few more candles: every symbol and head scored live (N stated), drift per feature
        health: dict[str, Any] = {}
        while time.monotonic() < deadline + 30:
            health = httpx.get(f"{base}/model/health").json()
            heads = [h for sym in health["symbols"].values() for h in sym.values()]
            if len(heads) == 6 and min(h["n"] for h in heads) >= 3:
                break
            time.sleep(0.25)
        assert all(h["n"] >= 3 and h["window"] == 288 for h in heads), health
        assert all(v is not None for v in health["drift"]["features"].values())
        assert len(health["drift"]["features"]) == 12
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert f"dashboard      {base}/" in out and "Ctrl-C stops both" in out
    pids = [int(p) for p in re.findall(r"(?:service|replay) pid (\d+)", out)]
    assert len(pids) == 2
    time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "a child outlived the launcher"
    assert "Application shutdown complete" in out  # the service shut down gracefully
    assert "live volatility log loss" in out and "vs no-skill" in out  # the status line


def test_demo_keeps_the_replay_exchange_off_the_service_cpus() -> None:
    from service.demo import cpu_plan

    assert cpu_plan({0}) is None  # one CPU: nothing to separate
    assert cpu_plan({0, 1}) == ({0}, {1})
    service, replay = cpu_plan({2, 5, 7, 9}) or (set(), set())
    assert service == {2, 5, 7} and replay == {9} and not service & replay
