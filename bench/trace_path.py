"""Where a live candle's frame → signal time goes: per-candle thread accounting in the service.

``python -m bench.trace_path [--duration S] [--speed X] [--symbols A,B,C]`` runs the replay
exchange and the real service under ``make demo``'s conditions (three symbols at 300×, the
replay on its own CPU), the service started through this module's ``serve`` entry point,
which patches two points in memory before ``service.__main__.main`` runs:

* ``StampedConnection.data_received`` (the socket read that stamps a frame, A) and
* ``SignalStore.put`` (the signal stored, S: where ``apprentice_signal_latency_seconds`` ends),

and at each reads ``/proc/thread-self/../<tid>/schedstat`` of every thread of the process
(on-CPU ns, run-queue wait ns; ~0.5 µs a file). Between A and S, the candle thread's own
time then splits into on-CPU, waiting on the run queue (runnable, no CPU: the scheduler)
and blocked (neither: in this path only the GIL, held by another thread), and the other
threads' on-CPU in the same window names who held the GIL. ``Pipeline.process``'s entry
time splits the candle thread's time into the frame's parse + feed (A → entry) and the
pipeline (entry → S). The service's files are untouched; the trace is written at exit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TRACE_ENV = "APPRENTICE_BENCH_TRACE"
RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", 1)  # Linux
# (perf_counter_ns, this thread's CPU ns, its (minor faults, voluntary, involuntary switches),
#  tid -> (cpu ns, run-queue wait ns))
Snap = tuple[int, int, tuple[int, int, int], dict[int, tuple[int, int]]]


class _Threads:
    """schedstat of every thread of this process, read through descriptors kept open."""

    def __init__(self) -> None:
        self.fds: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self._count = -1

    def _refresh(self) -> None:
        live = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        for tid in os.listdir("/proc/self/task"):
            n = int(tid)
            if n not in self.fds:
                try:
                    self.fds[n] = os.open(f"/proc/self/task/{n}/schedstat", os.O_RDONLY)
                except OSError:
                    continue
            self.names[n] = live.get(n, self.names.get(n, f"native-{n}"))
        self._count = threading.active_count()

    def snap(self) -> Snap:
        if threading.active_count() != self._count:
            self._refresh()
        now = time.perf_counter_ns()
        out: dict[int, tuple[int, int]] = {}
        for tid, fd in list(self.fds.items()):
            try:
                cpu, wait, _ = os.pread(fd, 128, 0).split()
            except (OSError, ValueError):
                continue
            out[tid] = (int(cpu), int(wait))
        ru = resource.getrusage(RUSAGE_THREAD)
        return now, time.thread_time_ns(), (ru.ru_minflt, ru.ru_nvcsw, ru.ru_nivcsw), out


def serve() -> int:
    """The service with the two trace points patched in (see the module docstring)."""
    from service.market import stamped_ws
    from service.pipeline import scoring as pipeline_mod
    from service.pipeline import signals

    out_path = Path(os.environ[TRACE_ENV])
    threads = _Threads()
    arrivals: dict[int, Snap] = {}
    order: deque[int] = deque()
    entries: dict[int, int] = {}
    records: list[dict[str, Any]] = []
    snap_cost: list[int] = []

    recv = stamped_ws.StampedConnection.data_received

    def data_received(self: Any, data: bytes) -> None:
        a = threads.snap()
        recv(self, data)
        arrivals[self._read_ns] = a
        order.append(self._read_ns)
        while len(order) > 4096:
            arrivals.pop(order.popleft(), None)

    process = pipeline_mod.Pipeline.process

    def traced_process(self: Any, event: Any) -> Any:
        entries[event.received_ns] = time.perf_counter_ns()
        return process(self, event)

    from service import features
    from service.model import predictor

    stage: dict[str, tuple[int, int]] = {}  # stage -> (wall ns, thread CPU ns), last call

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                stage[name] = (time.perf_counter_ns() - w0, time.thread_time_ns() - c0)

        return wrapper

    features.IncrementalFeatures.update = timed(  # type: ignore[method-assign]
        "features", features.IncrementalFeatures.update
    )
    predictor.Predictor.predict = timed("inference", predictor.Predictor.predict)  # type: ignore[method-assign]
    switch: list[float] = []
    put = signals.SignalStore.put

    def traced_put(self: Any, signal: Any) -> None:
        put(self, signal)
        if not signal.live:
            return
        t0 = time.perf_counter_ns()
        s = threads.snap()
        snap_cost.append(time.perf_counter_ns() - t0)
        a = arrivals.pop(signal.received_ns, None)
        if a is None:
            return
        switch[:] = [sys.getswitchinterval()]
        me = threading.get_native_id()
        others: dict[str, int] = {}
        for tid, (cpu, _) in s[3].items():
            if tid != me and tid in a[3]:
                name = threads.names.get(tid, str(tid))
                others[name] = others.get(name, 0) + cpu - a[3][tid][0]
        records.append(
            {
                "symbol": signal.symbol,
                "arrival_ns": a[0],
                "stages": dict(stage),
                "wall_ns": s[0] - a[0],
                "pre_ns": entries.pop(signal.received_ns, s[0]) - a[0],
                "features_us": signal.features_us,
                "inference_us": signal.inference_us,
                "cpu_ns": s[1] - a[1],  # thread_time: exact (schedstat lags by up to a tick)
                "runq_ns": s[3][me][1] - a[3][me][1],
                "minflt": s[2][0] - a[2][0],
                "nvcsw": s[2][1] - a[2][1],
                "nivcsw": s[2][2] - a[2][2],
                "others_cpu_ns": others,
            }
        )

    stamped_ws.StampedConnection.data_received = data_received  # type: ignore[method-assign]
    pipeline_mod.Pipeline.process = traced_process  # type: ignore[method-assign]
    signals.SignalStore.put = traced_put  # type: ignore[method-assign]
    from service.__main__ import main as service_main

    try:
        return service_main([])
    finally:
        out_path.write_text(
            json.dumps(
                {
                    "switch_interval_s": switch[0] if switch else None,
                    "snap_ns": snap_cost,
                    "records": records,
                }
            )
        )


def _pct(xs: Sequence[float], q: float) -> float:
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def summarise(trace: dict[str, Any]) -> dict[str, Any]:
    """Per-candle split of frame read → signal stored, over all candles and the slowest 10 %.

    ``blocked`` = wall − candle thread on-CPU − its run-queue wait: time the thread neither
    ran nor waited for a CPU, i.e. waited for the GIL. Every figure in µs.
    """
    recs = sorted(trace["records"], key=lambda r: r["arrival_ns"])
    first = -(10**18)
    position = 0
    for r in recs:  # a burst: the frames that arrive within 100 ms of its first one
        if r["arrival_ns"] - first > 100_000_000:
            first, position = r["arrival_ns"], 0
        position += 1
        r["position"] = position  # 1: the first candle of its burst

    def split(rs: list[dict[str, Any]]) -> dict[str, float]:
        n = max(1, len(rs))
        out = {
            "wall": sum(r["wall_ns"] for r in rs) / n / 1e3,
            "on_cpu": sum(r["cpu_ns"] for r in rs) / n / 1e3,
            "run_queue": sum(r["runq_ns"] for r in rs) / n / 1e3,
            "blocked": sum(r["wall_ns"] - r["cpu_ns"] - r["runq_ns"] for r in rs) / n / 1e3,
            "pre": sum(r["pre_ns"] for r in rs) / n / 1e3,
            "minor_faults": sum(r["minflt"] for r in rs) / n,
            "voluntary_switches": sum(r["nvcsw"] for r in rs) / n,
            "involuntary_switches": sum(r["nivcsw"] for r in rs) / n,
            "features": sum(r["features_us"] for r in rs) / n,
            "features_cpu": sum(r["stages"]["features"][1] for r in rs) / n / 1e3,
            "inference": sum(r["inference_us"] for r in rs) / n,
            "inference_cpu": sum(r["stages"]["inference"][1] for r in rs) / n / 1e3,
        }
        names: dict[str, float] = {}
        for r in rs:
            for k, v in r["others_cpu_ns"].items():
                names[k] = names.get(k, 0.0) + v / n / 1e3
        out["others"] = dict(sorted(names.items(), key=lambda kv: -kv[1]))  # type: ignore[assignment]
        return out

    walls = [r["wall_ns"] / 1e3 for r in recs]
    cut = _pct(walls, 90)
    slow = [r for r in recs if r["wall_ns"] / 1e3 >= cut]
    return {
        "count": len(recs),
        "switch_interval_s": trace["switch_interval_s"],
        "snap_us_p50": _pct([x / 1e3 for x in trace["snap_ns"]], 50),
        "wall_us": {q: _pct(walls, q) for q in (50, 90, 99)},
        "all": split(recs),
        "slowest_10pct": split(slow),
        "by_position": {
            p: {
                "count": len(rs),
                "wall_p50": _pct([r["wall_ns"] / 1e3 for r in rs], 50),
                "wall_p99": _pct([r["wall_ns"] / 1e3 for r in rs], 99),
                "split": split(rs),
            }
            for p in sorted({r["position"] for r in recs})
            for rs in [[r for r in recs if r["position"] == p]]
        },
    }


def run_trace(duration_s: float, speed: float, symbols: tuple[str, ...]) -> dict[str, Any]:
    """Replay + traced service for ``duration_s``; the summary of its trace."""
    from bench import models, stack

    tmp = Path(tempfile.mkdtemp(prefix="bench-trace-"))
    student = models.load_student(tmp)
    trace_file = tmp / "trace.json"
    with stack.running(
        tmp,
        student.path,
        speed=speed,
        symbols=symbols,
        argv=("-m", "bench.trace_path", "--serve"),
        env={TRACE_ENV: str(trace_file)},
    ):
        time.sleep(duration_s)
    return summarise(json.loads(trace_file.read_text()))


def main(argv: Sequence[str] | None = None) -> int:
    """Run a trace and print its summary as JSON (or serve, as the traced service)."""
    p = argparse.ArgumentParser(prog="python -m bench.trace_path", description=__doc__)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--speed", type=float, default=300.0)
    p.add_argument("--symbols", default="BTCUSDT,ETHUSDT,SOLUSDT")
    args = p.parse_args(argv)
    if args.serve:
        return serve()
    summary = run_trace(args.duration, args.speed, tuple(args.symbols.split(",")))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
