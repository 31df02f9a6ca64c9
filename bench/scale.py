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
import importlib.util
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import procs
from bench.many_symbols import symbol_names
from bench.report import Section, Target
from bench.timing import histogram_quantile
from service.demo import cpu_plan
from service.demo import pin as pin_to

NS_FULL = (1, 50, 200, 500, 1000)
NS_QUICK = (1, 50)
PERIOD_S = 2.5  # real seconds per 5-minute candle (speed 120x)
LAT_BURSTS = 8
CPU_BURSTS = 6
MODEL = procs.ROOT / "models" / "student_pooled_5m.onnx"
SHARD_TOOL = procs.ROOT / "deploy" / "shard_symbols.py"
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class ScalePoint:
    """Everything measured at one N."""

    n: int
    warmup_s: float = math.nan
    latency_ms: list[float] = field(default_factory=list)  # per burst
    incomplete: int = 0  # bursts whose signals were not all visible within the deadline
    cpu_burst_ms: float = math.nan
    rss_mib: float = math.nan
    scrape_ms: float = math.nan
    scrape_cpu_ms: float = math.nan
    scrape_bytes: int = 0
    rows_per_batch: float = math.nan
    burst_complete_p99_ms: float = math.nan
    spread_p50_ms: float = math.nan  # first → last live confirm of a burst (service's view)
    spread_p99_ms: float = math.nan
    window_share: float = math.nan  # bursts scored by the collection window, not complete
    errors: int = 0
    reconnects: float = 0.0
    dropped: float = 0.0
    rejected: float = 0.0
    profile: str = ""
    paper: bool = True
    shards: int = 1
    families: list[tuple[str, int]] = field(default_factory=list)

    @property
    def cpu_per_symbol_us(self) -> float:
        """Service CPU per symbol-candle, µs."""
        return self.cpu_burst_ms * 1000.0 / self.n

    def lat(self, q: float) -> float:
        """Percentile ``q`` of the per-burst latency (ms); max for q = 100."""
        if not self.latency_ms:
            return math.nan
        xs = sorted(self.latency_ms)
        return xs[min(len(xs) - 1, math.ceil(q / 100.0 * len(xs)) - 1)]


class BurstLog:
    """Tails the exchange's JSON lines of close times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0

    def skip(self) -> None:
        """Forget every line written so far."""
        self._pos = self.path.stat().st_size if self.path.exists() else 0

    def next(self, timeout_s: float) -> dict[str, float]:
        """The next close's line (waits for it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.path.exists():
                with open(self.path) as fh:
                    fh.seek(self._pos)
                    line = fh.readline()
                    if line.endswith("\n"):
                        self._pos = fh.tell()
                        out: dict[str, float] = json.loads(line)
                        return out
            time.sleep(0.002)
        raise TimeoutError(f"no close from the exchange within {timeout_s:.0f}s")


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid``, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return math.nan


def _signal_start(port: int, symbol: str) -> int | None:
    status, body = procs.http_get(port, f"/signal/{symbol}", timeout=10.0)
    return int(json.loads(body)["candle_start"]) if status == 200 else None


def _all_at(port: int, candle: int, n: int) -> bool:
    status, body = procs.http_get(port, "/signals", timeout=30.0)
    if status != 200:
        return False
    signals = json.loads(body)["signals"]
    return len(signals) == n and all(int(s["candle_start"]) >= candle for s in signals)


def _visible(port: int, candle: int, last_symbol: str, n: int, deadline: float) -> float | None:
    """perf_counter() when every symbol's signal of ``candle`` was seen, or None."""
    while time.perf_counter() < deadline:
        start = _signal_start(port, last_symbol)
        seen = time.perf_counter()
        if start is not None and start >= candle:
            while time.perf_counter() < deadline:
                if _all_at(port, candle, n):
                    return seen
                time.sleep(0.005)
                seen = time.perf_counter()
            return None
        time.sleep(0.0005)
    return None


def _metrics(port: int) -> str:
    return procs.http_get(port, "/metrics", timeout=30.0)[1].decode()


