"""``python -m bench.gc_freeze``: does freezing the service's start-up objects pay?

Run in a fresh interpreter that imports what the service imports and builds what it
builds at start (the app, the runtime, the verified student), so the heap is the
service's, not the benchmark's (which holds torch). Prints JSON: the tracked objects and
the median / max µs of ``gc.collect(gen)`` for each generation, unfrozen and after
``gc.freeze()`` (what ``Runtime.start`` does).
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _times(gen: int, n: int = 15) -> tuple[float, float]:
    xs = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        gc.collect(gen)
        xs.append((time.perf_counter_ns() - t0) / 1e3)
    return statistics.median(xs), max(xs)


def probe() -> dict[str, Any]:
    """Measure in this process (call it in a fresh one: see :func:`measure`)."""
    from service.http.app import create_app
    from service.model.predictor import Predictor
    from service.settings import Settings

    settings = Settings()
    create_app(settings)
    Predictor.load(settings.model)
    gc.collect()
    out: dict[str, Any] = {"objects": len(gc.get_objects())}
    out["unfrozen"] = {str(g): _times(g) for g in (0, 1, 2)}
    gc.freeze()
    out["frozen_objects"] = gc.get_freeze_count()
    out["frozen"] = {str(g): _times(g) for g in (0, 1, 2)}
    gc.unfreeze()
    return out


def measure() -> dict[str, Any]:
    """:func:`probe` in a fresh interpreter."""
    res = subprocess.run(
        [sys.executable, "-m", "bench.gc_freeze"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    print(json.dumps(probe()))
