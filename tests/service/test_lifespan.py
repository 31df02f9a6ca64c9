"""Lifespan: start loads and connects, stop cancels and awaits everything, nothing leaks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
from prometheus_client import CollectorRegistry

from service.http.app import create_app, runtime_of
from service.market.klines import KlineTable
from service.model.card import ModelCardError


async def test_lifespan_starts_and_leaves_no_pending_task(
    make_settings: Callable[..., Any], btc_5m: KlineTable, feed_factory_maker: Callable[..., Any]
) -> None:
    settings = make_settings()
    factory, built = feed_factory_maker({"BTCUSDT": btc_5m}, 120)
    app = create_app(settings, feed_factory=factory, registry=CollectorRegistry())
    rt = runtime_of(app)
    before = asyncio.all_tasks()
    async with app.router.lifespan_context(app):
        assert set(rt.tasks) == {"feed", "pipeline", "paper", "signal-journal"}
        assert rt.slot.current is not None
        for _ in range(2000):
            if rt.store.latest("BTCUSDT") is not None and rt.trader and rt.trader.queue.empty():
                break
            await asyncio.sleep(0.001)
        assert rt.store.latest("BTCUSDT") is not None
        assert not any(t.done() for t in rt.tasks.values())
    assert all(t.cancelled() for t in rt.tasks.values())
    assert built[0].cancelled  # the feed saw CancelledError (and re-raised it)
    assert asyncio.all_tasks() == before  # nothing left running
    assert (settings.state_dir / "paper.sqlite3").exists()


async def test_a_dead_task_fails_health(
    make_settings: Callable[..., Any], btc_5m: KlineTable
) -> None:
    class Broken:
        connected = True

        async def run(self) -> None:
            raise RuntimeError("exchange said no")

    app = create_app(make_settings(), feed_factory=lambda *a: Broken())
    rt = runtime_of(app)
    async with app.router.lifespan_context(app):
        await asyncio.sleep(0.01)
        problems = rt.task_problems()
        assert problems and "exchange said no" in problems[0]
        assert any("feed task stopped" in r for r in rt.readiness())


def test_create_app_does_no_io(tmp_path: Path, make_settings: Callable[..., Any]) -> None:
    state = tmp_path / "not-yet"
    create_app(make_settings(state_dir=state, model=tmp_path / "absent.onnx"))
    assert not state.exists()  # nothing opened until the lifespan runs


async def test_startup_refuses_a_model_that_disagrees_with_its_card(
    make_settings: Callable[..., Any],
    fixture_model: Any,
    btc_5m: KlineTable,
    feed_factory_maker: Callable[..., Any],
) -> None:
    m = onnx.load(str(fixture_model.onnx_path))
    m.doc_string = "edited after export"
    onnx.save(m, str(fixture_model.onnx_path))
    factory, built = feed_factory_maker({"BTCUSDT": btc_5m}, 0)
    app = create_app(make_settings(), feed_factory=factory)
    with pytest.raises(ModelCardError, match="sha256"):
        async with app.router.lifespan_context(app):
            pass
    assert built == []  # the feed never started


async def test_the_same_app_can_start_again_after_stopping(
    make_settings: Callable[..., Any], btc_5m: KlineTable, feed_factory_maker: Callable[..., Any]
) -> None:
    factory, built = feed_factory_maker({"BTCUSDT": btc_5m}, 0)
    app = create_app(make_settings(), feed_factory=factory, registry=CollectorRegistry())
    rt = runtime_of(app)
    for _ in range(2):
        async with app.router.lifespan_context(app):
            assert rt.trader is not None and rt.trader.account.terms.epoch == 1
            await asyncio.sleep(0.01)  # let the tasks start
        assert all(t.cancelled() for t in rt.tasks.values())
    assert len(built) == 2 and all(f.cancelled for f in built)
