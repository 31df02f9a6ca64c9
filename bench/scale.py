"""Section "scale": the whole market on one machine, measured from outside (DESIGN section 13).

For each N (1, 50, 200, 500, 1000; ``--quick``: 1 and 50) the many-symbol mock exchange
(:mod:`bench.many_symbols`, its own process) serves N symbols whose candles all close at
once, one every :data:`PERIOD_S` real seconds, and the real service (``python -m service``,
paper trading on, the committed student) subscribes to all of them. Pinned like ``make
demo``: the exchange and this driver on one CPU, the service on the other. Measured:

* warm-up: service process start → ``GET /ready`` answers 200 (REST backfill of 300 bars per
  symbol, every symbol warm);
* latency, per burst: the exchange's clock just after it wrote the burst's last confirm →
  this driver has read every symbol's signal of that candle over HTTP. It polls the cheap
  ``GET /signal/{last symbol sent}`` until that candle shows, then checks every symbol with
  one ``GET /signals`` (repeating until all show); the figure is the time the poll that saw
  the candle returned (an upper bound, by about one poll's duration);
* CPU per burst and per symbol-candle: the service's utime + stime (``/proc``) over
  :data:`CPU_BURSTS` candle periods with no HTTP traffic, divided by bursts (and by N);
  it holds everything the service does per candle: reading N confirms and N interim
  pushes, features, the batched inference, paper trading, the monitor and its journal;
* RSS at the end, and the scrape: wall time of ``GET /metrics`` and the service's CPU per
  scrape;
* what must not happen: ERROR lines in its log, websocket reconnects, signals the paper
  trader dropped, klines refused; and the service's own view: rows per batched call and
  its burst-complete histogram (last confirm read → last signal stored).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from bench.many_symbols import symbol_names
from bench.market_point import CPU_BURSTS, LAT_BURSTS, PERIOD_S, ScalePoint, measure
from bench.outside import top_frames
from bench.report import Section, Target

NS_FULL = (1, 50, 200, 500, 1000)
NS_QUICK = (1, 50)


def scrape_micro(n: int, ceiling: int, scrapes: int = 20) -> tuple[float, int]:
    """(ms per ``generate_latest``, samples) of a registry labelled as a service of ``n``
    symbols labels it: the pipeline's and monitor's own series under the metrics' ceiling,
    the feed's and paper trader's per-symbol series as they are (one each per symbol),
    every counter and gauge touched once. In-process, side by side: the ceiling's effect."""
    import tempfile as _tempfile

    from prometheus_client import CollectorRegistry, generate_latest

    from service.metrics import Metrics
    from service.model.card import HEADS
    from service.monitor.model_monitor import ModelMonitor
    from service.pipeline.scoring import SymbolState

    m = Metrics(CollectorRegistry(), symbol_series_max=ceiling)
    names = symbol_names(n)
    with _tempfile.TemporaryDirectory() as d:
        mon = ModelMonitor(symbols=names, interval="5", state_dir=Path(d), metrics=m)
        states = [SymbolState(s, m) for s in names]
        for st in states:
            st.signals_up.inc()
            for g in (st.prob_up, st.direction, st.prob_high_vol):
                if g is not None:
                    g.set(0.5)
        for _s, _h, loss, acc in mon._m_live:
            loss.set(0.69)
            acc.set(0.5)
        for child in mon._m_scored.values():
            child.inc()
        for s in names:  # the feed's and the paper trader's, unchanged by this ceiling
            m.klines.labels(symbol=s, confirmed="true").inc()
            m.klines.labels(symbol=s, confirmed="false").inc()
            m.backfilled_klines.labels(symbol=s).inc()
            m.last_kline_age_seconds.labels(symbol=s).set(1.0)
            m.paper_position.labels(symbol=s).set(0.0)
            m.paper_trades.labels(symbol=s, side="buy").inc()
        assert HEADS
        generate_latest(m.registry)
        t0 = time.perf_counter()
        for _ in range(scrapes):
            text = generate_latest(m.registry)
        ms = (time.perf_counter() - t0) * 1000.0 / scrapes
    return ms, sum(1 for ln in text.decode().splitlines() if ln and not ln.startswith("#"))


