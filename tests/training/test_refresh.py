"""``python -m training refresh``: the data merge (pure), and the whole loop over a journal a
running service wrote — a registered challenger handed to that service, which scores it in
shadow (replay exchange and the service as real processes on loopback)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.market.klines import KlineTable
from service.model.card import ModelCard
from service.replay import ReplayConfig, ReplayExchange
from training import refresh

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "refresh-test-token"


def _table(symbol: str, starts: list[int], close: float = 1.0) -> KlineTable:
    n = len(starts)
    one = np.full(n, close)
    return KlineTable(
        symbol, "5", np.array(starts, np.int64), one, one, one, one, one, np.full(n, np.nan)
    )


def test_merge_keeps_bundled_bars_and_adds_new_ones_in_order() -> None:
    bundled = _table("BTCUSDT", [0, 300_000, 600_000], close=1.0)
    journal = _table("BTCUSDT", [600_000, 1_200_000, 900_000], close=2.0)
    merged, added = refresh.merge_tables(bundled, journal)
    assert added == 2
    assert merged.start.tolist() == [0, 300_000, 600_000, 900_000, 1_200_000]
    assert merged.close.tolist() == [1.0, 1.0, 1.0, 2.0, 2.0]  # the bundled bar wins
    assert refresh.merge_tables(bundled, None) == (bundled, 0)
    late = _table("ETHUSDT", [0, 300_000])
    assert [t.symbol for t in refresh.reaching([merged, late], tolerance_ms=0)] == ["BTCUSDT"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_refresh_over_a_service_journal_hands_a_challenger_over(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for ext in (".onnx", ".json"):
        shutil.copyfile(ROOT / "models" / f"student_pooled_5m{ext}", models / f"student{ext}")
    card = ModelCard.load(models / "student.json")
    card.model_copy(update={"onnx_file": "student.onnx"}).save(models / "student.json")
    state = tmp_path / "state"
    port = _free_port()
    cfg = ReplayConfig(symbols=("BTCUSDT", "ETHUSDT"), interval="5", speed=1200.0, port=0)
    async with ReplayExchange(cfg) as ex:
        env = {k: v for k, v in os.environ.items() if not k.startswith("APPRENTICE_")}
        env.update(
            APPRENTICE_SYMBOLS="BTCUSDT,ETHUSDT",
            APPRENTICE_WS_URL=ex.ws_url,
            APPRENTICE_REST_URL=ex.rest_url,
            APPRENTICE_MODEL=str(models / "student.onnx"),
            APPRENTICE_STATE_DIR=str(state),
            APPRENTICE_PORT=str(port),
            APPRENTICE_ADMIN_TOKEN=TOKEN,
            APPRENTICE_LOG_LEVEL="warning",
        )
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                deadline = time.monotonic() + 60
                while True:  # the service journals the backfill and a few live candles
                    try:
                        h = (await http.get("/model/health")).json()
                        if (
                            h["journal"]["klines"] > 0
                            and min(s["direction"]["scored_total"] for s in h["symbols"].values())
                            >= 3
                        ):
                            break
                    except (httpx.HTTPError, KeyError, ValueError):
                        pass
                    assert time.monotonic() < deadline, "the service never journaled"
                    await asyncio.sleep(0.2)
                argv = [
                    "--quick",
                    "--no-progress",
                    "--state-dir",
                    str(state),
                    "--url",
                    url,
                    "--token",
                    TOKEN,
                    "--models-dir",
                    str(models),
                    "--champion",
                    str(models / "student.onnx"),
                    "--out",
                    str(tmp_path / "runs"),
                ]
                t0 = time.perf_counter()
                code = await asyncio.to_thread(refresh.main, argv)
                assert code == 0
                wall = time.perf_counter() - t0
                health = (await http.get("/model/health")).json()
                ch = health["challenger"]["challenger"]
                assert ch["name"] == "student_pooled_5m" and ch["version"].startswith("refresh-")
                assert Path(ch["path"]).parent == models  # registered, not copied again
                assert health["model"]["version"] == "1.0.0"  # the champion still serves
                new_card = ModelCard.load(Path(ch["path"]).with_suffix(".json"))
                rows = new_card.metrics["refresh_vs_champion"]
                assert [r["head"] for r in rows] == ["direction", "volatility"]
                assert all(r["ci_low"] <= r["diff"] <= r["ci_high"] for r in rows)
                print(f"refresh --quick wall time {wall:.1f} s")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                pytest.fail("the service did not stop")
