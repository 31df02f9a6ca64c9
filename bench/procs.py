"""Subprocesses on loopback: free ports, start with a log file, wait for HTTP, stop cleanly."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nothing listens on right now (bound to port 0, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process whose stdout+stderr go to ``log``; stop() sends SIGINT, then kills."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, cwd=ROOT, env=full_env, stdout=self._fh, stderr=subprocess.STDOUT
        )

    def alive(self) -> bool:
        """True while the child runs."""
        return self.popen.poll() is None

    def tail(self, n: int = 2000) -> str:
        """The last n characters of the log (for error messages)."""
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGINT (graceful shutdown), then SIGKILL after ``timeout``."""
        if self.alive():
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._fh.close()


def python(*args: str) -> list[str]:
    """argv for this interpreter."""
    return [sys.executable, *args]


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on loopback: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_http(port: int, path: str, proc: Proc, timeout: float = 90.0, want: int = 200) -> float:
    """Poll until GET ``path`` answers ``want``; returns the seconds waited."""
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < timeout:
        if not proc.alive():
            raise RuntimeError(f"{proc.args} exited early:\n{proc.tail()}")
        try:
            status, body = http_get(port, path, timeout=2.0)
            if status == want:
                return time.monotonic() - t0
            last = f"{status} {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"GET {path} on :{port} never answered {want} ({last}):\n{proc.tail()}")


def wait_port(port: int, proc: Proc, timeout: float = 30.0) -> None:
    """Wait until something accepts TCP connections on ``port``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not proc.alive():
            raise RuntimeError(f"{proc.args} exited early:\n{proc.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on :{port}:\n{proc.tail()}")