def run(quick: bool = False, ns: Sequence[int] | None = None) -> Section:
    """The section (``make bench``)."""
    ns = tuple(ns or (NS_QUICK if quick else NS_FULL))
    sec = Section("Scale: the whole market on one machine")
    points = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as d:
        for n in ns:
            print(f"[bench] scale N={n} ...", flush=True)
            points.append(
                measure(
                    n,
                    Path(d),
                    lat_bursts=3 if quick else LAT_BURSTS,
                    cpu_bursts=3 if quick else CPU_BURSTS,
                    profile_s=0.0 if quick or n != 500 else 10.0,
                )
            )
            print(json.dumps({**asdict(points[-1]), "profile": ""}), flush=True)
        if not quick and 500 in ns:  # where the service stands without the paper trader
            print("[bench] scale N=500, paper trading off ...", flush=True)
            points.append(
                measure(
                    500,
                    Path(d),
                    lat_bursts=LAT_BURSTS,
                    cpu_bursts=CPU_BURSTS,
                    paper=False,
                    profile_s=10.0,
                )
            )
            print(json.dumps({**asdict(points[-1]), "profile": ""}), flush=True)
        if not quick and 500 in ns:  # past one machine: the same market on two replicas
            print("[bench] scale N=500 on two symbol-sharded replicas ...", flush=True)
            points.append(measure(500, Path(d), shards=2))
            print(json.dumps({**asdict(points[-1]), "profile": ""}), flush=True)
        profile_lines = _profile_lines(points)
    micro = [(n, c, *scrape_micro(n, c)) for n in (50, 500) for c in (10**6, 64)]
    _write(sec, points, profile_lines)
    sec.add(
        "`/metrics` serialisation in-process (`scrape_micro`: a registry labelled as a service "
        "of N symbols labels it), without and with the per-symbol ceiling of "
        "`service/metrics.py` on the pipeline's and monitor's series:",
        "",
    )
    sec.table(
        ("N", "per-symbol ceiling", "ms per scrape", "samples"),
        [(n, "none" if c >= 10**6 else str(c), ms, k) for n, c, ms, k in micro],
    )
    return sec


def _profile_lines(points: Sequence[ScalePoint]) -> list[str]:
    out = []
    for p in points:
        if p.profile and Path(p.profile).exists():
            paper = "paper trading on" if p.paper else "paper trading off"
            out.append(
                f"py-spy at N = {p.n} ({paper}), 10 s of steady bursts, samples by the "
                "service package of the innermost service frame:"
            )
            out += [f"- {share:.0%} `{name}`" for name, share in top_frames(Path(p.profile))]
            out.append("")
    return out


def _label(p: ScalePoint) -> str:
    parts = [str(p.n)]
    if not p.paper:
        parts.append("paper off")
    if p.shards > 1:
        parts.append(f"{p.shards} replicas")
    return ", ".join(parts)


