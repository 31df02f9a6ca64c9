"""The champion/challenger routes in process: the token, bad input (4xx, never 500), the
409s that say why, APPRENTICE_AUTO_PROMOTE deciding by itself, and a reload that is recorded
as the champion a restart serves."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from service.http.app import create_app, runtime_of
from service.market.klines import KlineTable
from service.runtime import Runtime

N_BACKFILL = 100
TOKEN = "model-routes-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _settle(rt: Runtime, bars: int = 0) -> None:
    deadline = time.monotonic() + 30
    while sum(st.bars for st in rt.pipeline.states.values()) < bars:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.02)  # the monitor's and the shadow's drains run on the loop
    await rt.monitor.flush()


@contextmanager
def _service(
    make_settings: Callable[..., Any],
    feed_factory_maker: Callable[..., Any],
    make_events: Callable[..., Any],
    btc_5m: KlineTable,
    **overrides: Any,
) -> Iterator[tuple[TestClient, Runtime, Callable[[int, int], None]]]:
    settings = make_settings(admin_token=TOKEN, **overrides)
    factory, built = feed_factory_maker({"BTCUSDT": btc_5m}, N_BACKFILL)
    app = create_app(settings, feed_factory=factory)
    with TestClient(app) as client:
        rt = runtime_of(app)
        client.portal.call(_settle, rt, N_BACKFILL)  # type: ignore[union-attr]

        def push(lo: int, hi: int) -> None:
            events = make_events(btc_5m, lo, hi, source="ws")
            client.portal.call(built[0].push, events)  # type: ignore[union-attr]
            client.portal.call(_settle, rt)  # type: ignore[union-attr]

        yield client, rt, push


def test_auth_bad_input_and_conflicts(
    tmp_path: Path,
    btc_5m: KlineTable,
    model_writer: Callable[..., Any],
    make_settings: Callable[..., Any],
    feed_factory_maker: Callable[..., Any],
    make_events: Callable[..., Any],
) -> None:
    with _service(make_settings, feed_factory_maker, make_events, btc_5m) as (client, rt, _):
        assert client.post("/admin/promote").status_code == 401  # the token first
        assert client.delete("/admin/challenger").status_code == 401
        r = client.post("/admin/promote", headers=AUTH)
        assert r.status_code == 409 and "no challenger" in r.json()["detail"]
        assert client.post("/admin/rollback", headers=AUTH).status_code == 409
        assert client.delete("/admin/challenger", headers=AUTH).status_code == 409
        for body in ({"path": "x.txt"}, {"path": 3}, {"nope": 1}, {"path": "/a.onnx", "x": 1}):
            assert client.post("/admin/challenger", json=body, headers=AUTH).status_code == 422
        r = client.post("/admin/challenger", json={"path": "/nonexistent.onnx"}, headers=AUTH)
        assert r.status_code == 422 and "rejected" in r.json()["detail"]
        other = model_writer(tmp_path / "x", name="bad", version="1", spec_hash="0" * 64)
        r = client.post("/admin/challenger", json={"path": str(other.onnx_path)}, headers=AUTH)
        assert r.status_code == 422 and "feature-spec" in r.json()["detail"]
        assert rt.roles.roles.challenger is None and rt.roles.shadow.challenger is None
        block = client.get("/model/health").json()["challenger"]
        assert block["challenger"] is None and block["promote_now"] is None
        assert block["champion"]["version"] == "0.0.1"


def test_auto_promotion_and_a_recorded_reload(
    tmp_path: Path,
    btc_5m: KlineTable,
    model_writer: Callable[..., Any],
    make_settings: Callable[..., Any],
    feed_factory_maker: Callable[..., Any],
    make_events: Callable[..., Any],
) -> None:
    same = model_writer(tmp_path / "in", name="student_fixture", version="0.0.2")  # seed 0
    state = tmp_path / "state"
    with _service(
        make_settings,
        feed_factory_maker,
        make_events,
        btc_5m,
        auto_promote=True,
        promote_min_scored=10,
    ) as (client, rt, push):
        r = client.post("/admin/challenger", json={"path": str(same.onnx_path)}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert Path(r.json()["challenger"]["path"]).parent == rt.settings.registry_dir.resolve()
        push(N_BACKFILL, N_BACKFILL + 5)
        assert rt.slot.current is not None and rt.slot.current.card.version == "0.0.1"
        push(N_BACKFILL + 5, N_BACKFILL + 14)  # 12 paired candles: the rule applies itself
        assert rt.slot.current.card.version == "0.0.2"
        block = client.get("/model/health").json()["challenger"]
        assert block["challenger"] is None and block["previous"]["version"] == "0.0.1"
        assert block["decisions"][0]["action"] == "auto_promote"
        assert block["decisions"][0]["outcome"] == "promoted"
        # a reload serves the configured model again and is recorded as the champion
        assert client.post("/admin/reload", headers=AUTH).status_code == 200
    roles = json.loads((state / "models.json").read_text())
    assert roles["champion"]["version"] == "0.0.1" and roles["previous"]["version"] == "0.0.2"
