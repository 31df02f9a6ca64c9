"""What one HTTP load run measured, from wrk or the Python generator (bench.pyload)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WrkResult:
    """Requests/s and latency percentiles (µs) of one wrk run."""

    rps: float
    requests: int
    non_2xx: int
    p50: float
    p90: float
    p99: float
