"""The machine and software a benchmark ran on, for the header of BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata

PACKAGES = (
    "numpy",
    "onnxruntime",
    "onnx",
    "torch",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "websockets",
    "prometheus-client",
    "pydantic",
    "pyinstrument",
)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    """Installed versions of the packages the figures depend on."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def wrk_version() -> str:
    """`wrk -v` first line, or "not installed"."""
    try:
        res = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "not installed"
    return (res.stdout + res.stderr).strip().splitlines()[0] if (res.stdout + res.stderr) else "?"


def git_commit() -> str:
    """Short HEAD commit (and a + when the tree has local changes)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+" if dirty else "")


def header_lines(command: str) -> list[str]:
    """The first lines of BENCHMARKS.md."""
    load = os.getloadavg()
    vers = versions()
    pkg = ", ".join(f"{k} {v}" for k, v in vers.items())
    return [
        "# Benchmarks",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical cores, "
        f"{platform.system()} {platform.release()}",
        f"- load average at start: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)",
        f"- packages: {pkg}",
        f"- load generator: {wrk_version()}",
        f"- commit: {git_commit()}",
    ]
