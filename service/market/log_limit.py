"""Log lines that cannot flood: at most a few per minute per kind, the rest counted.

An exchange can send 100k notices a second and a failing disk fails every write; a line for
each grows the log without bound and hides everything else. :class:`LogLimit` lets the first
``burst`` lines of a *kind* (a fixed string from the code, never exchange text: the kinds
stay bounded) through per ``window_s``, counts the others (``on_suppressed``, e.g. a
Prometheus counter) and says on the next line it writes how many it held back. Pure apart
from the injected clock and logger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["LogLimit"]


class LogLimit:
    """Rate limiter for repeated log lines, keyed by kind (module docstring)."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 3,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        on_suppressed: Callable[[str], None] | None = None,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self.on_suppressed = on_suppressed
        self._state: dict[str, list[float]] = {}  # kind -> [window start, written, held back]

    def log(self, level: int, kind: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Write ``msg % args`` unless ``kind`` is over its rate; True if it was written."""
        now = self.clock()
        st = self._state.get(kind)
        if st is None or now - st[0] >= self.window_s:
            held = 0 if st is None else int(st[2])
            st = self._state[kind] = [now, 0.0, 0.0]
            if held:
                msg += f" ({held} similar lines held back in the last {self.window_s:g} s)"
        if st[1] >= self.burst:
            st[2] += 1
            if self.on_suppressed is not None:
                self.on_suppressed(kind)
            return False
        st[1] += 1
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def suppressed(self, kind: str) -> int:
        """Lines of ``kind`` held back in the current window."""
        st = self._state.get(kind)
        return 0 if st is None else int(st[2])
