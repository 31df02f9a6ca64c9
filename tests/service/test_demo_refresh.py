"""``python -m service.demo_refresh`` (make demo-refresh): a challenger is handed over, scored
in shadow, and the promotion decision is printed; the default challenger is a copy of the
committed student under a new version."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from service import demo_refresh

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_challenger_is_a_refreshed_student_else_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_root = tmp_path / "root"
    monkeypatch.setattr(demo_refresh, "ROOT", fake_root)
    copy = demo_refresh.pick_challenger(tmp_path / "state")
    card = json.loads(copy.with_suffix(".json").read_text())
    assert card["version"] == "1.0.0-copy" and card["onnx_file"] == copy.name
    made = fake_root / "runs" / "refresh" / "20261207T000000" / "student_pooled_5m.onnx"
    made.parent.mkdir(parents=True)
    made.write_bytes(b"")
    assert demo_refresh.pick_challenger(tmp_path / "state") == made


def test_demo_refresh_prints_the_shadow_scores_and_the_decision(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    state = tmp_path / "state"
    challenger = demo_refresh.pick_challenger(tmp_path / "incoming")
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPRENTICE_")}
    env.update(APPRENTICE_PORT=str(port), APPRENTICE_STATE_DIR=str(state), PYTHONUNBUFFERED="1")
    argv = ["--challenger", str(challenger), "--min-scored", "30", "--duration", "120"]
    proc = subprocess.run(
        [sys.executable, "-m", "service.demo_refresh", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "scored in shadow (never served or traded)" in out
    assert "DECISION: promoted" in out, out[-2000:]
    assert "serving student_pooled_5m 1.0.0-copy" in out
    roles = json.loads((state / "models.json").read_text())
    assert roles["champion"]["version"] == "1.0.0-copy"