def _sample(text: str, name: str, label: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (not label or label in line) and not line.startswith("#"):
            head, value = line.rsplit(" ", 1)
            if head == name or head.startswith(name + "{"):
                total += float(value)
    return total


def _buckets(text: str, name: str) -> list[tuple[float, float]]:
    out = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((math.inf if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return sorted(out)


def shard_lists(names: Sequence[str], shards: int) -> list[list[str]]:
    """``names`` split as ``deploy/shard_symbols.py`` splits them (that file, loaded)."""
    if shards == 1:
        return [list(names)]
    spec = importlib.util.spec_from_file_location("shard_symbols", SHARD_TOOL)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {SHARD_TOOL}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    parts: list[list[str]] = mod.split(names, shards)
    return parts


def measure(
    n: int,
    tmp: Path,
    *,
    period_s: float = PERIOD_S,
    lat_bursts: int = LAT_BURSTS,
    cpu_bursts: int = CPU_BURSTS,
    profile_s: float = 0.0,
    paper: bool = True,
    shards: int = 1,
) -> ScalePoint:
    """Run the exchange and the service at ``n`` symbols and measure them (module docstring);
    ``shards`` > 1: that many replicas, the symbols split between them, measured together
    (a burst is visible when every replica shows it; CPU and RSS are their sums)."""
    point = ScalePoint(n, paper=paper, shards=shards)
    names = symbol_names(n)
    parts = shard_lists(names, shards)
    xport = procs.free_port()
    ports = [procs.free_port() for _ in parts]
    tag = f"{n}-{shards}" + ("" if paper else "-nopaper")
    log = tmp / f"bursts-{tag}.jsonl"
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    plan = cpu_plan(mine) if mine else None
    exchange = procs.Proc(
        procs.python(
            "-m", "bench.many_symbols", "--symbols", str(n), "--period-s", str(period_s),
            "--port", str(xport), "--log", str(log),
        ),
        tmp / f"exchange-{tag}.log",
    )  # fmt: skip
    services: list[procs.Proc] = []
    try:
        if plan:
            pin_to(exchange.popen.pid, plan[1])
            pin_to(0, plan[1])
        procs.wait_port(xport, exchange, timeout=120.0)
        t0 = time.monotonic()
        for i, (part, port) in enumerate(zip(parts, ports, strict=True)):
            env = {
                "APPRENTICE_SYMBOLS": ",".join(part),
                "APPRENTICE_INTERVAL": "5",
                "APPRENTICE_WS_URL": f"ws://127.0.0.1:{xport}/v5/public/linear",
                "APPRENTICE_REST_URL": f"http://127.0.0.1:{xport}",
                "APPRENTICE_MODEL": str(MODEL),
                "APPRENTICE_STATE_DIR": str(tmp / f"state-{tag}-{i}"),
                "APPRENTICE_HOST": "127.0.0.1",
                "APPRENTICE_PORT": str(port),
                "APPRENTICE_LOG_LEVEL": "warning",
                "APPRENTICE_PAPER_ENABLED": "true" if paper else "false",
            }
            svc = procs.Proc(procs.python("-m", "service"), tmp / f"service-{tag}-{i}.log", env)
            services.append(svc)
            if plan:
                pin_to(svc.popen.pid, plan[0])
        for svc, port in zip(services, ports, strict=True):
            procs.wait_http(port, "/ready", svc, timeout=300.0)
        point.warmup_s = time.monotonic() - t0
        pids = [svc.popen.pid for svc in services]
        bursts = BurstLog(log)
        bursts.skip()
        bursts.next(3 * period_s)  # one whole period after ready before measuring
        before = [_metrics(port) for port in ports]  # histograms: the steady state only
        for _ in range(lat_bursts):
            line = bursts.next(3 * period_s + 30)
            deadline = line["last"] + 10.0
            seen = [
                _visible(port, int(line["candle"]), part[-1], len(part), deadline)
                for part, port in zip(parts, ports, strict=True)
            ]
            if any(x is None for x in seen):
                point.incomplete += 1
            else:
                point.latency_ms.append((max(x for x in seen if x) - line["last"]) * 1000.0)
        bursts.next(3 * period_s + 30)
        c0 = sum(cpu_s(pid) for pid in pids)
        prof = _profile(pids[0], profile_s, tmp / f"profile-{tag}.txt") if profile_s else None
        for _ in range(cpu_bursts):
            bursts.next(3 * period_s + 30)
        point.cpu_burst_ms = (sum(cpu_s(pid) for pid in pids) - c0) * 1000.0 / cpu_bursts
        if prof is not None:
            prof.wait(timeout=profile_s + 60)
            point.profile = str(tmp / f"profile-{tag}.txt")
        time.sleep(0.3 * period_s)  # mid-candle: the burst is done
        scrapes, walls, c0 = 0, 0.0, cpu_s(pids[0])
        text = ""
        while scrapes < 20 and (scrapes < 5 or walls < 0.5):
            t = time.perf_counter()
            text = _metrics(ports[0])
            walls += time.perf_counter() - t
            scrapes += 1
        point.scrape_cpu_ms = (cpu_s(pids[0]) - c0) * 1000.0 / scrapes
        point.scrape_ms = walls * 1000.0 / scrapes
        point.scrape_bytes = len(text)
        point.rss_mib = sum(rss_mib(pid) for pid in pids)
        texts = [text] + [_metrics(port) for port in ports[1:]]
        rows = calls = 0.0
        name = "apprentice_burst_complete_seconds"
        steady: dict[float, float] = {}
        spread: dict[float, float] = {}
        ends = {"window": 0.0, "all": 0.0}
        for now, then in zip(texts, before, strict=True):
            earlier = dict(_buckets(then, "apprentice_burst_spread_seconds"))
            for le, c in _buckets(now, "apprentice_burst_spread_seconds"):
                spread[le] = spread.get(le, 0.0) + c - earlier.get(le, 0.0)
            ends["window"] += _sample(now, "apprentice_bursts_total", 'scored="window"')
            ends["window"] -= _sample(then, "apprentice_bursts_total", 'scored="window"')
            ends["all"] += _sample(now, "apprentice_bursts_total")
            ends["all"] -= _sample(then, "apprentice_bursts_total")
            rows += _sample(now, "apprentice_batch_rows_sum")
            rows -= _sample(then, "apprentice_batch_rows_sum")
            calls += _sample(now, "apprentice_batch_rows_count")
            calls -= _sample(then, "apprentice_batch_rows_count")
            earlier = dict(_buckets(then, name))
            for le, c in _buckets(now, name):
                steady[le] = steady.get(le, 0.0) + c - earlier.get(le, 0.0)
            point.reconnects += _sample(now, "apprentice_ws_reconnects_total")
            point.dropped += _sample(now, "apprentice_paper_errors_total")
            point.rejected += _sample(now, "apprentice_klines_rejected_total")
        point.rows_per_batch = rows / calls if calls else math.nan
        point.burst_complete_p99_ms = 1000.0 * histogram_quantile(0.99, sorted(steady.items()))
        point.spread_p50_ms = 1000.0 * histogram_quantile(0.5, sorted(spread.items()))
        point.spread_p99_ms = 1000.0 * histogram_quantile(0.99, sorted(spread.items()))
        point.window_share = ends["window"] / ends["all"] if ends["all"] else math.nan
        point.families = series_by_family(text)
    finally:
        for svc in services:
            svc.stop()
            point.errors += sum(" ERROR " in ln for ln in svc.tail(10**8).splitlines())
        exchange.stop()
        if plan and mine:
            pin_to(0, mine)
    return point


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


def _profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy over the service for ``seconds`` (when installed): raw folded stacks."""
    spy = shutil.which("py-spy") or str(Path(procs.python()[0]).parent / "py-spy")
    if not Path(spy).exists():
        return None
    cmd = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200"]
    cmd += ["--format", "raw", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_frames(folded: Path, k: int = 8) -> list[tuple[str, float]]:
    """Share of samples per service package (the innermost ``service/...`` frame's folder,
    ``other``: no service frame — the interpreter, asyncio, uvicorn between callbacks)."""
    per: dict[str, int] = {}
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        total += c
        mine = [f for f in stack.split(";") if "(service/" in f]
        key = "other"
        if mine:
            path = mine[-1].split("(", 1)[1].rsplit(":", 1)[0]  # service/paper/account.py
            parts = path.split("/")
            key = "/".join(parts[:2]) if len(parts) > 2 else path
            if key == "service/__main__.py":
                key = "other"  # uvicorn's loop between callbacks
        per[key] = per.get(key, 0) + c
    ranked = sorted(per.items(), key=lambda kv: -kv[1])[:k]
    return [(name, c / total) for name, c in ranked] if total else []


def series_by_family(text: str, k: int = 6) -> list[tuple[str, int]]:
    """The metric families with the most samples in one scrape."""
    per: dict[str, int] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            for suffix in ("_bucket", "_created", "_total", "_sum", "_count"):
                name = name.removesuffix(suffix)
            per[name] = per.get(name, 0) + 1
    return sorted(per.items(), key=lambda kv: -kv[1])[:k]


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
