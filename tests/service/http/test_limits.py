"""The real server (``python -m service``) on loopback under a low descriptor limit.

Idle sockets, half-sent headers and huge unauthenticated bodies must not lock anyone out or
grow the process: the service runs with ``RLIMIT_NOFILE`` 160 and a cap of 64 connections
(scaled down from ~1,100 idle sockets under 1,024), and a real request is still served.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]
NOFILE = 160
TOKEN = "limits-token-42"


@dataclass
class Live:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
        raise AssertionError("no VmHWM")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _low_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, hard))


@pytest.fixture
def live(tmp_path: Path, model_writer: Any) -> Iterator[Live]:
    tmp = tmp_path
    model = model_writer(tmp / "models")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPRENTICE_")}
    env.update(
        APPRENTICE_MODEL=str(model.onnx_path),
        APPRENTICE_STATE_DIR=str(tmp / "state"),
        APPRENTICE_PORT=str(port),
        APPRENTICE_WS_URL="ws://127.0.0.1:9/v5/public/linear",  # refused: the feed retries
        APPRENTICE_REST_URL="http://127.0.0.1:9",
        APPRENTICE_ADMIN_TOKEN=TOKEN,
        APPRENTICE_HTTP_MAX_CONNECTIONS="64",
        APPRENTICE_HTTP_HEADER_TIMEOUT_S="1.0",
        APPRENTICE_HTTP_KEEP_ALIVE_S="1.0",
        APPRENTICE_LOG_LEVEL="warning",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        preexec_fn=_low_nofile,
    )
    srv = Live(proc, port)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{srv.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError("the service did not start")
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _idle(port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        out.append(s)
    return out


def _closed_by_server(s: socket.socket, within_s: float) -> bool:
    s.settimeout(within_s)
    try:
        return s.recv(1) == b""
    except (TimeoutError, ConnectionResetError):
        return False


def test_idle_connections_beyond_the_descriptor_limit_do_not_lock_anyone_out(live: Live) -> None:
    sockets = _idle(live.port, 250)  # more than the process may hold (160 descriptors)
    try:
        time.sleep(0.3)
        assert live.open_fds() < NOFILE - 20  # the oldest idle ones were closed for the new
        r = httpx.get(f"{live.url}/health", timeout=5)  # once: never accepted
        assert r.status_code == 200
        assert httpx.get(f"{live.url}/ready", timeout=5).status_code == 503  # served, honestly
    finally:
        for s in sockets:
            s.close()


def test_half_sent_headers_and_idle_keep_alive_are_timed_out(live: Live) -> None:
    loris = _idle(live.port, 20)
    for s in loris:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # ... and the rest never comes
    with httpx.Client(base_url=live.url, timeout=5) as kept:
        assert kept.get("/health").status_code == 200  # a keep-alive connection, then idle
        t0 = time.monotonic()
        assert all(_closed_by_server(s, 5.0) for s in loris)  # header timeout 1 s
        assert time.monotonic() - t0 < 5.0
    for s in loris:
        s.close()


def _chunked_post(port: int, path: str, mb: int, token: str | None) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"[" * (1 << 20))
    try:
        s.sendall(head.encode())
        for _ in range(mb):
            s.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # answered and closed before the whole body was sent: fine
    s.settimeout(10)
    try:
        return s.recv(4096)
    finally:
        s.close()


def test_huge_bodies_cost_no_memory_and_get_401_or_413(live: Live) -> None:
    before = live.peak_rss_mb()
    for _ in range(4):  # once: 200 MB without a token -> 401 but +585 MB of RSS
        reply = _chunked_post(live.port, "/admin/reload", 25, None)
        assert reply.startswith(b"HTTP/1.1 401"), reply[:80]
    reply = _chunked_post(live.port, "/paper/reset", 25, TOKEN)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:80]
    assert live.peak_rss_mb() - before < 40
    assert httpx.get(f"{live.url}/health", timeout=5).status_code == 200
