"""``python -m service.demo`` (``make demo``): replay exchange + signal service, fully offline.

Starts the replay exchange on a free loopback port (bundled real Bybit klines of BTCUSDT,
ETHUSDT and SOLUSDT, accelerated) and ``python -m service`` against it with paper trading,
replaying by default bars the served model never trained or validated on: its card's test
span (``data_span.test_first_ms`` on), with the bars before it as REST warm-up. The terminal
says which period plays and whether it overlaps the model's training or validation span
(computed from the card; ``--start/--end/--symbols`` choose another period, e.g. the bundled
Nov 2025 – Jan 2026 alts). It
prints the URLs and a status line (signals, trades, equity, frame→signal latency read from
the service's own histogram), and stops both on Ctrl-C. It supervises the service: if it dies
(try ``kill -9 <pid>``) it is restarted and resumes its paper account from the journal.

Both children run in their own process group, so one Ctrl-C reaches each exactly once (via
this launcher), and get SIGTERM if the launcher itself dies (Linux parent-death signal).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.http.listen import listen_problem
from service.model.card import ModelCard, ModelCardError, sample_period
from service.monitor.signal_journal import JOURNAL_FILE as SIGNAL_JOURNAL_FILE
from service.paper.journal import Journal
from service.settings import SettingsError, load_settings

DEMO_SYMBOLS = "BTCUSDT,ETHUSDT,SOLUSDT"
STATUS_EVERY_S = 15.0
MAX_RESTARTS = 5
REPLAY_PORT_VAR = "APPRENTICE_REPLAY_PORT"
# `python -m service` exits 2 when it refuses to start (a setting, the model, the port):
# restarting cannot help, so the demo stops and leaves the service's message as the last word.
REFUSED = 2


def build_parser() -> argparse.ArgumentParser:
    """The command line; the service itself also honours every APPRENTICE_* variable."""
    p = argparse.ArgumentParser(
        prog="python -m service.demo",
        description="Replay exchange + signal service + paper trading on loopback, offline. "
        "APPRENTICE_PORT / APPRENTICE_HOST choose where the service listens (default "
        "127.0.0.1:8000); APPRENTICE_STATE_DIR where the journal lives (default state/demo); "
        f"{REPLAY_PORT_VAR} (or --replay-port) the replay exchange's port (default: any free "
        "one). Every other APPRENTICE_* variable reaches the service (python -m service --help).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--symbols", default=DEMO_SYMBOLS, help="comma-separated bundled symbols")
    p.add_argument(
        "--start",
        type=_when,
        default=None,
        help="first replayed candle, ISO date/time (UTC) or ms (default: the model card's "
        "test span, bars it never trained or validated on)",
    )
    p.add_argument(
        "--end",
        type=_when,
        default=None,
        help="stop once the service has a signal for this candle (default: play on)",
    )
    p.add_argument("--speed", type=float, default=300.0, help="virtual seconds per real second")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the last paper account instead of opening a fresh one",
    )
    p.add_argument("--duration", type=float, default=0.0, help="stop after N seconds (0: never)")
    p.add_argument(
        "--replay-port",
        type=int,
        default=int(os.environ.get(REPLAY_PORT_VAR) or 0),
        help=f"the replay exchange's loopback port (0: any free one; env {REPLAY_PORT_VAR})",
    )
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="do not keep the replay exchange and the service on separate CPUs",
    )
    return p


def _when(text: str) -> int:
    """ms since the epoch from digits or an ISO date/time (UTC unless it says otherwise)."""
    if text.isdigit():
        return int(text)
    dt = datetime.fromisoformat(text)
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)


def replay_period(
    card: ModelCard | None, symbols: list[str], start: int | None, end: int | None, step: int
) -> tuple[int | None, str]:
    """The replay's start (the card's test span unless given, on the interval grid) and the
    sentence the terminal prints: the period and whether it is out of sample."""
    if start is None and card is not None and "test_first_ms" in (card.data_span or {}):
        start = int(card.data_span["test_first_ms"])
    if start is None:
        return None, "replaying from the start of the bundled data (the card has no test span)"
    start -= start % step
    if card is None:
        return start, "no model card: cannot say whether the period is out of sample"
    last = end if end is not None else int(card.data_span.get("test_last_ms", start))
    statement = sample_period(card, symbols, start, max(start, last))["statement"]
    return start, statement


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the replay binds it right after)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A child in its own session that receives SIGTERM if this launcher dies."""
    preexec: Callable[[], None] | None = _die_with_parent if sys.platform == "linux" else None
    return subprocess.Popen(args, env=env, start_new_session=True, preexec_fn=preexec)


