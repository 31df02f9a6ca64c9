"""Reading a running service from outside: the exchange's close log, /proc, HTTP probes,
the Prometheus text and a py-spy profile (the scale benchmark's instruments)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from bench import procs

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class BurstLog:
    """Tails the exchange's JSON lines of close times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0

    def skip(self) -> None:
        """Forget every line written so far."""
        self._pos = self.path.stat().st_size if self.path.exists() else 0

    def next(self, timeout_s: float) -> dict[str, float]:
        """The next close's line (waits for it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.path.exists():
                with open(self.path) as fh:
                    fh.seek(self._pos)
                    line = fh.readline()
                    if line.endswith("\n"):
                        self._pos = fh.tell()
                        out: dict[str, float] = json.loads(line)
                        return out
            time.sleep(0.002)
        raise TimeoutError(f"no close from the exchange within {timeout_s:.0f}s")


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid``, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return math.nan


def signal_start(port: int, symbol: str) -> int | None:
    status, body = procs.http_get(port, f"/signal/{symbol}", timeout=10.0)
    return int(json.loads(body)["candle_start"]) if status == 200 else None


def all_at(port: int, candle: int, n: int) -> bool:
    status, body = procs.http_get(port, "/signals", timeout=30.0)
    if status != 200:
        return False
    signals = json.loads(body)["signals"]
    return len(signals) == n and all(int(s["candle_start"]) >= candle for s in signals)


def visible(port: int, candle: int, last_symbol: str, n: int, deadline: float) -> float | None:
    """perf_counter() when every symbol's signal of ``candle`` was seen, or None."""
    while time.perf_counter() < deadline:
        start = signal_start(port, last_symbol)
        seen = time.perf_counter()
        if start is not None and start >= candle:
            while time.perf_counter() < deadline:
                if all_at(port, candle, n):
                    return seen
                time.sleep(0.005)
                seen = time.perf_counter()
            return None
        time.sleep(0.0005)
    return None


def metrics_text(port: int) -> str:
    return procs.http_get(port, "/metrics", timeout=30.0)[1].decode()


def sample(text: str, name: str, label: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (not label or label in line) and not line.startswith("#"):
            head, value = line.rsplit(" ", 1)
            if head == name or head.startswith(name + "{"):
                total += float(value)
    return total


def by_label(text: str, name: str, label: str) -> list[tuple[str, float]]:
    """``name``'s samples as (value of ``label``, sample), e.g. rejected klines by reason."""
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{") and f'{label}="' in line:
            value = line.split(f'{label}="', 1)[1].split('"', 1)[0]
            out.append((value, float(line.rsplit(" ", 1)[1])))
    return out


def buckets(text: str, name: str) -> list[tuple[float, float]]:
    out = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((math.inf if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return sorted(out)


def top_frames(folded: Path, k: int = 8) -> list[tuple[str, float]]:
    """Share of samples per service package (the innermost ``service/...`` frame's folder,
    ``other``: no service frame — the interpreter, asyncio, uvicorn between callbacks)."""
    per: dict[str, int] = {}
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        total += c
        mine = [f for f in stack.split(";") if "(service/" in f]
        key = "other"
        if mine:
            path = mine[-1].split("(", 1)[1].rsplit(":", 1)[0]  # service/paper/account.py
            parts = path.split("/")
            key = "/".join(parts[:2]) if len(parts) > 2 else path
            if key == "service/__main__.py":
                key = "other"  # uvicorn's loop between callbacks
        per[key] = per.get(key, 0) + c
    ranked = sorted(per.items(), key=lambda kv: -kv[1])[:k]
    return [(name, c / total) for name, c in ranked] if total else []


def series_by_family(text: str, k: int = 6) -> list[tuple[str, int]]:
    """The metric families with the most samples in one scrape."""
    per: dict[str, int] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            for suffix in ("_bucket", "_created", "_total", "_sum", "_count"):
                name = name.removesuffix(suffix)
            per[name] = per.get(name, 0) + 1
    return sorted(per.items(), key=lambda kv: -kv[1])[:k]
