"""One point of the scale benchmark: the many-symbol exchange and the service (or k
symbol-sharded replicas) as pinned processes, measured from outside (``bench.scale``'s
docstring says what and how)."""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import outside, procs
from bench.many_symbols import symbol_names
from bench.timing import histogram_quantile
from service.demo import cpu_plan
from service.demo import pin as pin_to

PERIOD_S = 2.5  # real seconds per 5-minute candle (speed 120x)
LAT_BURSTS = 8
CPU_BURSTS = 6
MODEL = procs.ROOT / "models" / "student_pooled_5m.onnx"
SHARD_TOOL = procs.ROOT / "deploy" / "shard_symbols.py"


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
    rejected_by: dict[str, float] = field(default_factory=dict)  # reason -> count
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
        bursts = outside.BurstLog(log)
        bursts.skip()
        bursts.next(3 * period_s)  # one whole period after ready before measuring
        before = [outside.metrics_text(port) for port in ports]  # histograms: the steady state only
        for _ in range(lat_bursts):
            line = bursts.next(3 * period_s + 30)
            deadline = line["last"] + 10.0
            seen = [
                outside.visible(port, int(line["candle"]), part[-1], len(part), deadline)
                for part, port in zip(parts, ports, strict=True)
            ]
            if any(x is None for x in seen):
                point.incomplete += 1
            else:
                point.latency_ms.append((max(x for x in seen if x) - line["last"]) * 1000.0)
        bursts.next(3 * period_s + 30)
        c0 = sum(outside.cpu_s(pid) for pid in pids)
        prof = _profile(pids[0], profile_s, tmp / f"profile-{tag}.txt") if profile_s else None
        for _ in range(cpu_bursts):
            bursts.next(3 * period_s + 30)
        point.cpu_burst_ms = (sum(outside.cpu_s(pid) for pid in pids) - c0) * 1000.0 / cpu_bursts
        if prof is not None:
            prof.wait(timeout=profile_s + 60)
            point.profile = str(tmp / f"profile-{tag}.txt")
        time.sleep(0.3 * period_s)  # mid-candle: the burst is done
        scrapes, walls, c0 = 0, 0.0, outside.cpu_s(pids[0])
        text = ""
        while scrapes < 20 and (scrapes < 5 or walls < 0.5):
            t = time.perf_counter()
            text = outside.metrics_text(ports[0])
            walls += time.perf_counter() - t
            scrapes += 1
        point.scrape_cpu_ms = (outside.cpu_s(pids[0]) - c0) * 1000.0 / scrapes
        point.scrape_ms = walls * 1000.0 / scrapes
        point.scrape_bytes = len(text)
        point.rss_mib = sum(outside.rss_mib(pid) for pid in pids)
        texts = [text] + [outside.metrics_text(port) for port in ports[1:]]
        rows = calls = 0.0
        name = "apprentice_burst_complete_seconds"
        steady: dict[float, float] = {}
        spread: dict[float, float] = {}
        ends = {"window": 0.0, "all": 0.0}
        for now, then in zip(texts, before, strict=True):
            earlier = dict(outside.buckets(then, "apprentice_burst_spread_seconds"))
            for le, c in outside.buckets(now, "apprentice_burst_spread_seconds"):
                spread[le] = spread.get(le, 0.0) + c - earlier.get(le, 0.0)
            ends["window"] += outside.sample(now, "apprentice_bursts_total", 'scored="window"')
            ends["window"] -= outside.sample(then, "apprentice_bursts_total", 'scored="window"')
            ends["all"] += outside.sample(now, "apprentice_bursts_total")
            ends["all"] -= outside.sample(then, "apprentice_bursts_total")
            rows += outside.sample(now, "apprentice_batch_rows_sum")
            rows -= outside.sample(then, "apprentice_batch_rows_sum")
            calls += outside.sample(now, "apprentice_batch_rows_count")
            calls -= outside.sample(then, "apprentice_batch_rows_count")
            earlier = dict(outside.buckets(then, name))
            for le, c in outside.buckets(now, name):
                steady[le] = steady.get(le, 0.0) + c - earlier.get(le, 0.0)
            point.reconnects += outside.sample(now, "apprentice_ws_reconnects_total")
            point.dropped += outside.sample(now, "apprentice_paper_errors_total")
            point.rejected += outside.sample(now, "apprentice_klines_rejected_total")
            for reason, count in outside.by_label(
                now, "apprentice_klines_rejected_total", "reason"
            ):
                if count:
                    point.rejected_by[reason] = point.rejected_by.get(reason, 0.0) + count
        point.rows_per_batch = rows / calls if calls else math.nan
        point.burst_complete_p99_ms = 1000.0 * histogram_quantile(0.99, sorted(steady.items()))
        point.spread_p50_ms = 1000.0 * histogram_quantile(0.5, sorted(spread.items()))
        point.spread_p99_ms = 1000.0 * histogram_quantile(0.99, sorted(spread.items()))
        point.window_share = ends["window"] / ends["all"] if ends["all"] else math.nan
        point.families = outside.series_by_family(text)
    finally:
        for svc in services:
            svc.stop()
            point.errors += sum(" ERROR " in ln for ln in svc.tail(10**8).splitlines())
        exchange.stop()
        if plan and mine:
            pin_to(0, mine)
    return point


def _profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy over the service for ``seconds`` (when installed): raw folded stacks."""
    spy = shutil.which("py-spy") or str(Path(procs.python()[0]).parent / "py-spy")
    if not Path(spy).exists():
        return None
    cmd = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200"]
    cmd += ["--format", "raw", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
