"""The replay exchange and the real service as two loopback subprocesses."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import procs
from service.demo import cpu_plan
from service.demo import pin as pin_to

SYMBOL = "BTCUSDT"
INTERVAL = "5"


@dataclass
class Stack:
    """Ports and processes of a running replay + service pair."""

    replay: procs.Proc
    service: procs.Proc
    replay_port: int
    service_port: int

    @property
    def ws_url(self) -> str:
        """The replay's public websocket."""
        return f"ws://127.0.0.1:{self.replay_port}/v5/public/linear"


@contextlib.contextmanager
def running(
    tmp: Path,
    model: Path,
    *,
    speed: float,
    updates_per_candle: int = 4,
    paper: bool = True,
    symbols: tuple[str, ...] = (SYMBOL,),
    pin: bool = True,
    prefill: Callable[[Path], object] | None = None,
    argv: tuple[str, ...] = ("-m", "service"),
    env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Start ``python -m service.replay`` then ``python -m service`` against it; wait for /ready.

    ``pin``: like ``make demo``, keep the replay (and this process, the client) on one CPU
    and the service on the others — a real exchange is not on the service's machine.
    ``prefill(state_dir)`` runs before the service starts (e.g. a large paper journal);
    ``argv`` and ``env`` start the service another way (``bench.trace_path``).
    """
    rport, sport = procs.free_port(), procs.free_port()
    mine = os.sched_getaffinity(0) if pin and hasattr(os, "sched_getaffinity") else None
    plan = cpu_plan(mine) if mine else None
    replay = procs.Proc(
        procs.python(
            "-m",
            "service.replay",
            "--symbols",
            ",".join(symbols),
            "--interval",
            INTERVAL,
            "--speed",
            str(speed),
            "--port",
            str(rport),
            "--history-bars",
            "1000",
            "--updates-per-candle",
            str(updates_per_candle),
        ),
        tmp / f"replay-{rport}.log",
    )
    service: procs.Proc | None = None
    try:
        if plan:
            pin_to(replay.popen.pid, plan[1])
            pin_to(0, plan[1])
        procs.wait_port(rport, replay)
        service = start_service(
            tmp,
            rport,
            sport,
            model,
            paper=paper,
            symbols=symbols,
            prefill=prefill,
            argv=argv,
            env=env,
        )
        if plan:
            pin_to(service.popen.pid, plan[0])
        procs.wait_http(sport, "/ready", service, timeout=120.0)
        yield Stack(replay, service, rport, sport)
    finally:
        if service is not None:
            service.stop()
        replay.stop()
        if plan:
            pin_to(0, mine)


def start_service(
    tmp: Path,
    replay_port: int,
    port: int,
    model: Path,
    *,
    paper: bool = True,
    argv: tuple[str, ...] = ("-m", "service"),
    symbols: tuple[str, ...] = (SYMBOL,),
    prefill: Callable[[Path], object] | None = None,
    env: dict[str, str] | None = None,
) -> procs.Proc:
    """``python -m service`` (or ``argv``) against the replay on ``replay_port``."""
    state = tmp / f"state-{port}"
    state.mkdir(parents=True, exist_ok=True)
    if prefill is not None:
        prefill(state)
    full_env = {
        **(env or {}),
        "APPRENTICE_SYMBOLS": ",".join(symbols),
        "APPRENTICE_INTERVAL": INTERVAL,
        "APPRENTICE_WS_URL": f"ws://127.0.0.1:{replay_port}/v5/public/linear",
        "APPRENTICE_REST_URL": f"http://127.0.0.1:{replay_port}",
        "APPRENTICE_MODEL": str(model),
        "APPRENTICE_STATE_DIR": str(state),
        "APPRENTICE_HOST": "127.0.0.1",
        "APPRENTICE_PORT": str(port),
        "APPRENTICE_LOG_LEVEL": "warning",
        "APPRENTICE_PAPER_ENABLED": "true" if paper else "false",
    }
    return procs.Proc(procs.python(*argv), tmp / f"service-{port}.log", full_env)
