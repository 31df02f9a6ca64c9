"""What a newcomer meets at the command line: ``python -m service`` and ``python -m
service.replay`` help, settings given as flags, bad addresses and paths, a taken port, and
what the service says about the paper account it starts with."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.http.app import create_app
from service.market.klines import KlineTable
from service.replay.faults import Faults
from service.settings import DEFAULT_MODEL, Settings

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("APPRENTICE_")}
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**base, **env},
        check=False,
    )


@pytest.fixture
def listening() -> Iterator[int]:
    """A port on 127.0.0.1 with a real listening socket on it (another program's)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_service_help_lists_every_setting_with_its_default() -> None:
    proc = _run("-m", "service", "--help")
    assert proc.returncode == 0, proc.stderr
    for field, info in Settings.model_fields.items():
        var = f"APPRENTICE_{field.upper()}"
        assert re.search(rf"^  {var}  \[", proc.stdout, re.M), f"{var} missing from --help"
        assert info.description, f"Settings.{field} has no description for --help"
    assert f"APPRENTICE_MODEL  [{DEFAULT_MODEL}]" in proc.stdout  # the model's default path
    assert "APPRENTICE_LOG_LEVEL  [info]" in proc.stdout


@pytest.mark.parametrize("argv", [["--port", "18105"], ["--port=18105"]])
def test_a_setting_given_as_a_flag_points_at_its_variable(argv: list[str]) -> None:
    proc = _run("-m", "service", *argv)
    assert proc.returncode == 2
    assert "APPRENTICE_PORT=18105 python -m service" in proc.stderr


def test_a_model_path_that_is_a_directory_says_so(tmp_path: Path) -> None:
    proc = _run("-m", "service", APPRENTICE_MODEL=str(tmp_path))
    assert proc.returncode == 2
    assert f"APPRENTICE_MODEL='{tmp_path}'" in proc.stderr
    assert "is a directory" in proc.stderr and "not found" not in proc.stderr


@pytest.mark.parametrize("host", ["not a host", "host.invalid", "192.0.2.1"])
def test_a_bad_host_fails_before_startup_naming_the_variable(
    host: str, fixture_model: Any, tmp_path: Path
) -> None:
    started = time.monotonic()
    proc = _run(
        "-m",
        "service",
        APPRENTICE_HOST=host,
        APPRENTICE_MODEL=str(fixture_model.onnx_path),
        APPRENTICE_STATE_DIR=str(tmp_path / "state"),
    )
    assert proc.returncode == 2, proc.stderr
    assert "APPRENTICE_HOST" in proc.stderr
    assert "Application startup" not in proc.stderr + proc.stdout
    assert time.monotonic() - started < 30


def test_a_taken_port_fails_before_startup_naming_the_variable(
    listening: int, fixture_model: Any, tmp_path: Path
) -> None:
    proc = _run(
        "-m",
        "service",
        APPRENTICE_PORT=str(listening),
        APPRENTICE_MODEL=str(fixture_model.onnx_path),
        APPRENTICE_STATE_DIR=str(tmp_path / "state"),
    )
    assert proc.returncode == 2
    assert f"port {listening} on 127.0.0.1 is not available" in proc.stderr
    assert "APPRENTICE_PORT=" in proc.stderr
    assert "Application startup" not in proc.stderr + proc.stdout


def test_demo_with_its_port_taken_says_which_variable_and_exits(
    listening: int, tmp_path: Path
) -> None:
    """`make demo` with the service's port taken: one line naming APPRENTICE_PORT, non-zero
    within seconds, nothing started (no restarts, no other server's answer as status)."""
    started = time.monotonic()
    proc = _run(
        "-m",
        "service.demo",
        timeout=30,
        APPRENTICE_PORT=str(listening),
        APPRENTICE_STATE_DIR=str(tmp_path / "state"),
    )
    assert proc.returncode != 0
    assert time.monotonic() - started < 15
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"port {listening}" in lines[0] and "APPRENTICE_PORT" in lines[0]
    assert proc.stdout == ""  # no journal opened, no child spawned
    assert not (tmp_path / "state").exists()


def test_demo_with_the_replay_port_taken_names_the_replay_setting(
    listening: int, tmp_path: Path
) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        service_port = free.getsockname()[1]
    proc = _run(
        "-m",
        "service.demo",
        "--replay-port",
        str(listening),
        timeout=30,
        APPRENTICE_PORT=str(service_port),
        APPRENTICE_STATE_DIR=str(tmp_path / "state"),
    )
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert "replay exchange" in line and f"port {listening}" in line
    assert "APPRENTICE_REPLAY_PORT" in line and "APPRENTICE_PORT=" not in line
    env = _run(
        "-m",
        "service.demo",
        timeout=30,
        APPRENTICE_REPLAY_PORT=str(listening),
        APPRENTICE_PORT=str(service_port),
        APPRENTICE_STATE_DIR=str(tmp_path / "s"),
    )
    assert env.returncode != 0 and "APPRENTICE_REPLAY_PORT" in env.stderr


def test_replay_help_shows_defaults_and_every_fault_name() -> None:
    proc = _run("-m", "service.replay", "--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for default in ("(default: 8765)", "(default: 300.0)", "(default: BTCUSDT,ETHUSDT,SOLUSDT)"):
        assert default in out
    from dataclasses import fields

    for f in fields(Faults):
        assert re.search(rf"^  {f.name}\s+\S+\s+\w", out, re.M), f"fault {f.name} not listed"
    assert "faults.py" not in out  # the help itself lists them


async def test_a_fresh_state_directory_is_not_reported_as_resumed(
    make_settings: Callable[..., Any],
    btc_5m: KlineTable,
    feed_factory_maker: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings()
    assert not settings.state_dir.exists()
    factory, _ = feed_factory_maker({"BTCUSDT": btc_5m}, 0)
    app = create_app(settings, feed_factory=factory, registry=CollectorRegistry())
    with caplog.at_level(logging.INFO, logger="service.runtime"):
        async with app.router.lifespan_context(app):
            await asyncio.sleep(0)
    (line,) = [r.getMessage() for r in caplog.records if "paper account" in r.getMessage()]
    assert "resumed" not in line and "no fills yet" in line