def cpu_plan(cpus: set[int]) -> tuple[set[int], set[int]] | None:
    """(service CPUs, replay + launcher CPUs), or None with fewer than two CPUs.

    A real exchange is on another machine; the replay exchange is not. Woken by loopback
    traffic, the service otherwise often runs on the CPU the replay is busy sending the next
    frames from, and its frame → signal latency then includes waiting for that CPU.
    """
    if len(cpus) < 2:
        return None
    last = max(cpus)
    return cpus - {last}, {last}


def pin(pid: int, cpus: set[int] | None) -> None:
    """Restrict ``pid`` to ``cpus`` (Linux); a no-op elsewhere or when not allowed."""
    if cpus and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, cpus)


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> bool:
    """Poll ``url`` until it answers (any status) or ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(0.2)
    return False


def wait_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes]) -> bool:
    """Wait until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.1)
    return False


def histogram_quantile(text: str, name: str, q: float) -> float | None:
    """Quantile of a Prometheus histogram from exposition text (linear within buckets)."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_n = 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1e-12)
        prev_le, prev_n = le, n
    return prev_le


def _sample(text: str, prefix: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def status_line(base: str) -> str:
    """Signals and latency percentiles (this service process, from /metrics) and the paper
    account (from /paper: it survives restarts)."""
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=2) as r:
            text = r.read().decode()
        with urllib.request.urlopen(f"{base}/paper", timeout=2) as r:
            paper = json.loads(r.read())
        with urllib.request.urlopen(f"{base}/model/health", timeout=2) as r:
            health = json.loads(r.read())
    except (OSError, ValueError) as exc:
        return f"status: service unavailable ({exc})"
    lat = "apprentice_signal_latency_seconds"
    p50, p99 = histogram_quantile(text, lat, 0.5), histogram_quantile(text, lat, 0.99)
    n = _sample(text, f"{lat}_count")
    us = "n/a" if p50 is None or p99 is None else f"p50 {p50 * 1e6:.0f} µs, p99 {p99 * 1e6:.0f} µs"
    return (
        f"status: {_sample(text, 'apprentice_signals_total'):.0f} signals, "
        f"paper account {paper['account']} (policy {paper.get('policy', '?')}): "
        f"{paper.get('fills', paper['trades'])} fills, {paper.get('round_trips', 0)} round trips, "
        f"equity {paper['equity']:.2f} USDT after {paper['fees']:.2f} fees; "
        f"frame→signal latency over {n:.0f} live candles: {us}; {live_scores(health)}"
        + (f"; {health['period']['statement']}" if "period" in health else "")
    )


def live_scores(health: dict[str, Any]) -> str:
    """Per head, the live log loss against the no-skill one, averaged over the symbols."""
    parts = []
    for head in ("volatility", "direction"):
        rows = [h[head] for h in health["symbols"].values() if h[head]["live"] is not None]
        if not rows:
            parts.append(f"{head}: not scored yet")
            continue
        live = sum(r["live"]["log_loss"] for r in rows) / len(rows)
        base = sum(r["no_skill"]["log_loss"] for r in rows) / len(rows)
        parts.append(
            f"{head} log loss {live:.4f} vs no-skill {base:.4f} "
            f"(last {min(r['n'] for r in rows)} candles of {len(rows)} symbols)"
        )
    return "live " + ", ".join(parts)


def reached(base: str, symbol: str, end_ms: int) -> bool:
    """Has the service a live signal for ``end_ms`` (or later) of ``symbol``?"""
    try:
        with urllib.request.urlopen(f"{base}/signal/{symbol}", timeout=2) as r:
            return int(json.loads(r.read())["candle_start"]) >= end_ms
    except (OSError, ValueError, KeyError):
        return False


def stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout_s: float = 15.0) -> None:
    """Signal a child once, wait, escalate to SIGKILL if it hangs."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    """Run the demo until Ctrl-C (or ``--duration``)."""
    try:
        args = build_parser().parse_args(argv)
    except ValueError:  # a non-numeric APPRENTICE_REPLAY_PORT, read as --replay-port's default
        print(f"demo: {REPLAY_PORT_VAR} must be a port number (0: any free one)", file=sys.stderr)
        return 2
    symbols = args.symbols
    env = dict(os.environ)
    env.setdefault("APPRENTICE_STATE_DIR", str(Path("state") / "demo"))
    if not 0 <= args.replay_port <= 65535:
        print(f"demo: {REPLAY_PORT_VAR} / --replay-port must be in 0..65535", file=sys.stderr)
        return 2
    replay_port = args.replay_port or free_port()
    env.update(
        APPRENTICE_SYMBOLS=symbols,
        APPRENTICE_INTERVAL="5",
        APPRENTICE_WS_URL=f"ws://127.0.0.1:{replay_port}/v5/public/linear",
        APPRENTICE_REST_URL=f"http://127.0.0.1:{replay_port}",
        APPRENTICE_PAPER_ENABLED="true",
    )
    try:
        settings = load_settings(
            **{
                k[len("APPRENTICE_") :].lower(): v
                for k, v in env.items()
                if k.startswith("APPRENTICE_") and k != REPLAY_PORT_VAR
            }
        )
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    # Both ports before anything starts: a taken one is one line naming what to set.
    problem = listen_problem(settings.host, settings.port, "APPRENTICE_HOST", "APPRENTICE_PORT")
    if problem is None and args.replay_port:
        problem = listen_problem("127.0.0.1", replay_port, "--replay-port", REPLAY_PORT_VAR)
        problem = problem and f"the replay exchange's {problem}"
    if problem is not None:
        print(f"demo: {problem}", file=sys.stderr)
        return 2
    try:
        card: ModelCard | None = ModelCard.load(settings.model_card_path)
    except ModelCardError:
        card = None  # the service refuses it with the full message
    step = 300_000
    start, period = replay_period(card, settings.symbols, args.start, args.end, step)
    print(f"demo: {period}", flush=True)
    if not args.resume:
        journal = Journal(settings.state_dir)
        journal.open()
        terms = journal.new_account(
            settings.paper_initial_usdt,
            settings.paper_notional_usdt,
            settings.paper_fee_bps,
            settings.paper_slippage_bps,
        )
        journal.close()
        print(
            f"demo: fresh paper account {terms.epoch} in {journal.path} (--resume keeps the last)"
        )
        # The replay starts from the first bundled candle again: a previous run's signal
        # journal is ahead of it in candle time, so it would hold back the live scores.
        for suffix in ("", "-wal", "-shm"):
            (settings.state_dir / f"{SIGNAL_JOURNAL_FILE}{suffix}").unlink(missing_ok=True)

    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    py = sys.executable
    replay_cmd = [py, "-m", "service.replay", "--symbols", symbols, "--interval", "5"]
    replay_cmd += ["--speed", str(args.speed), "--port", str(replay_port)]
    if start is not None:
        replay_cmd += ["--start", str(start)]
    replay = spawn(replay_cmd, env)
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    plan = None if args.no_pin else cpu_plan(allowed)
    service_cpus, replay_cpus = plan if plan else (None, None)
    pin(replay.pid, replay_cpus)
    pin(0, replay_cpus)  # this launcher polls now and then: keep it off the service's CPU
    service: subprocess.Popen[bytes] | None = None
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base = f"http://{host}:{settings.port}"
    rc = 0
    try:
        if not wait_port("127.0.0.1", replay_port, 30, replay):
            print("demo: the replay exchange did not start", file=sys.stderr)
            return 1
        service = spawn([py, "-m", "service"], env)
        pin(service.pid, service_cpus)
        if not wait_http(f"{base}/health", 60, service):
            print("demo: the service did not start (see its messages above)", file=sys.stderr)
            return 1
        print(
            f"\n  dashboard      {base}/\n  signal         {base}/signal/BTCUSDT\n"
            f"  all signals    {base}/signals\n  paper account  {base}/paper\n"
            f"  paper trades   {base}/paper/trades\n  metrics        {base}/metrics\n"
            f"  API docs       {base}/docs\n  replay (Bybit) ws://127.0.0.1:{replay_port}/v5/public/linear\n"
            f"\n  service pid {service.pid} (kill -9 it: it restarts and resumes from the journal),"
            f" replay pid {replay.pid}; Ctrl-C stops both\n",
            flush=True,
        )
        restarts = 0
        started = time.monotonic()
        next_status = started + STATUS_EVERY_S
        next_end_check = started
        while not stopping:
            time.sleep(0.2)
            if args.duration and time.monotonic() - started >= args.duration:
                break
            if args.end is not None and time.monotonic() >= next_end_check:
                next_end_check = time.monotonic() + 2.0
                if reached(base, settings.symbols[0], args.end):
                    print("demo: the replay reached --end", flush=True)
                    break
            if replay.poll() is not None:
                print(f"demo: the replay exchange exited ({replay.returncode})", file=sys.stderr)
                rc = 1
                break
            if service.poll() is not None:
                if service.returncode == REFUSED:
                    print(
                        "demo: the service refused to start (see above); stopping", file=sys.stderr
                    )
                    rc = 1
                    break
                restarts += 1
                if restarts > MAX_RESTARTS:
                    print("demo: the service keeps dying; giving up", file=sys.stderr)
                    rc = 1
                    break
                print(f"demo: service exited ({service.returncode}); restarting", flush=True)
                service = spawn([py, "-m", "service"], env)
                pin(service.pid, service_cpus)
                print(f"demo: service pid {service.pid}", flush=True)
            if time.monotonic() >= next_status:
                next_status += STATUS_EVERY_S
                print("demo " + status_line(base), flush=True)
        with contextlib.suppress(Exception):
            print("demo " + status_line(base), flush=True)
        return rc
    finally:
        print("demo: stopping", flush=True)
        stop(service, signal.SIGINT)
        stop(replay, signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
