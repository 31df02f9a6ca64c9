"""State you can trust (issue 27): a damaged or unwritable journal refuses to start, exit 2.

Each case runs the real command line (``python -m service``) against a state directory on
disk: a damaged page in ``paper.sqlite3``, a ``signals.sqlite3`` that is not a database,
and existing journals in a directory this user cannot write. Before, the first two exited 3
with a traceback from the lifespan (a supervisor restarts that in a loop) and the last
started with /ready 200 while every write failed.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.monitor.signal_journal import SignalJournal
from service.paper.journal import Journal

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534


def run_service(state: Path, *, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPRENTICE_")}
    env |= {"APPRENTICE_STATE_DIR": str(state), "APPRENTICE_PORT": "18152"}
    cmd = [sys.executable, "-m", "service"]
    if as_nobody:
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def journals(state: Path) -> None:
    """Both journals, with enough rows to span many pages."""
    j = Journal(state)
    j.open()
    j.db.executemany(
        "INSERT INTO accounts VALUES (?, 1e4, 1e3, 5.5, 1, 0)", [(i,) for i in range(1, 2000)]
    )
    j.close()
    s = SignalJournal(state)
    s.open()
    s.close()


def damage_a_page(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[2 * page : 3 * page] = b"\xa5" * page  # a page of the table: garbage
    path.write_bytes(bytes(data))


def test_a_damaged_paper_journal_is_exit_2_naming_the_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    journals(state)
    damage_a_page(state / "paper.sqlite3")
    r = run_service(state)
    assert r.returncode == 2, r.stderr[-2000:]
    assert str(state / "paper.sqlite3") in r.stderr and "move it aside" in r.stderr
    assert "Traceback" not in r.stderr
    assert (state / "paper.sqlite3").exists()  # never deleted


def test_a_signal_journal_that_is_not_a_database_is_exit_2(tmp_path: Path) -> None:
    state = tmp_path / "state"
    journals(state)
    (state / "signals.sqlite3").write_bytes(b"this is not an SQLite file at all" * 200)
    for extra in ("-wal", "-shm"):
        (state / f"signals.sqlite3{extra}").unlink(missing_ok=True)
    r = run_service(state)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "signals.sqlite3" in r.stderr and "move it aside" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can enter (pytest's tmp_path is private to this user)."""
    d = Path(tempfile.mkdtemp(prefix="apprentice-ro-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs root")
def test_existing_read_only_journals_refuse_to_start(shared_dir: Path) -> None:
    """Run as another user (root writes anywhere). The directory is that user's, the
    journals in it are root's and read-only to it: SQLite opens them and reads, and only the
    first write fails (before: a traceback from the lifespan, exit 3)."""
    state = shared_dir / "state"
    journals(state)
    os.chown(state, NOBODY, NOBODY)
    r = run_service(state, as_nobody=True)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "cannot be written" in r.stderr or "writable" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
