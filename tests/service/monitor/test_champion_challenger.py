"""Issue 31's test on real sockets: the service runs the committed student as champion; a
challenger outputting the constant 0.5 is scored in shadow over replayed candles and its
promotion is refused (409, reason stated); kill -9 and a restart keep champion, challenger
and both live scores; a copy of the champion with a new version is promoted; rollback
restores the original; the challenger never trades and is never served."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from service.model.card import ModelCard
from service.replay import ReplayConfig, ReplayExchange

ROOT = Path(__file__).resolve().parents[3]
SYMBOLS = ("BTCUSDT", "ETHUSDT")
MIN_SCORED = 240  # paired candles over both symbols: ~15 s at 8 candles/s
TOKEN = "test-admin-token-31"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _rows(db_path: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(db_path)
    try:
        return list(db.execute(sql, args))
    finally:
        db.close()


def _copy_student(folder: Path, name: str, version: str | None = None) -> Path:
    """The committed student under another file name (and optionally another version)."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"{name}.onnx"
    shutil.copyfile(ROOT / "models" / "student_pooled_5m.onnx", onnx_path)
    card = ModelCard.load(ROOT / "models" / "student_pooled_5m.json")
    update: dict[str, Any] = {"onnx_file": onnx_path.name}
    if version is not None:
        update["version"] = version
    card.model_copy(update=update).save(onnx_path.with_suffix(".json"))
    return onnx_path


