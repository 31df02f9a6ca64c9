"""When to score: the collection window of a burst of closed candles (pure, no I/O, no clock).

Every symbol's candle closes at the same instant and the exchange sends one confirm per
symbol, so a burst of N confirms reaches the pipeline within a few milliseconds (the time
the feed takes to read N frames). The pipeline computes each candle's features as its
confirm arrives and holds its window; :class:`BurstGate` says when the burst is complete,
so the held windows are scored in one batched call and their signals stored together.

The rule, O(1) per candle:

* a symbol is *expected* in the burst of candle S when its newest candle is S − step (it is
  in step with the market); the gate counts the symbols standing at each candle start;
* the burst of S is complete when no symbol stands at S − step any more — every expected
  confirm has arrived — and is scored at once: the last confirm of a complete burst never
  waits, and a single symbol is its own complete burst (it is scored on arrival);
* a symbol that is behind (warming up, a gap waiting for REST) is not waited for; one that
  is expected but whose confirm does not come (refused, lost, delayed) holds the others for
  at most the pipeline's collection window (:data:`BURST_WINDOW_S`), after which what was
  collected is scored; a later confirm makes a burst of its own.

Why 25 ms: the window bounds the wait only when a burst is incomplete, and the last confirm
of a complete burst never waits for it. Measured on the many-symbol mock exchange
(``bench/scale.py``, loopback, this 2-core VM; ``apprentice_burst_spread_seconds`` and
``apprentice_bursts_total{scored}``): the first-to-last spread of a burst's confirms, as
the pipeline receives them, is what reading the N frames costs — p50 7 ms / p99 10 ms at
N = 50 (no burst ended by the window: one call of 50 rows), p99 ~41 ms at N = 500, where
the window ends ~60 % of bursts and a burst is scored in about three calls of ~190 rows.
Splitting costs little (a call of 190 rows is ~0.5 ms against ~14 ms for 500 single rows)
and even helps: what is scored while the rest of the frames are read is work the burst's
end no longer waits for. A longer window would only hold the first symbols longer; a
shorter one would split small bursts. Against the 100 ms target (last confirm → every
signal visible) a burst that waits out the window for a confirm that never comes still
stores its signals ~25 ms after its first confirm.
"""

from __future__ import annotations

BURST_WINDOW_S = 0.025


class BurstGate:
    """Counts symbols per newest candle start and tracks the open burst's candle."""

    __slots__ = ("_at", "start", "step_ms")

    def __init__(self, step_ms: int) -> None:
        self.step_ms = step_ms
        self._at: dict[int, int] = {}  # newest candle start -> symbols standing there
        self.start: int | None = None  # candle start of the open burst (live rows held)

    def moved(self, old: int | None, new: int) -> None:
        """A symbol's newest candle went from ``old`` (None: its first) to ``new``."""
        at = self._at
        if old is not None:
            left = at[old] - 1
            if left:
                at[old] = left
            else:
                del at[old]
        at[new] = at.get(new, 0) + 1

    def standing(self, start: int) -> int:
        """Symbols whose newest candle is ``start``."""
        return self._at.get(start, 0)

    @property
    def complete(self) -> bool:
        """True when the open burst has every expected confirm (none stands one step back)."""
        return self.start is not None and self._at.get(self.start - self.step_ms, 0) == 0

    def close(self) -> None:
        """The open burst was scored."""
        self.start = None
