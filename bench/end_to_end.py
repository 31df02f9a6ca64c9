"""Section 3: what users see, measured from outside the service, idle and under HTTP load.

The replay exchange (``python -m service.replay``) pushes real BTCUSDT 5m klines to the real
service (``python -m service``, a subprocess under uvicorn). The external probe
(:mod:`bench.probe`) is a second websocket client on the same replay: it stamps each
confirm frame as it arrives and polls ``GET /signal/BTCUSDT`` until that candle's signal is
served. Three phases of the same run:

* idle: the probe alone;
* ``wrk -t1 -c64`` on ``GET /signal/BTCUSDT`` for the whole phase (bounded: fixed time);
* heavy reads: ``wrk -t1 -c4`` on ``GET /paper/trades?limit=10000`` over a journal of
  :data:`JOURNAL_FILLS` fills written before the service started.

Beside them: the service's own histograms per phase (from ``/metrics``), its idle CPU
(% of a core from ``/proc`` over a fixed window, replay at 1×: no candle closes), and
``make demo``'s own load (three symbols at 300×) on the service's histogram, and that load
once more through :mod:`bench.trace_path` (per-candle thread accounting: where the time
goes).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench import models, probe, procs, stack, trace_path
from bench.report import Section, Target
from bench.timing import Summary, histogram_quantile
from service.demo import DEMO_SYMBOLS as _DEMO

DEMO_SYMBOLS = tuple(_DEMO.split(","))
SPEED = 3000.0  # a 5-minute candle every 100 ms
JOURNAL_FILLS = 200_000
HEAVY_PATH = "/paper/trades?limit=10000"
SIGNAL_PATH = f"/signal/{stack.SYMBOL}"
LOADS = {
    "idle": None,
    "c64": ("-c64", SIGNAL_PATH),
    "heavy": ("-c4", HEAVY_PATH),
}
PHASE_LABELS = {
    "idle": "idle (the probe alone)",
    "c64": f"`wrk -t1 -c64` on `GET {SIGNAL_PATH}`",
    "heavy": f"`wrk -t1 -c4` on `GET {HEAVY_PATH}` ({JOURNAL_FILLS:,} fills)",
}
METRICS = (
    ("apprentice_signal_latency_seconds", "frame read → signal stored"),
    ("apprentice_feature_update_seconds", "feature update (per closed kline)"),
    ("apprentice_inference_seconds", "inference (per signal)"),
)


def parse_histograms(text: str) -> dict[str, list[tuple[float, float]]]:
    """Cumulative (le, count) buckets of every unlabelled histogram in Prometheus text."""
    out: dict[str, list[tuple[float, float]]] = {}
    for line in text.splitlines():
        if "_bucket{" not in line or line.startswith("#"):
            continue
        name, rest = line.split("_bucket{", 1)
        labels, value = rest.rsplit("} ", 1)
        le = [p.split("=", 1)[1].strip('"') for p in labels.split(",") if p.startswith("le=")]
        if not le or labels.count("=") != 1:
            continue  # labelled histograms (HTTP) are not needed here
        out.setdefault(name, []).append(
            (math.inf if le[0] == "+Inf" else float(le[0]), float(value))
        )
    return {k: sorted(v) for k, v in out.items()}


def _delta(
    after: dict[str, list[tuple[float, float]]], before: dict[str, list[tuple[float, float]]]
) -> dict[str, list[tuple[float, float]]]:
    """Bucket counts observed between two scrapes."""
    out = {}
    for name, buckets in after.items():
        prev = dict(before.get(name, []))
        out[name] = [(le, c - prev.get(le, 0.0)) for le, c in buckets]
    return out


def _scrape(port: int) -> dict[str, list[tuple[float, float]]]:
    _, body = procs.http_get(port, "/metrics", timeout=30.0)
    return parse_histograms(body.decode())


def _rows(hists: dict[str, list[tuple[float, float]]]) -> tuple[list[list[object]], float]:
    rows: list[list[object]] = []
    sig_p99 = math.nan
    for name, label in METRICS:
        b = hists.get(name, [])
        n = int(b[-1][1]) if b else 0
        p50, p90, p99 = (histogram_quantile(q, b) * 1e6 for q in (0.5, 0.9, 0.99))
        if name == "apprentice_signal_latency_seconds":
            sig_p99 = p99
        rows.append([label, n, p50, p90, p99])
    return rows, sig_p99


@contextlib.contextmanager
def _wrk(port: int, connections: str, path: str, seconds: float, log: Path) -> Iterator[None]:
    """``wrk`` in the background for ``seconds`` (it inherits this process's CPU: the
    clients' side of the machine, with the replay and the probe)."""
    cmd = ["wrk", "-t1", connections, f"-d{seconds:.0f}s", f"http://127.0.0.1:{port}{path}"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        try:
            time.sleep(1.0)  # connections open and the server is saturated before probing
            yield
        finally:
            try:
                proc.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _fill(state: Path) -> None:
    probe.fill_journal(state, JOURNAL_FILLS)


def _served_row(label: str, res: probe.ProbeResult) -> list[object]:
    s, r = res.served(), res.rtt()
    if s is None or r is None:
        return [label, 0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, res.missed]
    mx = max(res.served_ns) / 1e3
    return [label, s.runs, s.p50, s.p90, s.p99, mx, r.p50, r.p99, res.missed]


def run(quick: bool = False) -> Section:
    """Measure and return the section."""
    sec = Section("3. End to end")
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    student = models.load_student(tmp)
    seconds = 4.0 if quick else 20.0
    have_wrk = shutil.which("wrk") is not None
    results: dict[str, probe.ProbeResult] = {}
    hists: dict[str, dict[str, list[tuple[float, float]]]] = {}
    with stack.running(tmp, student.path, speed=SPEED, prefill=_fill) as st:
        for phase, load in LOADS.items():
            if load is not None and not have_wrk:
                continue
            h0 = _scrape(st.service_port)
            if load is None:
                results[phase] = probe.served_latencies(
                    st.ws_url, st.service_port, stack.SYMBOL, stack.INTERVAL, seconds
                )
            else:
                log = tmp / f"wrk-{phase}.log"
                with _wrk(st.service_port, load[0], load[1], seconds + 2.0, log):
                    results[phase] = probe.served_latencies(
                        st.ws_url, st.service_port, stack.SYMBOL, stack.INTERVAL, seconds
                    )
            hists[phase] = _delta(_scrape(st.service_port), h0)
    cpu_s = 5.0 if quick else 30.0
    with stack.running(tmp, student.path, speed=1.0) as st:
        time.sleep(2.0)  # start-up work (backfill, first scrape) is over
        idle_cpu = probe.idle_cpu_percent(st.service.popen.pid, cpu_s)
    demo_s = 5.0 if quick else 90.0
    with stack.running(tmp, student.path, speed=300.0, symbols=DEMO_SYMBOLS) as st:
        h3 = _scrape(st.service_port)
        time.sleep(demo_s)
        demo_hist = _delta(_scrape(st.service_port), h3)
    trace_s = 8.0 if quick else 45.0
    trace = trace_path.run_trace(trace_s, 300.0, DEMO_SYMBOLS)
    load_avg = os.getloadavg()[0]
    rates = {p: _wrk_rate(tmp / f"wrk-{p}.log") for p in LOADS if LOADS[p] is not None}
    _write(sec, results, hists, demo_hist, idle_cpu, cpu_s, seconds, demo_s, have_wrk, load_avg)
    _write_trace(sec, trace, trace_s)
    _targets(sec, results, hists, rates, demo_hist, idle_cpu, load_avg, trace)
    return sec


def _wrk_rate(log: Path) -> float:
    """Requests/s from a background wrk's log (nan when it did not run)."""
    import re

    try:
        m = re.search(r"Requests/sec:\s+([\d.]+)", log.read_text())
    except OSError:
        return math.nan
    return float(m.group(1)) if m else math.nan


TRACE_ROWS = (
    ("wall", "frame read → signal stored"),
    ("on_cpu", "candle thread on a CPU"),
    ("inference_cpu", "  of which inference (its CPU time)"),
    ("features_cpu", "  of which feature update (its CPU time)"),
    ("pre", "frame read → pipeline entry (wall: parse, feed)"),
    ("run_queue", "candle thread runnable, waiting for the CPU"),
    ("blocked", "candle thread blocked (the GIL)"),
    ("others_cpu", "other threads of the service on a CPU meanwhile"),
    ("minor_faults", "page faults (count)"),
    ("involuntary_switches", "preemptions of the candle thread (count)"),
)


def _trace_cols(trace: dict[str, object]) -> list[tuple[str, dict[str, object]]]:
    by_pos = trace["by_position"]
    assert isinstance(by_pos, dict)
    cols: list[tuple[str, dict[str, object]]] = []
    for pos, label in ((1, "first candle of a burst"), (2, "second candle")):
        if pos in by_pos or str(pos) in by_pos:
            entry = by_pos.get(pos, by_pos.get(str(pos)))
            cols.append((f"{label} (n={entry['count']})", entry["split"]))
    slow = trace["slowest_10pct"]
    assert isinstance(slow, dict)
    cols.append(("slowest 10 %", slow))
    return cols


def _trace_value(split: dict[str, object], key: str) -> float:
    if key == "others_cpu":
        others = split.get("others", {})
        assert isinstance(others, dict)
        return float(sum(others.values()))
    v = split.get(key, math.nan)
    return float(v) if isinstance(v, int | float) else math.nan


def _write_trace(sec: Section, trace: dict[str, object], trace_s: float) -> None:
    cols = _trace_cols(trace)
    sec.add(
        "",
        "### Where the time goes under `make demo` conditions "
        f"(`bench.trace_path`, {trace_s:.0f} s)",
        "",
        "The same load once more, the service started through `bench/trace_path.py`, which "
        "reads every thread's `/proc/self/task/<tid>/schedstat` and the candle thread's "
        "CPU clock at the socket read that stamps a confirm frame and again when its signal "
        f"is stored ({trace['count']} live signals; each reading costs "
        f"~{float(str(trace['snap_us_p50'])):.0f} µs of the candle thread, inside the "
        "figures below). Mean µs per candle; *blocked* is the wall time in which the "
        "candle thread neither ran nor waited for a CPU, i.e. waited for the GIL. "
        f"Switch interval while it ran: {float(str(trace['switch_interval_s'])) * 1e3:.1f} ms.",
        "",
    )
    rows = [[label, *(_trace_value(c, key) for _, c in cols)] for key, label in TRACE_ROWS]
    sec.table(("mean per candle", *(name for name, _ in cols)), rows)


def _write(
    sec: Section,
    results: dict[str, probe.ProbeResult],
    hists: dict[str, dict[str, list[tuple[float, float]]]],
    demo_hist: dict[str, list[tuple[float, float]]],
    idle_cpu: float,
    cpu_s: float,
    seconds: float,
    demo_s: float,
    have_wrk: bool,
    load_avg: float,
) -> None:
    sec.add(
        f"Replay at {SPEED:,.0f}× (a 5-minute candle every {300 / SPEED * 1000:.0f} ms, 4 "
        "unconfirmed updates + 1 confirm each, pushes jittered 0–4 ms), one symbol, paper "
        f"trading on, {JOURNAL_FILLS:,} fills journaled before the start. As in `make demo`, "
        "the replay, the probe and wrk share one of the two cores and the service has the "
        f"other. Each phase probes for {seconds:.0f} s; wrk starts 1 s before the probe "
        "and runs to the phase's end.",
        "",
    )
    if not have_wrk:
        sec.add(
            "**wrk is not installed: the two load phases were not run** "
            "(`apt-get install -y wrk`, then `make bench` again).",
            "",
        )
    sec.add("### The external probe: confirm frame → its signal served by `GET /signal`", "")
    sec.table(
        (
            "phase",
            "candles",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "max µs",
            "GET RTT p50 µs",
            "GET RTT p99 µs",
            "missed",
        ),
        [_served_row(PHASE_LABELS[p], r) for p, r in results.items()],
    )
    sec.add(
        "The probe stamps the frame when its own websocket client returns it, then polls "
        f"(one keep-alive connection, {probe.POLL_PAUSE_S * 1e6:.0f} µs pause between "
        "polls); the figure includes the last poll's round trip. *GET RTT* is every poll's "
        "round trip in the phase: under saturating load the read itself queues behind the "
        "other connections' requests (one uvicorn worker serves them in turn), and that "
        "queue is a floor under frame → served that no change to the candle path can lower.",
        "",
        "### Inside the service, per phase (its own histograms, quantiles interpolated)",
        "",
    )
    header = ("stage", "count", "p50 µs", "p90 µs", "p99 µs")
    for phase, h in hists.items():
        rows, _ = _rows(h)
        sec.add(f"{PHASE_LABELS[phase]}:", "")
        sec.table(header, rows)
    demo_rows, _ = _rows(demo_hist)
    sec.add(
        f"`make demo` conditions ({len(DEMO_SYMBOLS)} symbols at 300×, {demo_s:.0f} s, no "
        "HTTP load):",
        "",
    )
    sec.table(header, demo_rows)
    sec.add(
        "`apprentice_signal_latency_seconds` runs from the moment the service's feed loop "
        "read the frame's last bytes off the socket (its websocket connection stamps each "
        "message in `data_received`) to the signal stored; before that read lies only the "
        "kernel's queueing.",
        "",
        f"Idle CPU: the service used **{idle_cpu:.2f} % of one core** over {cpu_s:.0f} s "
        "(`/proc/<pid>/stat` utime + stime, every thread; replay at 1×, so no candle closed "
        "and nothing polled). Load average at the end of the section "
        f"{load_avg:.2f} on {os.cpu_count()} cores.",
    )


def _p99(res: probe.ProbeResult | None) -> float:
    s = res.served() if res is not None else None
    return s.p99 if s is not None else math.nan


def _rtt(res: probe.ProbeResult | None) -> Summary | None:
    return res.rtt() if res is not None else None


def _targets(
    sec: Section,
    results: dict[str, probe.ProbeResult],
    hists: dict[str, dict[str, list[tuple[float, float]]]],
    rates: dict[str, float],
    demo_hist: dict[str, list[tuple[float, float]]],
    idle_cpu: float,
    load_avg: float,
    trace: dict[str, object],
) -> None:
    idle99 = _p99(results.get("idle"))
    for phase in ("c64", "heavy"):
        p99 = _p99(results.get(phase))
        if math.isnan(p99) or math.isnan(idle99):
            sec.targets.append(
                Target(
                    f"probe frame → served p99 under {PHASE_LABELS[phase]}",
                    "≤ 3× idle p99 and < 5 ms",
                    "n/a",
                    None,
                    "wrk is not installed" if shutil.which("wrk") is None else "no candle",
                )
            )
            continue
        ok = p99 <= 3 * idle99 and p99 < 5_000.0
        rtt = _rtt(results.get(phase))
        _, inside = _rows(hists.get(phase, {}))
        load = LOADS[phase]
        conns = int(load[0].removeprefix("-c")) if load else 0
        rate = rates.get(phase, math.nan)
        queue = (
            f"wrk kept {conns} requests like it in flight at {rate:,.0f} req/s, so by "
            f"Little's law a request waits ~{conns / rate * 1e3:.1f} ms behind the others in "
            "the one uvicorn worker; "
            if phase == "c64" and rate > 0
            else ""
        )
        why = (
            f"the probe's own GET waits in the HTTP queue: its round trip alone had p50 "
            f"{rtt.p50 / 1e3:.1f} ms, p99 {rtt.p99 / 1e3:.1f} ms in this phase; {queue}"
            f"the candle path inside the service (frame read → signal stored) had p99 "
            f"{inside:.0f} µs; load average {load_avg:.1f}"
            if rtt is not None
            else ""
        )
        sec.targets.append(
            Target(
                f"probe frame → served p99 under {PHASE_LABELS[phase]}",
                "≤ 3× idle p99 and < 5 ms",
                f"{p99 / 1e3:.2f} ms ({p99 / idle99:.1f}× idle {idle99 / 1e3:.2f} ms)",
                ok,
                "" if ok else why,
            )
        )
    sec.targets.append(
        Target(
            "service idle CPU",
            "< 1 % of a core",
            f"{idle_cpu:.2f} %",
            idle_cpu < 1.0,
            "",
        )
    )
    demo_rows, demo_p99 = _rows(demo_hist)
    ok = not math.isnan(demo_p99) and demo_p99 < 1000.0
    sec.targets.append(
        Target(
            "`make demo` conditions: frame read → signal stored p99 (service's histogram)",
            "< 1 ms",
            "n/a" if math.isnan(demo_p99) else f"{demo_p99:.0f} µs",
            None if math.isnan(demo_p99) else ok,
            "" if ok or math.isnan(demo_p99) else _demo_why(demo_rows, load_avg, trace),
        )
    )


def _demo_why(rows: list[list[object]], load_avg: float, trace: dict[str, object]) -> str:
    """Where a slow ``make demo`` p99 goes: the stage histograms and the same run's trace."""
    p99 = {str(r[0]): r[4] for r in rows}
    feat = p99.get("feature update (per closed kline)", math.nan)
    inf = p99.get("inference (per signal)", math.nan)
    cols = _trace_cols(trace)
    first = cols[0][1]
    later = cols[1][1] if len(cols) > 2 else None
    v = _trace_value
    text = (
        f"stage p99s {feat:.0f} µs (features), {inf:.0f} µs (inference). Traced "
        f"(`bench.trace_path`, this run): the first candle of a burst took "
        f"{v(first, 'wall'):.0f} µs on average, {v(first, 'on_cpu'):.0f} µs of it running "
        f"({v(first, 'inference_cpu'):.0f} µs of CPU in the inference alone), "
        f"{v(first, 'run_queue'):.0f} µs waiting for the CPU and {v(first, 'blocked'):.0f} µs "
        f"for the GIL, with {v(first, 'minor_faults'):.1f} page faults"
    )
    if later is not None:
        text += (
            f"; the next candle of the same burst, caches warm again, "
            f"{v(later, 'wall'):.0f} µs ({v(later, 'inference_cpu'):.0f} µs inference CPU)"
        )
    return text + (
        ": the same code runs many times slower on a core that other processes used in "
        "the second between bursts (cold caches on a shared VM; the hot-vs-idle table in "
        f"section 6 shows it in-process, one thread), not waiting; load average "
        f"{load_avg:.1f} on {os.cpu_count()} cores"
    )
