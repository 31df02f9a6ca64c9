"""The entry point: torch-free imports, --help, refusing bad configuration or models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("APPRENTICE_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=60
    )


def test_service_never_imports_torch() -> None:
    code = (
        "import sys, service.http.app, service.__main__, service.runtime, service.demo;"
        "bad = [m for m in ('torch', 'training') if m in sys.modules];"
        "assert not bad, bad"
    )
    r = _run(["-c", code])
    assert r.returncode == 0, r.stderr


def test_help_lists_the_configuration() -> None:
    r = _run(["-m", "service", "--help"])
    assert r.returncode == 0
    assert "APPRENTICE_SYMBOLS" in r.stdout and "/signal/{symbol}" in r.stdout


def test_bad_setting_refuses_to_start_with_what_to_fix() -> None:
    r = _run(["-m", "service"], {"APPRENTICE_INTERVAL": "7"})
    assert r.returncode == 2
    assert "APPRENTICE_INTERVAL" in r.stderr and "Traceback" not in r.stderr


def test_mismatching_model_refuses_to_start(fixture_model: Any, tmp_path: Path) -> None:
    fixture_model.onnx_path.write_bytes(fixture_model.onnx_path.read_bytes() + b"\0")
    r = _run(
        ["-m", "service"],
        {"APPRENTICE_MODEL": str(fixture_model.onnx_path), "APPRENTICE_STATE_DIR": str(tmp_path)},
    )
    assert r.returncode == 2
    assert "sha256" in r.stderr and "Traceback" not in r.stderr
