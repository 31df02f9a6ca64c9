"""The candle thread: its lifecycle, and closed candles not waiting behind heavy HTTP reads.

The isolation test runs the real stack on loopback (``python -m service.replay`` and
``python -m service`` as subprocesses, through ``bench.stack``) with a large paper journal,
loads it with real HTTP clients reading ``/paper/trades?limit=10000``, and times each
confirm frame to its signal served by ``GET /signal`` from a second websocket client on the
replay (``bench.probe``). On one shared event loop those reads delayed candles by tens to
hundreds of ms (p90 48-61 ms, max 297-527 ms in two runs on this 2-core VM; this test
failed there); with the candle thread p90 was 7.5 ms. The bound is generous for a loaded
VM and still fails the shared loop.
"""

from __future__ import annotations

import asyncio
import http.client
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import probe, stack
from service.pipeline.candle_loop import SWITCH_INTERVAL_S, CandleLoop

COMMITTED = Path(__file__).resolve().parents[3] / "models" / "student_pooled_5m.onnx"


async def test_tasks_run_on_their_own_thread_and_stop_in_order() -> None:
    loops = CandleLoop()
    was = sys.getswitchinterval()
    loops.start()
    assert loops.running and sys.getswitchinterval() == SWITCH_INTERVAL_S
    events: list[str] = []
    threads: dict[str, str] = {}

    async def worker(name: str) -> None:
        threads[name] = threading.current_thread().name
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)  # cleanup that takes a while is awaited
            events.append(name)
            raise

    a = await loops.spawn("a", worker("a"))
    b = await loops.spawn("b", worker("b"))
    await asyncio.sleep(0.05)
    assert threads == {"a": "candles", "b": "candles"}
    assert threading.current_thread().name != "candles"
    await loops.stop(order=("b", "a"))
    assert events == ["b", "a"] and a.cancelled() and b.cancelled()
    assert not loops.running and sys.getswitchinterval() == was
    await loops.stop()  # idempotent


async def test_a_failing_task_is_seen_from_the_callers_thread() -> None:
    loops = CandleLoop()
    loops.start()
    seen: list[BaseException | None] = []
    try:

        async def boom() -> None:
            raise RuntimeError("feed bug")

        task = await loops.spawn("feed", boom(), lambda t: seen.append(t.exception()))
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:  # callbacks run just after done
            await asyncio.sleep(0.01)
        assert task.done() and not task.cancelled()
        assert isinstance(task.exception(), RuntimeError) and isinstance(seen[0], RuntimeError)
        assert await loops.call(asyncio.sleep(0, "on the candle loop")) == "on the candle loop"
    finally:
        await loops.stop()


def _reader(port: int, stop: threading.Event, counts: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        while not stop.is_set():
            conn.request("GET", "/paper/trades?limit=10000")
            resp = conn.getresponse()
            body = resp.read()  # bytes only: parsing 2 MB here would hold this process's GIL
            assert resp.status == 200 and len(body) > 1_000_000
            counts.append(1)
    finally:
        conn.close()


def test_heavy_reads_do_not_delay_candles(tmp_path: Path) -> None:
    fills = 60_000
    model = COMMITTED if COMMITTED.exists() else None
    assert model is not None, "the committed student is part of the repository"
    with stack.running(
        tmp_path, model, speed=3000.0, prefill=lambda d: probe.fill_journal(d, fills)
    ) as st:
        stop, counts = threading.Event(), []
        readers = [
            threading.Thread(target=_reader, args=(st.service_port, stop, counts)) for _ in range(4)
        ]
        for t in readers:
            t.start()
        try:
            time.sleep(0.5)  # the reads are under way before the first candle is timed
            res = probe.served_latencies(
                st.ws_url, st.service_port, stack.SYMBOL, stack.INTERVAL, 6.0
            )
        finally:
            stop.set()
            for t in readers:
                t.join(60)
    served_ms: Any = np.asarray(res.served_ns) / 1e6
    assert len(served_ms) >= 20 and res.missed == 0
    assert len(counts) >= 8  # the heavy reads really ran beside the candles
    p90 = float(np.percentile(served_ms, 90))
    shown = [round(float(x), 1) for x in sorted(served_ms)]
    assert p90 < 30.0, f"frame -> served p90 {p90:.1f} ms under heavy reads (ms): {shown}"


async def test_handoff_delivers_a_burst_once_in_order_on_the_target_loop() -> None:
    from service.pipeline.candle_loop import Handoff

    here = asyncio.get_running_loop()
    got: list[tuple[int, str]] = []
    wakeups: list[int] = []

    def take(item: int) -> None:
        got.append((item, threading.current_thread().name))

    handoff: Handoff[int] = Handoff(here, take, delay_s=0.02)
    original = handoff._deliver

    def counted(batch: list[int]) -> None:
        wakeups.append(len(batch))
        original(batch)

    handoff._deliver = counted  # type: ignore[method-assign]
    loops = CandleLoop()
    loops.start()
    try:

        async def burst() -> None:
            for i in range(5):
                handoff(i)  # the pipeline's sink, called on the candle thread
                await asyncio.sleep(0.001)

        await loops.call(burst())
        assert handoff.pending == 5 and not got  # held for the rest of the burst
        deadline = time.monotonic() + 5
        while handoff.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        me = threading.current_thread().name
        assert got == [(i, me) for i in range(5)] and wakeups == [5]
    finally:
        await loops.stop()
    plain = threading.Thread(target=handoff, args=(9,))  # no running loop there: at once
    plain.start()
    plain.join()
    await asyncio.sleep(0.01)
    assert got[-1] == (9, threading.current_thread().name) and handoff.pending == 0


async def test_stop_gives_up_on_a_loop_that_never_answers() -> None:
    loops = CandleLoop()
    loops.start()
    release = threading.Event()

    async def stuck() -> None:
        release.wait(10)  # a blocking call on the candle loop (a bug): nothing else runs

    await loops.spawn("stuck", stuck())
    stopper = asyncio.ensure_future(loops.stop(timeout_s=0.2))
    deadline = time.monotonic() + 3.0
    while not stopper.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    gave_up = stopper.done()  # while the loop is still blocked
    release.set()  # let the thread end so the test leaves nothing behind
    await stopper
    assert gave_up and loops.loop is None
