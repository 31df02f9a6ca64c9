"""Section "shadow": what a challenger in shadow costs the candle path (issue 31).

In process, one symbol, the committed student as champion and a second copy of it as the
challenger (the same graph: the cost of a real refreshed student of the committed size).
``Pipeline.process`` is timed per candle, live events from the bundled BTCUSDT klines, with
the challenger switched on for every other candle (``ShadowScorer.score``: the challenger
on the (1, F, T) window through its bound single-row path, after the signal is stored), so
both populations see the same machine at the same time. The shadow's own drain (live
scores of both roles, the journal row) runs on the API's loop, not on the candle thread,
and is timed separately.
``python -m bench.shadow_cost`` prints the same figures.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from bench.report import Section, Target
from service.market.kline_io import load_bundled
from service.metrics import Metrics
from service.model.predictor import ModelSlot, Predictor
from service.monitor.model_monitor import ModelMonitor
from service.monitor.shadow import ShadowScorer
from service.pipeline.scoring import Pipeline
from service.pipeline.signals import SignalStore

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "models" / "student_pooled_5m.onnx"


def _q(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def measure(n: int = 4000) -> dict[str, list[float]]:
    """Per-candle µs of ``Pipeline.process``: {"champion": [...], "with_challenger": [...],
    "drain": [...]}."""
    from service.market.klines import KlineEvent

    tmp = Path(tempfile.mkdtemp())
    try:
        table = load_bundled("BTCUSDT", "5")
        metrics = Metrics(CollectorRegistry())
        mon = ModelMonitor(
            symbols=["BTCUSDT"], interval="5", state_dir=tmp / "state", metrics=metrics
        )
        await mon.start()
        writer = asyncio.create_task(mon.run())
        shadow = ShadowScorer(
            symbols=["BTCUSDT"],
            interval="5",
            metrics=metrics,
            journal=mon.journal,
            call=mon.call,
        )
        await shadow.start(None)
        pipe = Pipeline(
            symbols=["BTCUSDT"],
            interval="5",
            slot=ModelSlot(Predictor.load(COMMITTED)),
            store=SignalStore(["BTCUSDT"]),
            metrics=metrics,
            long_threshold=0.55,
            short_threshold=0.45,
            observer=shadow.tee(mon.offer_burst),
        )
        pipe.shadow = shadow.score
        challenger = Predictor.load(COMMITTED)

        def event(i: int, source: str) -> KlineEvent:
            k = table.row(i)
            return KlineEvent(
                k, exchange_ts=k.end + 1, received_ns=time.perf_counter_ns(), source=source
            )

        for i in range(400):
            pipe.process(event(i, "rest"))
        out: dict[str, list[float]] = {
            "champion": [],
            "with_challenger": [],
            "drain": [],
            "champion_inference": [],
        }
        store = pipe.store
        for j, i in enumerate(range(400, 400 + n)):
            on = j % 2 == 0
            shadow.challenger = challenger if on else None
            ev = event(i, "ws")
            t0 = time.perf_counter_ns()
            pipe.process(ev)
            t1 = time.perf_counter_ns()
            out["with_challenger" if on else "champion"].append((t1 - t0) / 1e3)
            if not on:
                sig = store.latest("BTCUSDT")
                assert sig is not None
                out["champion_inference"].append(sig.inference_us)
            await asyncio.sleep(0)  # the monitor's and the shadow's drains run on this pass
            if on:
                out["drain"].append((time.perf_counter_ns() - t1) / 1e3)
            await asyncio.sleep(0.0005)
        await mon.flush()
        await shadow.aclose()
        writer.cancel()
        await mon.aclose()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summary(out: dict[str, list[float]]) -> list[list[object]]:
    """Rows: population, n, p50, p90, p99 µs."""
    return [
        [name, len(xs), statistics.median(xs), _q(xs, 0.9), _q(xs, 0.99)]
        for name, xs in out.items()
    ]


def run(quick: bool = False) -> Section:
    """The section for ``python -m bench``."""
    out = asyncio.run(measure(400 if quick else 4000))
    sec = Section("Shadow scoring: the candle path with a challenger (issue 31)")
    sec.add((__doc__ or "").split("\n\n", 1)[1].replace("\n", " ").strip())
    labels = {
        "champion": "champion alone (Pipeline.process)",
        "with_challenger": "champion + challenger in shadow (Pipeline.process)",
        "drain": "next loop pass: monitor + shadow drain (API loop)",
        "champion_inference": "the champion's own inference (Signal.inference_us)",
    }
    rows = summary(out)
    sec.table(
        ["per candle", "n", "p50 µs", "p90 µs", "p99 µs"],
        [[labels[r[0]], *r[1:]] for r in rows],  # type: ignore[index]
    )
    alone = statistics.median(out["champion"])
    extra = statistics.median(out["with_challenger"]) - alone
    own = statistics.median(out["champion_inference"])
    sec.targets.append(
        Target(
            "shadow",
            "a challenger costs the candle path no more than the champion's own inference",
            f"+{extra:.1f} µs p50 (champion's inference p50 {own:.1f} µs, candle {alone:.1f} µs)",
            extra <= own,
        )
    )
    return sec


if __name__ == "__main__":
    for row in summary(asyncio.run(measure())):
        print(*row)
