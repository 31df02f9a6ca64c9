"""Section 3: frame received → signal stored, and replay push → HTTP GET sees the signal.

The replay exchange (``python -m service.replay``) pushes real BTCUSDT 5m klines at high
speed to the real service (a subprocess under uvicorn). Two views of the same run:

* the service's own histogram ``apprentice_signal_latency_seconds`` (frame received on the
  websocket → signal stored), read from ``/metrics``, quantiles interpolated in its buckets
  like Prometheus' ``histogram_quantile``;
* a client that subscribes to the same replay stream and, on each ``confirm=true`` push,
  polls ``GET /signal/BTCUSDT`` on a keep-alive connection until ``candle_start`` is that
  candle's: the whole path as a user sees it (resolution: one GET round trip).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import models, stack
from bench.report import Section, Target
from bench.timing import Summary, histogram_quantile
from service.demo import DEMO_SYMBOLS as _DEMO

DEMO_SYMBOLS = tuple(_DEMO.split(","))

METRICS = (
    ("apprentice_signal_latency_seconds", "frame received → signal stored"),
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


def client_latencies(st: stack.Stack, seconds: float) -> tuple[list[int], int]:
    """Push → GET-sees latencies (ns) for every confirmed candle within ``seconds``."""
    from websockets.sync.client import connect

    http_conn = http.client.HTTPConnection("127.0.0.1", st.service_port, timeout=5)
    path = f"/signal/{stack.SYMBOL}"
    lat: list[int] = []
    missed = 0
    topic = f"kline.{stack.INTERVAL}.{stack.SYMBOL}"
    with connect(st.ws_url, max_size=2**20) as ws:
        ws.send(json.dumps({"op": "subscribe", "args": [topic]}))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            raw = ws.recv(timeout=5)
            t_push = time.perf_counter_ns()
            msg = json.loads(raw)
            if msg.get("topic") != topic:
                continue
            closed = [int(k["start"]) for k in msg["data"] if k.get("confirm")]
            if not closed:
                continue
            want = max(closed)
            deadline = t_push + 1_000_000_000  # 1 s: a candle the service skipped
            while True:
                http_conn.request("GET", path)
                resp = http_conn.getresponse()
                body = resp.read()
                now = time.perf_counter_ns()
                if resp.status == 200 and json.loads(body)["candle_start"] >= want:
                    lat.append(now - t_push)
                    break
                if now > deadline:
                    missed += 1
                    break
    http_conn.close()
    return lat, missed


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
    from bench import procs

    _, body = procs.http_get(port, "/metrics")
    return parse_histograms(body.decode())


def _share_under(buckets: list[tuple[float, float]], bound_s: float) -> float:
    """Fraction of observations in buckets with upper bound ≤ ``bound_s`` (cumulative)."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    inside = max((c for le, c in buckets if le <= bound_s + 1e-12), default=0.0)
    return inside / buckets[-1][1]


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


def run(quick: bool = False) -> Section:
    """Measure and return the section."""
    sec = Section("3. End to end")
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    student = models.load_student(tmp)
    speed = 6000.0  # 5-minute candles every 50 ms, each with 4 unconfirmed updates
    seconds = 3.0 if quick else 20.0
    with stack.running(tmp, student.path, speed=speed) as st:
        h0 = _scrape(st.service_port)
        time.sleep(seconds)  # phase 1: the feed alone, no HTTP traffic
        h1 = _scrape(st.service_port)
        lat, missed = client_latencies(st, seconds)  # phase 2: a client polls /signal
        h2 = _scrape(st.service_port)
    demo_s = 5.0 if quick else 90.0
    with stack.running(tmp, student.path, speed=300.0, symbols=DEMO_SYMBOLS) as st:
        h3 = _scrape(st.service_port)
        time.sleep(demo_s)  # phase 3: what `make demo` runs
        h4 = _scrape(st.service_port)
    load = os.getloadavg()[0]
    quiet_rows, quiet_p99 = _rows(_delta(h1, h0))
    busy_rows, busy_p99 = _rows(_delta(h2, h1))
    demo_rows, demo_p99 = _rows(_delta(h4, h3))
    demo_share = _share_under(_delta(h4, h3).get("apprentice_signal_latency_seconds", []), 1e-4)
    sec.add(
        f"Replay at {speed:,.0f}× (a 5-minute candle every {300 / speed * 1000:.0f} ms, 4 "
        "unconfirmed updates + 1 confirm each), one symbol, paper trading on; as in "
        "`make demo`, the replay and the client run on one of the two cores and the service "
        f"on the other. Two phases of {seconds:.0f} s each: (a) the feed alone, (b) the same "
        "while a client polls `GET /signal` as fast as it can. Then (c) `make demo`'s own "
        f"load for {demo_s:.0f} s: BTCUSDT, ETHUSDT and SOLUSDT at 300× (three closes a "
        "second, together). The replay delays each push by a random 0–4 ms, as `make demo`'s "
        "does (`--push-jitter-ms`). Histogram deltas per phase, from `/metrics`.",
        "",
        "### Inside the service (its own histograms, quantiles interpolated in buckets)",
        "",
    )
    header = ("stage", "count", "p50 µs", "p90 µs", "p99 µs")
    sec.add("(a) feed only:", "")
    sec.table(header, quiet_rows)
    sec.add("(b) while a client polls `GET /signal`:", "")
    sec.table(header, busy_rows)
    sec.add("(c) `make demo` conditions (three symbols at 300×, no HTTP traffic):", "")
    sec.table(header, demo_rows)
    sec.add("### Full path seen by a client (replay push → `GET /signal` shows the candle)", "")
    if lat:
        s = Summary.of("client", np.asarray(lat, dtype=np.int64))
        sec.table(
            ("path", "candles", "p50 µs", "p90 µs", "p99 µs", "max µs", "missed"),
            [["push → GET sees it", s.runs, s.p50, s.p90, s.p99, max(lat) / 1e3, missed]],
        )
        sec.add(
            "The client receives the same push as the service (both subscribed to the replay), "
            "then polls over one keep-alive connection; the figure includes one GET round trip.",
        )
    else:
        sec.add("No candle closed during the client window.")
    why = (
        "one symbol: every candle is the first after a quiet spell, which runs ~1.5× slower "
        "than the candles right behind it (the demo's three symbols close together); "
        f"load average during the run {load:.1f} on 2 cores"
    )
    _target(
        sec,
        "frame received → signal stored p99, one symbol at 6,000× (feed only)",
        quiet_p99,
        f" (under HTTP polling: {busy_p99:.0f} µs)",
        why,
    )
    _target(
        sec,
        "frame received → signal stored p99 under `make demo` conditions",
        demo_p99,
        "",
        f"{100 * demo_share:.1f} % of candles are under 100 µs; the replay's pushes come at "
        "a random phase of the VM's 4 ms timer tick (`--push-jitter-ms`), and a candle that "
        "meets the tick or one of the VM's stalls (60–400 µs, with no context switch in the "
        "process) runs over — no one piece of code (section 7 measures that floor on the "
        "service's CPU); load average during the run "
        f"{load:.1f} on 2 cores",
    )
    return sec


def _target(sec: Section, name: str, p99: float, extra: str, why: str) -> None:
    ok = not math.isnan(p99) and p99 <= 100.0
    sec.targets.append(
        Target(
            name,
            "≤ 100 µs",
            "n/a" if math.isnan(p99) else f"{p99:.0f} µs{extra}",
            None if math.isnan(p99) else ok,
            "" if ok or math.isnan(p99) else f"missed by {p99 / 100:.2f}×: {why}",
        )
    )
