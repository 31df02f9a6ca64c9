"""The benchmark harness: pure helpers against hand-computed values, and a quick smoke run.

No timing is asserted anywhere (speed belongs to BENCHMARKS.md, not to tests).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.end_to_end import parse_histograms
from bench.http_load import parse_wrk
from bench.timing import Summary, histogram_quantile, interleaved

ROOT = Path(__file__).resolve().parents[2]

WRK_OUT = """Running 5s test @ http://127.0.0.1:8000/signal/BTCUSDT
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms    1.20ms  30.00ms   90.00%
    Req/Sec     3.90k   200.00     4.20k    70.00%
  Latency Distribution
     50%    1.50ms
     75%    2.00ms
     90%  800.00us
     99%    1.20s
  19500 requests in 5.00s, 6.00MB read
  Non-2xx or 3xx responses: 7
Requests/sec:   3900.12
Transfer/sec:      1.20MB
"""

PROM = """# HELP apprentice_signal_latency_seconds Frame received to signal stored
# TYPE apprentice_signal_latency_seconds histogram
apprentice_signal_latency_seconds_bucket{le="1e-05"} 2.0
apprentice_signal_latency_seconds_bucket{le="2e-05"} 6.0
apprentice_signal_latency_seconds_bucket{le="+Inf"} 8.0
apprentice_signal_latency_seconds_count 8.0
apprentice_http_request_duration_seconds_bucket{method="GET",route="/x",status="200",le="0.1"} 3.0
"""


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = [(10.0, 2.0), (20.0, 6.0), (math.inf, 8.0)]
    # rank 4 of 8 lies halfway through (10, 20]: 2 → 6
    assert histogram_quantile(0.5, buckets) == 15.0
    # rank 1 lies in the first bucket, interpolated from 0
    assert histogram_quantile(0.125, buckets) == 5.0
    # a quantile in +Inf answers the last finite bound
    assert histogram_quantile(0.99, buckets) == 20.0
    assert math.isnan(histogram_quantile(0.5, [(10.0, 0.0), (math.inf, 0.0)]))


def test_parse_histograms_reads_unlabelled_buckets_only() -> None:
    h = parse_histograms(PROM)
    assert list(h) == ["apprentice_signal_latency_seconds"]
    assert h["apprentice_signal_latency_seconds"] == [(1e-05, 2.0), (2e-05, 6.0), (math.inf, 8.0)]


def test_parse_wrk_units() -> None:
    r = parse_wrk(WRK_OUT)
    assert r.rps == 3900.12
    assert r.requests == 19500
    assert r.non_2xx == 7
    assert (r.p50, r.p90, r.p99) == (1500.0, 800.0, 1.2e6)


def test_summary_percentiles() -> None:
    s = Summary.of("x", np.arange(1, 1001, dtype=np.int64) * 1000)  # 1..1000 µs
    assert s.runs == 1000
    assert s.p50 == np.percentile(np.arange(1, 1001), 50)
    assert s.p999 > s.p99 > s.p90 > s.p50


def test_interleaved_runs_every_contender_its_quota_in_rounds() -> None:
    order: list[str] = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    out = interleaved(calls, {"a": 40, "b": 10}, warmup=0, rounds=10)
    assert out["a"].runs == 40 and out["b"].runs == 10
    # round-robin: each round is a block of 4 a's then 1 b
    assert order[:10] == ["a"] * 4 + ["b"] + ["a"] * 4 + ["b"]


def test_interleaved_settle_calls_are_untimed() -> None:
    calls: list[int] = []
    out = interleaved({"a": lambda: calls.append(1)}, {"a": 30}, warmup=5, rounds=10, settle=2)
    assert out["a"].runs == 30  # timed samples only
    assert len(calls) == 5 + 10 * 2 + 30  # warm-up + settle per block + timed


def test_quick_run_writes_markdown(tmp_path: Path) -> None:
    out = tmp_path / "BENCH.md"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "inference,features",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    text = out.read_text()
    for needle in (
        "# Benchmarks",
        "## Targets",
        "## 1. Inference",
        "Identity floor",
        "student as the service runs it",
        "teacher torch eager",
        "int8",
        "## 2. Features",
        "100,000",
        "onnxruntime 1.",
    ):
        assert needle in text, needle
    assert "FAILED" not in text


def test_python_load_generator_on_a_real_loopback_server() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from bench.pyload import load

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like uvicorn

        def do_GET(self) -> None:
            body = b'{"ok": true}' if self.path == "/ok" else b"{}"
            self.send_response(200 if self.path == "/ok" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        ok = load(port, "/ok", 0.3, connections=2)
        missing = load(port, "/nope", 0.2, connections=1)
    finally:
        server.shutdown()
        server.server_close()
    assert ok.requests > 0 and ok.non_2xx == 0 and ok.rps > 0
    assert ok.p50 <= ok.p90 <= ok.p99
    assert missing.requests > 0 and missing.non_2xx == missing.requests


def test_proc_stat_fields_after_a_name_with_spaces_and_parentheses() -> None:
    from bench.probe import cpu_seconds, parse_proc_stat

    # proc(5): pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    # cmajflt utime stime ...
    line = "4242 (uvicorn (w) 1) S 1 4242 4242 0 -1 4194560 900 0 3 0 1234 567 0 0 20 0 5"
    assert parse_proc_stat(line) == (1234, 567)
    import os

    assert cpu_seconds(os.getpid()) > 0.0  # this process's own, from the real /proc


def test_probe_reads_the_newest_confirmed_start_of_its_topic_only() -> None:
    from bench.probe import ProbeResult, confirmed_start

    topic = "kline.5.BTCUSDT"
    push = {
        "topic": topic,
        "data": [
            {"start": 300_000, "confirm": True},
            {"start": 600_000, "confirm": False},
        ],
    }
    assert confirmed_start(json.dumps(push), topic) == 300_000
    push["data"][1]["confirm"] = True
    assert confirmed_start(json.dumps(push), topic) == 600_000
    assert confirmed_start(json.dumps({**push, "topic": "kline.5.ETHUSDT"}), topic) is None
    assert confirmed_start(json.dumps({"op": "subscribe", "success": True}), topic) is None
    assert confirmed_start(json.dumps({"topic": topic, "data": [{"confirm": "1"}]}), topic) is None
    res = ProbeResult(served_ns=[2_000, 1_000, 3_000], rtt_ns=[500, 700])
    served, rtt = res.served(), res.rtt()
    assert served is not None and served.runs == 3 and served.p50 == 2.0  # µs
    assert rtt is not None and rtt.runs == 2
    assert ProbeResult().served() is None and ProbeResult().rtt() is None


def test_filled_journal_resumes_as_a_flat_account(tmp_path: Path) -> None:
    from bench.probe import fill_journal
    from service.paper.account import replay_fills
    from service.paper.journal import Journal

    epoch = fill_journal(tmp_path, 1_000, symbols=("BTCUSDT", "ETHUSDT"))
    j = Journal(tmp_path)
    j.open()
    try:
        terms = j.current_account(1.0, 1.0, 0.0, 0.0)
        assert terms.epoch == epoch
        assert j.count_fills(epoch) == 1_000 and j.count_fills(epoch, "ETHUSDT") == 500
        account = replay_fills(terms, j.fills(epoch))
        assert all(p.qty == 0.0 for p in account.positions.values())  # round trips only
    finally:
        j.close()


def test_operator_profile_of_a_real_graph(tmp_path: Path) -> None:
    from bench.inference import op_profile
    from bench.models import identity_onnx, onnx_params

    path = identity_onnx(tmp_path / "identity.onnx")
    x = np.zeros((1, 12, 32), dtype=np.float32)
    rows = op_profile(path, x, 20)
    assert [r[0] for r in rows] == ["Identity"] and rows[0][1] == 1
    assert onnx_params(path) == 0
    assert not list(tmp_path.glob("ort-profile*"))  # the trace file is removed
