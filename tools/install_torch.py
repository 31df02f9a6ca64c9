"""Install the torch build the project wants (CPU by default) into the running interpreter.

``make`` runs this before the ``train`` extra, as ``$(VENV)/bin/python tools/install_torch.py
--index-url $(TORCH_INDEX_URL)``. On a standard package index ``pip install torch==2.13.0``
on Linux takes a CUDA build of several GB; PyTorch's own index for one build
(``https://download.pytorch.org/whl/cpu``, ``.../whl/cu126``, ...) serves the wheels whose
local version label is that last path segment (``2.13.0+cpu``). So:

1. the version is the ``torch==...`` pin of pyproject's ``train`` extra (one place to bump);
2. torch already installed with the wanted label: nothing to do;
3. the configured pip (its index, find-links, pip.conf) is asked, without downloading
   anything, what ``torch==VERSION`` resolves to; if that already is the wanted build (a
   machine with a local CPU wheel, a mirror that carries PyTorch's builds), the extra index
   is not used, so an unreachable one cannot hang the install;
4. otherwise torch is installed with ``--extra-index-url INDEX`` for this step only; pip
   prefers ``2.13.0+cpu`` there over PyPI's ``2.13.0`` (a local label sorts higher).

An empty ``--index-url`` installs torch from the configured index alone. ``--dry-run``
resolves and prints the decision without installing (the tests use it).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE_TIMEOUT_S = 300.0


def torch_version(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """X of the ``torch==X`` pin of the ``train`` extra (runs before anything but pip is
    installed, so no ``packaging``: the pin is an exact ``==`` by the project's rule)."""
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    for line in extras["train"]:
        match = re.fullmatch(r"\s*torch\s*==\s*([0-9][0-9A-Za-z.]*)\s*", line)
        if match:
            return match.group(1)
    raise SystemExit(f"install_torch: no exact torch==X pin in {pyproject} [train]")


def wanted_label(index_url: str) -> str:
    """``https://download.pytorch.org/whl/cpu`` -> ``cpu`` (PyTorch names its indexes so)."""
    return index_url.rstrip("/").rsplit("/", 1)[-1]


def local_label(version: str) -> str:
    """``2.13.0+cpu`` -> ``cpu``; ``2.13.0`` -> ``""``."""
    return version.partition("+")[2].lower()


def public(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``."""
    return version.partition("+")[0]


def installed_version() -> str | None:
    """The torch version installed in this interpreter's environment, if any."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def _pip(args: list[str], timeout_s: float | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def resolve(requirement: str, pip_args: list[str]) -> tuple[str, str] | None:
    """(version, url) that pip would install for ``requirement`` (metadata only), or None."""
    try:
        proc = _pip(
            [
                "install",
                "--dry-run",
                "--ignore-installed",
                "--no-deps",
                "--quiet",
                "--report",
                "-",
                *pip_args,
                requirement,
            ],
            timeout_s=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None
    try:
        item = json.loads(proc.stdout)["install"][0]
    except (ValueError, KeyError, IndexError):
        return None
    return str(item["metadata"]["version"]), str(item.get("download_info", {}).get("url", ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tools/install_torch.py",
        description="Install torch (pyproject's pin) as the build of INDEX (default: CPU).",
    )
    p.add_argument(
        "--index-url",
        default="https://download.pytorch.org/whl/cpu",
        help="PyTorch index of the wanted build, used as an extra index for torch only "
        "('' = the configured index alone)",
    )
    p.add_argument("-c", "--constraint", action="append", default=[], help="pip constraints")
    p.add_argument("--dry-run", action="store_true", help="resolve and print, install nothing")
    args = p.parse_args(argv)
    version = torch_version()
    requirement = f"torch=={version}"
    pins = [a for c in args.constraint for a in ("-c", c)]
    label = wanted_label(args.index_url) if args.index_url else None
    have = installed_version()
    wanted_here = have is not None and (label is None or local_label(have) == label)
    if not args.dry_run and have is not None and public(have) == version and wanted_here:
        print(f"install_torch: torch {have} already installed")
        return 0
    extra: list[str] = []
    if label is not None:
        found = resolve(requirement, pins)
        if found is not None and local_label(found[0]) == label:
            print(
                f"install_torch: the configured pip already provides torch {found[0]} "
                f"({found[1] or 'its index'}); not using {args.index_url}"
            )
        else:
            got = f"resolves to torch {found[0]}" if found else "finds no torch"
            print(f"install_torch: the configured pip {got}; adding {args.index_url} for torch")
            extra = ["--extra-index-url", args.index_url]
    if args.dry_run:
        found = resolve(requirement, [*pins, *extra])
        if found is None:
            print(f"install_torch: {requirement} cannot be resolved", file=sys.stderr)
            return 1
        print(f"install_torch: would install torch {found[0]} from {found[1]}")
        return 0
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", *pins, *extra, requirement], check=False
    )
    if proc.returncode != 0:
        hint = (
            f" (is {args.index_url} reachable? TORCH_INDEX_URL= uses the configured index alone)"
            if extra
            else ""
        )
        print(f"install_torch: pip could not install {requirement}{hint}", file=sys.stderr)
        return proc.returncode
    print(f"install_torch: torch {installed_version()} installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