def _write(sec: Section, points: Sequence[ScalePoint], profile_lines: Sequence[str]) -> None:
    sec.add(
        f"N synthetic symbols from real bundled klines, every candle of every symbol closing "
        f"at once, one candle every {PERIOD_S} s of real time, one interim push and one "
        "confirm per symbol and candle, paper trading on; measured from outside "
        "(`bench/scale.py`, `bench/many_symbols.py`; module docstrings say how).",
        "",
    )
    rows = []
    for p in points:
        rows.append(
            [
                _label(p),
                f"{p.warmup_s:.1f} s",
                f"{p.lat(50):.0f} / {p.lat(99):.0f} / {p.lat(100):.0f} ms"
                + (f", {p.incomplete} incomplete" if p.incomplete else ""),
                f"{p.cpu_burst_ms:.0f} ms",
                f"{p.cpu_per_symbol_us:.0f} µs",
                f"{p.rss_mib:.0f} MiB",
                f"{p.scrape_ms:.1f} ms / {p.scrape_cpu_ms:.1f} ms ({p.scrape_bytes // 1024} KiB)",
                f"{p.rows_per_batch:.0f}",
                f"{p.burst_complete_p99_ms:.1f} ms",
                f"{p.spread_p50_ms:.1f} / {p.spread_p99_ms:.1f} ms, {p.window_share:.0%}",
                f"{p.errors} / {p.reconnects:.0f} / {p.dropped:.0f} / {p.rejected:.0f}",
            ]
        )
    sec.table(
        (
            "N",
            "warm-up",
            "last confirm → every signal visible (p50 / p99 / max)",
            "CPU per burst",
            "CPU per symbol-candle",
            "RSS",
            "`/metrics` scrape: wall / service CPU (size)",
            "rows per ONNX call",
            "burst complete p99 (service's histogram)",
            "confirm spread p50 / p99, bursts scored by the 25 ms window",
            "errors / reconnects / dropped / refused",
        ),
        rows,
    )
    refused = [
        f"{_label(p)}: " + ", ".join(f"{r} {n:.0f}" for r, n in sorted(p.rejected_by.items()))
        for p in points
        if p.rejected_by
    ]
    if refused:
        sec.add(
            "Refused klines by reason (`apprentice_klines_rejected_total`): "
            + "; ".join(refused)
            + ".",
            "",
        )
    by_n = {p.n: p for p in points if p.paper and p.shards == 1}
    one, big = by_n.get(1), by_n.get(500) or (points[-1] if points else None)
    if one is not None and big is not None and big.n != 1:
        ratio = big.cpu_per_symbol_us / one.cpu_per_symbol_us
        sec.add(
            f"Per-symbol cost at N = {big.n} over N = 1: {ratio:.2f}× "
            f"({big.cpu_per_symbol_us:.0f} µs against {one.cpu_per_symbol_us:.0f} µs per "
            "symbol-candle, measured in this run).",
            "",
        )
    big_scrape = max(points, key=lambda p: p.n, default=None)
    if big_scrape is not None and big_scrape.families:
        fams = ", ".join(f"`{name}` {count}" for name, count in big_scrape.families)
        sec.add(f"Samples per metric family in one scrape at N = {big_scrape.n}: {fams}.", "")
    sec.add(*profile_lines)
    p500 = by_n.get(500)
    if p500 is not None:
        sec.targets += [
            Target(
                "scale: N=500 last confirm → every signal visible, p99",
                "≤ 100 ms",
                f"{p500.lat(99):.0f} ms",
                p500.lat(99) <= 100.0 and not p500.incomplete,
            ),
            Target(
                "scale: N=500 CPU per symbol-candle",
                "< 200 µs",
                f"{p500.cpu_per_symbol_us:.0f} µs",
                p500.cpu_per_symbol_us < 200.0,
                "includes reading the confirm and an interim push, paper trading, monitor",
            ),
            Target("scale: N=500 warm-up", "< 30 s", f"{p500.warmup_s:.1f} s", p500.warmup_s < 30),
            Target(
                "scale: N=500 nothing dropped, logged as error or reconnected",
                "0 / 0 / 0",
                f"{p500.errors} / {p500.dropped:.0f} / {p500.reconnects:.0f}",
                p500.errors == 0 and p500.dropped == 0 and p500.reconnects == 0,
            ),
        ]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.scale --n 500``: one or more points, printed as JSON."""
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    p.add_argument("--n", type=int, action="append", help="symbols (repeatable)")
    p.add_argument("--period-s", type=float, default=PERIOD_S)
    p.add_argument("--bursts", type=int, default=LAT_BURSTS)
    p.add_argument("--profile-s", type=float, default=0.0, help="py-spy seconds (if installed)")
    p.add_argument("--keep", type=Path, default=None, help="keep logs and profiles here")
    p.add_argument("--shards", type=int, default=1, help="symbol-sharded replicas")
    p.add_argument("--no-paper", action="store_true", help="paper trading off")
    args = p.parse_args(argv)
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    for n in args.n or [50]:
        point = measure(
            n,
            tmp,
            period_s=args.period_s,
            lat_bursts=args.bursts,
            cpu_bursts=args.bursts,
            profile_s=args.profile_s,
            paper=not args.no_paper,
            shards=args.shards,
        )
        print(json.dumps(asdict(point)), flush=True)
        if point.profile:
            for name, share in top_frames(Path(point.profile)):
                print(f"  {share:6.1%} {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
