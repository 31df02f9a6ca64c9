"""HTTP connection limits for uvicorn: idle connections cannot lock everyone out.

uvicorn times out a keep-alive connection only after a response; a connection that never
sends a request (or sends its headers a byte at a time) is kept for ever, so ~1,100 idle
sockets under a 1,024-descriptor limit stopped the service from accepting anyone
(issue 20). :func:`guarded_protocol` wraps uvicorn's HTTP protocol with two rules over one
:class:`ConnectionGuard` per server:

- **header timeout**: a connection must complete a request's headers within
  ``header_timeout_s`` of opening (or of its previous response), else it is closed;
- **connection cap**: at most ``max_connections`` connections are open; a new one beyond
  the cap closes the oldest connection that is waiting for a request (it may be the new one
  itself when every other is busy). A fresh client that sends its request at once is served
  even while an attacker keeps opening sockets: the attacker's own idle sockets go first.

:func:`uvicorn_options` adds uvicorn's own limits: ``timeout_keep_alive`` and
``limit_concurrency`` (a 503 backstop) and keeps the descriptor use under the process's
``RLIMIT_NOFILE``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from typing import Any

from service.settings import Settings

log = logging.getLogger(__name__)
FD_RESERVE = 64  # descriptors kept for everything else: journal, websocket, REST, logs, listener
MIN_CONNECTIONS = 8


class ConnectionGuard:
    """Shared bookkeeping of one server's connections (event-loop thread only)."""

    def __init__(self, max_connections: int, header_timeout_s: float) -> None:
        self.max_connections = max(1, max_connections)
        self.header_timeout_s = header_timeout_s
        self.open = 0
        self.waiting: OrderedDict[Any, None] = OrderedDict()  # no request in progress, oldest first
        self.evicted = 0
        self.timed_out = 0


def guarded_protocol(base: Any, guard: ConnectionGuard) -> Any:
    """A subclass of uvicorn's HTTP protocol ``base`` (httptools or h11) obeying ``guard``."""

    class Guarded(base):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._g_timer: asyncio.TimerHandle | None = None
            self._g_cycle: object = None
            guard.open += 1
            self._g_wait()
            if guard.open > guard.max_connections and guard.waiting:
                victim = next(iter(guard.waiting))  # the oldest idle one (maybe this one)
                guard.evicted += 1
                victim._g_drop()

        def connection_lost(self, exc: Exception | None) -> None:
            guard.open -= 1
            self._g_stop()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            cycle = getattr(self, "cycle", None)
            if cycle is not None and cycle is not self._g_cycle:
                self._g_cycle = cycle  # a request's headers are complete: it is no longer idle
                self._g_stop()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            cycle = getattr(self, "cycle", None)
            if not self.transport.is_closing() and (cycle is None or cycle.response_complete):
                self._g_wait()  # idle again: the next request's headers are on the clock

        # the guard's part ---------------------------------------------------------------
        def _g_wait(self) -> None:
            self._g_stop()
            guard.waiting[self] = None
            loop = asyncio.get_running_loop()
            self._g_timer = loop.call_later(guard.header_timeout_s, self._g_expired)

        def _g_stop(self) -> None:
            guard.waiting.pop(self, None)
            if self._g_timer is not None:
                self._g_timer.cancel()
                self._g_timer = None

        def _g_expired(self) -> None:
            guard.timed_out += 1
            self._g_drop()

        def _g_drop(self) -> None:
            self._g_stop()
            if not self.transport.is_closing():
                self.transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


def connection_budget(configured: int) -> int:
    """``configured`` connections, or fewer if the descriptor limit would not hold them."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    fit = max(MIN_CONNECTIONS, soft - FD_RESERVE)
    if fit < configured:
        log.warning(
            "at most %d HTTP connections: the descriptor limit is %d (ulimit -n)", fit, soft
        )
    return min(configured, fit)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config``: the guarded protocol and
    uvicorn's own limits, from ``settings``."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    cap = connection_budget(settings.http_max_connections)
    guard = ConnectionGuard(cap, settings.http_header_timeout_s)
    return {
        "http": guarded_protocol(AutoHTTPProtocol, guard),
        # a backstop: the guard keeps connections at the cap, so only a pile-up of
        # in-flight requests reaches this, and gets a 503 instead of a queue
        "limit_concurrency": cap + 32,
        "timeout_keep_alive": settings.http_keep_alive_s,
        "h11_max_incomplete_event_size": 16 * 1024,  # request line + headers, h11 only
    }