async def test_shadow_refuse_restart_promote_rollback(
    service_process: Callable[..., Any],
    until: Callable[..., Awaitable[Any]],
    model_writer: Callable[..., Any],
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    champion = _copy_student(tmp_path / "models", "student_pooled_5m")
    constant = model_writer(tmp_path / "elsewhere", name="constant", version="0.5", scale=0.0)
    copy = _copy_student(tmp_path / "incoming", "student_copy", version="1.0.1-copy")
    db = state / "signals.sqlite3"
    cfg = ReplayConfig(symbols=SYMBOLS, interval="5", speed=2400.0, port=0)  # 8 candles/s
    async with ReplayExchange(cfg) as ex:
        svc = service_process(ex.ws_url, ex.rest_url, SYMBOLS, state)
        svc.env.update(
            APPRENTICE_MODEL=str(champion),
            APPRENTICE_ADMIN_TOKEN=TOKEN,
            APPRENTICE_PROMOTE_MIN_SCORED=str(MIN_SCORED),
            # the committed card's default is flat (nothing beat it on validation): trade the
            # direction rule so "the challenger never trades" has fills to check
            APPRENTICE_POLICY="direction",
        )
        async with httpx.AsyncClient(base_url=svc.base_url, timeout=10, headers=AUTH) as http:

            async def health() -> dict[str, Any] | None:
                try:
                    r = await http.get("/model/health")
                except httpx.HTTPError:
                    return None
                return r.json() if r.status_code == 200 else None

            async def shadow_scored(at_least: int) -> dict[str, Any] | None:
                h = await health()
                block = h and h["challenger"]
                return h if block and block["scored"] >= at_least else None

            svc.start()
            await until(health, 60, "the service")

            # a constant-0.5 challenger: loaded, refused before it has evidence
            r = await http.post("/admin/challenger", json={"path": str(constant.onnx_path)})
            assert r.status_code == 200, r.text
            assert r.json()["challenger"]["version"] == "0.5"
            assert r.json()["champion"]["version"] == "1.0.0"
            r = await http.post("/admin/promote", json={"force": False})
            assert r.status_code == 409 and "APPRENTICE_PROMOTE_MIN_SCORED" in r.json()["detail"]

            # scored in shadow, then refused: worse on the volatility head
            h = await until(lambda: shadow_scored(MIN_SCORED), 90, "shadow scores")
            r = await http.post("/admin/promote", json={"force": False})
            assert r.status_code == 409, r.text
            assert "worse" in r.json()["detail"] and "volatility" in r.json()["detail"]
            block = h["challenger"]
            for sym in SYMBOLS:
                vol = block["symbols"][sym]["volatility"]
                assert vol["champion"]["n"] == vol["challenger"]["n"] == vol["n"] > 0
                assert abs(vol["challenger"]["log_loss"] - 0.693147) < 1e-4  # ln 2: constant 0.5
            assert block["pooled"]["volatility"]["diff"] > 0

            # never served, never traded
            signals = (await http.get("/signals")).json()["signals"]
            assert {s["model"]["version"] for s in signals} == {"1.0.0"}
            metrics = (await http.get("/metrics")).text
            assert 'apprentice_promotions_total{outcome="refused"} 2.0' in metrics
            assert 'role="challenger"' in metrics and 'role="champion"' in metrics
            before = await until(health, 10, "health before the kill")
            await asyncio.sleep(0.3)  # the journal commits within milliseconds
            svc.kill9()

            shadow = _rows(db, "SELECT DISTINCT role, model_version FROM shadow_signals")
            assert shadow == [("challenger", "0.5")]
            served = {r[0] for r in _rows(db, "SELECT DISTINCT model_version FROM signals")}
            assert served == {"1.0.0"}
            # every fill traded a champion signal: its probability is the journaled signal's
            fills = _rows(
                state / "paper.sqlite3", "SELECT symbol, candle_start, probability_up FROM fills"
            )
            champ = {
                (s, c): p
                for s, c, p in _rows(db, "SELECT symbol, candle_start, probability_up FROM signals")
            }
            assert fills and all(champ[(s, c)] == p for s, c, p in fills)
            assert all(p != 0.5 for _, _, p in fills)

            # kill -9 and restart: the same pair and both live scores
            svc.start()
            after = await until(health, 60, "the restarted service")
            assert after["model"]["version"] == "1.0.0"
            assert after["challenger"]["challenger"]["version"] == "0.5"
            assert after["challenger"]["scored"] >= before["challenger"]["scored"]
            for sym in SYMBOLS:
                for head in ("direction", "volatility"):
                    was, now = (
                        before["challenger"]["symbols"][sym][head],
                        after["challenger"]["symbols"][sym][head],
                    )
                    assert now["challenger"] is not None and now["champion"] is not None
                    assert now["scored_total"] >= was["scored_total"]
                    assert (
                        after["symbols"][sym][head]["scored_total"]
                        >= before["symbols"][sym][head]["scored_total"]
                    )

            # a copy of the champion with a new version: promoted once it has the evidence
            r = await http.post("/admin/challenger", json={"path": str(copy)})
            assert r.status_code == 200, r.text
            await until(lambda: shadow_scored(MIN_SCORED), 90, "the copy's shadow scores")
            r = await http.post("/admin/promote", json={})
            assert r.status_code == 200, r.text
            assert r.json()["champion"]["version"] == "1.0.1-copy"
            assert r.json()["challenger"] is None
            assert (await http.get("/model")).json()["version"] == "1.0.1-copy"
            registered = Path(r.json()["champion"]["path"])
            assert registered.parent == champion.parent  # copied into the registry folder

            async def served_by(version: str) -> bool:
                sig = (await http.get("/signals")).json()["signals"]
                return all(s["model"]["version"] == version for s in sig)

            await until(lambda: served_by("1.0.1-copy"), 30, "signals of the promoted model")

            # rollback: the original champion serves again
            r = await http.post("/admin/rollback")
            assert r.status_code == 200, r.text
            assert r.json()["champion"]["version"] == "1.0.0"
            await until(lambda: served_by("1.0.0"), 30, "signals of the restored model")
            svc.stop()

    roles = json.loads((state / "models.json").read_text())
    assert roles["champion"]["version"] == "1.0.0"
    assert roles["previous"]["version"] == "1.0.1-copy"
    outcomes = [r[0] for r in _rows(db, "SELECT outcome FROM model_decisions ORDER BY id")]
    assert outcomes.count("refused") == 2
    assert outcomes[-2:] == ["promoted", "rolled_back"]
