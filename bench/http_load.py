"""Section 4: ``GET /signal/BTCUSDT`` under load vs a bare FastAPI route, same server settings.

The service runs as users run it (``python -m service``), the bare app under the same
``uvicorn.run`` arguments (:data:`bench.serve.UVICORN_KW`); ``wrk`` (Debian's) drives them
in alternating bounded rounds (service, bare, service, bare …) so both see the same
background load. The replay behind the service runs at 1× (a candle every five
minutes: idle), so the service answers from a warm signal and does no other work.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench import models, procs, pyload, stack
from bench.load_result import WrkResult
from bench.report import Section, Target
from service.demo import pin

CONNECTIONS = 8
THREADS = 1
_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def _us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    """Parse ``wrk --latency`` output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    reqs = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)", out, flags=re.M))
    return WrkResult(
        rps,
        reqs,
        int(bad.group(1)) if bad else 0,
        _us(pct.get("50", "")),
        _us(pct.get("90", "")),
        _us(pct.get("99", "")),
    )


def wrk(port: int, path: str, seconds: float) -> WrkResult:
    """One bounded wrk run on loopback (the Python generator when wrk is not installed)."""
    if shutil.which("wrk") is None:
        return pyload.load(port, path, seconds, CONNECTIONS)
    cmd = [
        "wrk",
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds:g}s",
        "--latency",
        f"http://127.0.0.1:{port}{path}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True)
    return parse_wrk(res.stdout)


APPS = {
    "service": "service `GET /signal/BTCUSDT` (as shipped)",
    "model-response": "what-if: `/signal` as before (a `SignalOut` through FastAPI's "
    "response_model pass per request)",
    "no-timer": "what-if: without the `RequestTimer` middleware",
    "bare": "bare FastAPI route",
}
VARIANTS = ("model-response", "no-timer")


def _cpus(pid: int) -> set[int] | None:
    """The CPUs ``pid`` may run on (None where the platform cannot say)."""
    import os

    return os.sched_getaffinity(pid) if hasattr(os, "sched_getaffinity") else None


def _signal_is_async() -> bool:
    import inspect

    from service.http import routes as api

    return inspect.iscoroutinefunction(api.get_signal)


def _why(gains: dict[str, float]) -> str:
    """What the service's route does that the bare one does not, priced by the what-ifs."""
    reasons = []
    if not _signal_is_async():
        reasons.append(
            "`get_signal` is a sync `def`, so FastAPI runs it in the anyio thread pool "
            "(thread hop + GIL hand-off per request)"
        )
    priced = ", ".join(f"{APPS[k].removeprefix('what-if: ')} {v:+.0%}" for k, v in gains.items())
    reasons.append(
        f"what-ifs in this run: {priced}; the rest is FastAPI's per-request work "
        "(routing, path-pattern validation, the request-limits layer) plus run-to-run noise"
    )
    return "; ".join(reasons)


def run(quick: bool = False) -> Section:
    """Measure and return the section."""
    sec = Section("4. HTTP")
    generator = (
        f"`wrk -t{THREADS} -c{CONNECTIONS} -d<s>s --latency`"
        if shutil.which("wrk")
        else f"the Python generator `bench/pyload.py` ({CONNECTIONS} keep-alive connections; "
        "`wrk` is not installed — `apt-get install wrk` for the faster generator)"
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
    student = models.load_student(tmp)
    seconds, rounds = (1.0, 1) if quick else (3.0, 3)
    path = f"/signal/{stack.SYMBOL}"
    bport = procs.free_port()
    bare = procs.Proc(procs.python("-m", "bench.serve", "--port", str(bport)), tmp / "bare.log")
    results: dict[str, list[WrkResult]] = {k: [] for k in APPS}
    variants: list[procs.Proc] = []
    try:
        with stack.running(tmp, student.path, speed=1.0, paper=True) as st:
            ports = {"service": st.service_port, "bare": bport}
            for name in VARIANTS:
                ports[name] = procs.free_port()
                proc = stack.start_service(
                    tmp,
                    st.replay_port,
                    ports[name],
                    student.path,
                    argv=("-m", "bench.serve_variant", name),
                )
                variants.append(proc)
                procs.wait_http(ports[name], path, proc)
            # every app on the service's CPU(s), wrk on the other one (this process's):
            # an app that shares wrk's CPU is woken without a cross-CPU wake-up and gains
            # from that alone, which is not a cost of the app
            placement = _cpus(st.service.popen.pid)
            for proc in (bare, *variants):
                pin(proc.popen.pid, placement)
            procs.wait_http(bport, "/health", bare)
            procs.wait_http(st.service_port, path, st.service)
            for port in ports.values():  # warm every app (imports, first responses)
                wrk(port, path, 1.0)
            for _ in range(rounds):
                for name in results:
                    results[name].append(wrk(ports[name], path, seconds))
    finally:
        for proc in variants:
            proc.stop()
        bare.stop()

    def total(rs: list[WrkResult]) -> float:
        return sum(r.requests for r in rs) / (seconds * len(rs))

    rows: list[list[object]] = []
    for name, rs in results.items():
        for i, r in enumerate(rs):
            rows.append([APPS[name], i + 1, r.rps, r.p50, r.p90, r.p99, r.non_2xx])
    ratio = total(results["service"]) / total(results["bare"])
    sec.add(
        f"{generator.replace('<s>', f'{seconds:g}')}, {rounds} alternating "
        "round(s) per app; one uvicorn worker each, same `uvicorn.run` arguments "
        "(`python -m service` and `bench/serve.py`: loop/http auto = uvloop + httptools, "
        "no access log). The bare app is one `async def` route returning a constant 6-key "
        "dict. Every app runs on the CPU(s) the service is pinned to, wrk on the other.",
        "",
    )
    sec.table(("app", "round", "req/s", "p50 µs", "p90 µs", "p99 µs", "non-2xx"), rows)
    sec.add(
        f"Mean throughput: service {total(results['service']):,.0f} req/s, bare "
        f"{total(results['bare']):,.0f} req/s, ratio {ratio:.2f}.",
    )
    gains = {k: total(results[k]) / total(results["service"]) - 1 for k in VARIANTS}
    sec.add(
        "",
        "What-ifs (`bench/serve_variant.py` patches the running service in memory; the "
        "service's files are untouched), throughput as a ratio to the bare route:",
        "",
    )
    sec.table(
        ("variant", "req/s", "ratio to bare", "change vs shipped"),
        [
            [
                APPS[k],
                total(results[k]),
                f"{total(results[k]) / total(results['bare']):.2f}",
                f"{total(results[k]) / total(results['service']) - 1:+.0%}",
            ]
            for k in ("service", *VARIANTS)
        ],
    )
    sec.targets.append(
        Target(
            "GET /signal throughput vs the bare route",
            "≥ 0.7×",
            f"{ratio:.2f}×",
            ratio >= 0.7,
            "" if ratio >= 0.7 else f"missed by {0.7 / ratio:.2f}×: {_why(gains)}",
        )
    )
    return sec
