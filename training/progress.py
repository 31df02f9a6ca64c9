"""One progress bar over a whole report plan, and the run log.

Every experiment module says up front how many training runs its part of the plan holds
(`n_runs(cfg)`), so the bar knows N before the first fit; each finished fit advances it by
one with a short label. Log lines go to the terminal (above the bar) and, flushed line by
line, to the run log, so a run killed half-way still leaves a readable log.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from tqdm import tqdm


class Progress:
    """k of N runs with elapsed time and ETA (tqdm), plus a timestamped log file."""

    def __init__(self, total: int, log_path: Path | None, enabled: bool = True) -> None:
        self.total = total
        self.done = 0
        self.t0 = time.perf_counter()
        self._log: IO[str] | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            # line-buffered; closed in close() (the object is the context manager)
            self._log = open(log_path, "w", buffering=1)  # noqa: SIM115
        self._bar = tqdm(
            total=total,
            unit="run",
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} runs [{elapsed}<{remaining}]",
        )

    def log(self, msg: str) -> None:
        """A timestamped line in the log (and on the terminal, above the bar)."""
        line = f"[{time.perf_counter() - self.t0:7.1f}s] {msg}"
        if self._log is not None:
            self._log.write(line + "\n")
        self._bar.write(line, file=sys.stderr)

    def step(self, label: str, seconds: float | None = None) -> None:
        """One training run finished."""
        self.done += 1
        self._bar.set_description_str(label[:40])
        self._bar.update(1)
        took = f" ({seconds:.1f}s)" if seconds is not None else ""
        if self._log is not None:
            self._log.write(
                f"[{time.perf_counter() - self.t0:7.1f}s] run {self.done}/{self.total}: "
                f"{label}{took}\n"
            )

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def close(self) -> None:
        self._bar.close()
        if self._log is not None:
            if self.done != self.total:
                self._log.write(f"note: {self.done} runs done, plan said {self.total}\n")
            self._log.close()
            self._log = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
