"""``python -m service.demo_refresh`` (``make demo-refresh``): the champion/challenger loop,
offline, in a few minutes.

Runs ``make demo``'s launcher (:mod:`service.demo`: replay exchange + service, accelerated)
with an admin token, ``APPRENTICE_AUTO_PROMOTE=true`` and a small
``APPRENTICE_PROMOTE_MIN_SCORED``, hands the service a pre-built challenger
(``POST /admin/challenger``) once it is ready, and prints what ``/model/health`` says while
the challenger is scored in shadow: paired candles, both models' live volatility log loss
over the same candles, their difference with its block-bootstrap interval, and the
promotion decision once the rule has the evidence it needs (promoted or refused, with why).

The challenger: ``--challenger PATH``, else the newest student ``python -m training refresh``
wrote under ``runs/refresh/``, else a copy of the committed student under a new version (the
same weights: it ties, so the rule promotes it; a refreshed student is the real case).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "models" / "student_pooled_5m.onnx"


def pick_challenger(state_dir: Path) -> Path:
    """The newest refreshed student, else a copy of the committed one with a new version."""
    made = sorted((ROOT / "runs" / "refresh").glob("*/student_pooled_5m.onnx"))
    if made:
        return made[-1]
    folder = state_dir / "incoming"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "student_pooled_5m_copy.onnx"
    shutil.copyfile(COMMITTED, target)
    card = json.loads(COMMITTED.with_suffix(".json").read_text())
    card.update(version=card["version"] + "-copy", onnx_file=target.name)
    target.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return target


def call(url: str, token: str = "", body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One JSON request; an HTTP error's body is returned with its status."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            out: dict[str, Any] = json.loads(resp.read())
            return out
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, **json.loads(exc.read() or b"{}")}


def shadow_line(block: dict[str, Any]) -> str:
    """One status line from /model/health's challenger block."""
    rule = block["rule"]
    vol = block["pooled"].get("volatility")
    line = f"shadow: {block['scored']}/{rule['min_scored']} paired candles"
    if vol:
        lo, hi = vol["ci95"]
        line += (
            f" · volatility log loss champion {vol['champion_log_loss']:.4f}"
            f" challenger {vol['challenger_log_loss']:.4f}"
            f" · diff {vol['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        )
    return line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m service.demo_refresh",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--challenger", type=Path, help="the challenger's .onnx (card beside it)")
    p.add_argument("--min-scored", type=int, default=150, help="APPRENTICE_PROMOTE_MIN_SCORED")
    p.add_argument("--speed", type=float, default=1200.0, help="replay speed (4 candles/s)")
    p.add_argument("--duration", type=float, default=180.0, help="stop after N seconds")
    args = p.parse_args(argv)
    state = Path(os.environ.get("APPRENTICE_STATE_DIR", "state/demo-refresh"))
    shutil.rmtree(state, ignore_errors=True)  # a fresh pair every run
    challenger = (args.challenger or pick_challenger(state)).resolve()
    token = secrets.token_urlsafe(16)
    port = os.environ.get("APPRENTICE_PORT", "8000")
    env = {
        **os.environ,
        "APPRENTICE_STATE_DIR": str(state),
        "APPRENTICE_MODEL_DIR": str(state / "models"),
        "APPRENTICE_ADMIN_TOKEN": token,
        "APPRENTICE_AUTO_PROMOTE": "true",
        "APPRENTICE_PROMOTE_MIN_SCORED": str(args.min_scored),
        "APPRENTICE_LOG_LEVEL": os.environ.get("APPRENTICE_LOG_LEVEL", "warning"),
    }
    cmd = [
        sys.executable,
        "-m",
        "service.demo",
        "--speed",
        str(args.speed),
        "--duration",
        str(args.duration),
    ]
    demo = subprocess.Popen(cmd, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and demo.poll() is None:
            try:
                if call(f"{base}/model/health").get("model"):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        if demo.poll() is not None:
            return demo.returncode or 1
        answer = call(f"{base}/admin/challenger", token, {"path": str(challenger)})
        if "challenger" not in answer:
            print(f"challenger refused: {answer.get('detail')}", file=sys.stderr)
            return 1
        ch = answer["challenger"]
        print(
            f"challenger {ch['name']} {ch['version']} scored in shadow (never served or "
            f"traded); champion {answer['champion']['version']}; auto-promotion after "
            f"{args.min_scored} paired candles. Watch {base}/model/health",
            flush=True,
        )
        seen, decided_at = 0, 0.0
        while demo.poll() is None:
            time.sleep(5)
            try:
                health = call(f"{base}/model/health")
            except (OSError, ValueError):
                continue
            block = health.get("challenger") or {}
            decisions = [d for d in block.get("decisions", []) if d["action"] != "challenger"]
            for d in reversed(decisions[: len(decisions) - seen]):
                print(f"DECISION: {d['outcome']} — {d['reason']}", flush=True)
                decided_at = decided_at or time.monotonic()
            seen = len(decisions)
            if decided_at:
                model = health["model"]
                print(
                    f"serving {model['name']} {model['version']}; the loop is shown, stopping "
                    f"(the service's state stays in {state})",
                    flush=True,
                )
                break
            if block.get("challenger"):
                print(shadow_line(block), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)
            demo.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
