"""tools/install_torch.py: CPU torch on a standard index, no hang where it is already local.

Real pip resolutions against package sources made here: a find-links folder and a PEP 503
``file://`` index holding stand-in torch wheels (a few hundred bytes each), with the
machine's pip configuration switched off. ``--dry-run`` resolves exactly as an install
would, without installing.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "install_torch.py"


def _wheel(folder: Path, version: str) -> Path:
    """A minimal valid wheel of a distribution named torch at ``version``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    files = {
        "torch/__init__.py": b"",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{name},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def _index(root: Path, version: str) -> str:
    """A PEP 503 simple index at ``root`` serving one torch wheel; its file:// URL."""
    wheel = _wheel(root / "files", version)
    project = root / "simple" / "torch"
    project.mkdir(parents=True)
    (project / "index.html").write_text(
        f'<html><body><a href="../../files/{wheel.name}">{wheel.name}</a></body></html>\n'
    )
    return (root / "simple").as_uri()


def _closed_port_url() -> str:
    """An http:// URL on loopback where nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/whl/cpu"


def _run(tmp_path: Path, links: Path, index_url: str) -> subprocess.CompletedProcess[str]:
    empty = tmp_path / "empty-index"
    (empty / "simple").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "VIRTUAL_ENV"}
    env.update(
        PIP_CONFIG_FILE=os.devnull,  # no pip.conf: only what this test configures
        PIP_INDEX_URL=(empty / "simple").as_uri(),  # "the standard index": no torch on it
        PIP_FIND_LINKS=str(links),
        PIP_RETRIES="0",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--index-url", index_url],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )


def test_standard_index_gets_the_cpu_build_from_the_extra_index(tmp_path: Path) -> None:
    """The configured pip offers only the plain (CUDA on Linux) 2.13.0: the CPU index is
    added for torch, and pip takes 2.13.0+cpu from it."""
    links = tmp_path / "links"
    _wheel(links, "2.13.0")
    cpu_index = _index(tmp_path / "cpu-index", "2.13.0+cpu")
    proc = _run(tmp_path, links, cpu_index)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"adding {cpu_index}" in proc.stdout
    assert "would install torch 2.13.0+cpu from" in proc.stdout
    assert "cpu-index/files/torch-2.13.0" in proc.stdout.splitlines()[-1]  # from that index


def test_a_local_cpu_build_skips_an_unreachable_index(tmp_path: Path) -> None:
    """Where the configured pip already provides 2.13.0+cpu (this machine: a wheel on disk),
    the extra index is never contacted, so an unreachable one costs nothing."""
    links = tmp_path / "links"
    _wheel(links, "2.13.0+cpu")
    unreachable = _closed_port_url()
    started = time.monotonic()
    proc = _run(tmp_path, links, unreachable)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already provides torch 2.13.0+cpu" in proc.stdout
    assert f"not using {unreachable}" in proc.stdout
    assert "would install torch 2.13.0+cpu" in proc.stdout
    assert time.monotonic() - started < 120


def test_a_gpu_index_is_used_although_a_cpu_build_is_local(tmp_path: Path) -> None:
    """TORCH_INDEX_URL=.../whl/cu126 asks for another build than the local +cpu one."""
    links = tmp_path / "links"
    _wheel(links, "2.13.0+cpu")
    gpu = tmp_path / "whl" / "cu126"
    _wheel(gpu / "files", "2.13.0+cu126")
    (gpu / "torch").mkdir(parents=True)
    name = "torch-2.13.0+cu126-py3-none-any.whl"
    (gpu / "torch" / "index.html").write_text(f'<a href="../files/{name}">{name}</a>\n')
    proc = _run(tmp_path, links, gpu.as_uri())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"adding {gpu.as_uri()}" in proc.stdout
    assert "would install torch 2.13.0+cu126" in proc.stdout


def test_no_cpu_build_anywhere_fails_quickly_with_the_reason(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    started = time.monotonic()
    proc = _run(tmp_path, links, _closed_port_url())
    assert proc.returncode != 0
    assert "finds no torch" in proc.stdout
    assert "cannot be resolved" in proc.stderr
    assert time.monotonic() - started < 120


@pytest.mark.parametrize(("version", "label"), [("2.13.0+cpu", "cpu"), ("2.13.0", "")])
def test_local_label(version: str, label: str) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import install_torch
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert install_torch.local_label(version) == label
    assert install_torch.wanted_label("https://download.pytorch.org/whl/cpu/") == "cpu"
    assert install_torch.torch_version() == "2.13.0"


def test_an_empty_index_url_takes_the_configured_index_alone(tmp_path: Path) -> None:
    """`make test TORCH_INDEX_URL=`: whatever the configured pip resolves (CUDA on Linux)."""
    links = tmp_path / "links"
    _wheel(links, "2.13.0")
    proc = _run(tmp_path, links, "")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "adding" not in proc.stdout and "not using" not in proc.stdout
    assert "would install torch 2.13.0 from" in proc.stdout
