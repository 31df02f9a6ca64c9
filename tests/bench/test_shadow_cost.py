"""bench.shadow_cost: both populations measured, interleaved, on the real candle path."""

from __future__ import annotations

import asyncio

from bench import shadow_cost


def test_shadow_cost_measures_both_populations() -> None:
    out = asyncio.run(shadow_cost.measure(40))
    assert [len(out[k]) for k in ("champion", "with_challenger", "drain")] == [20, 20, 20]
    rows = shadow_cost.summary(out)
    assert all(r[2] > 0 for r in rows)
