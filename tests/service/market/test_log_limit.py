"""LogLimit (pure apart from an injected clock): a few lines per kind per window, the rest
counted and announced on the next line written."""

from __future__ import annotations

import logging

import pytest

from service.market.log_limit import LogLimit


def test_a_flood_is_a_few_lines_per_window_and_the_rest_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    held: list[str] = []
    limit = LogLimit(
        logging.getLogger("t.flood"),
        burst=3,
        window_s=60,
        clock=lambda: now[0],
        on_suppressed=held.append,
    )
    caplog.set_level(logging.WARNING, logger="t.flood")
    for i in range(100_000):
        limit.log(logging.WARNING, "notice", "notice %d", i)
    limit.log(logging.WARNING, "other", "another kind still gets through")
    assert [r.getMessage() for r in caplog.records] == [
        "notice 0",
        "notice 1",
        "notice 2",
        "another kind still gets through",
    ]
    assert len(held) == 99_997 and set(held) == {"notice"}
    now[0] = 60.0  # the next window: the count of what was held back comes with it
    limit.log(logging.WARNING, "notice", "notice again")
    assert caplog.records[-1].getMessage() == (
        "notice again (99997 similar lines held back in the last 60 s)"
    )
