"""Without the train extra, a training command says in one line which make target installs
it (issue 28: `python -m training report --quick` after `make demo` died with a traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# torch made unimportable, as in a venv that `make demo` built
BLOCK = (
    "import sys, runpy\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"
    "sys.meta_path.insert(0, Block())\n"
    "sys.argv = ['training', 'report', '--quick']\n"
    "runpy.run_module('training', run_name='__main__')\n"
)


def test_report_without_torch_prints_one_line_naming_the_make_target() -> None:
    r = subprocess.run(
        [sys.executable, "-c", BLOCK], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "needs torch" in lines[0] and "make test" in lines[0]
