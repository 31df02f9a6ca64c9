"""The Dockerfile without a Docker engine: what it installs, copies, runs and probes.

The install set is resolved for real: the Dockerfile's ``pip install`` arguments against
pyproject's metadata, then the requirements of each dependency, transitively, from the
installed distributions' metadata. The health probe is executed against loopback servers.
"""

from __future__ import annotations

import fnmatch
import http.server
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# onnx is a runtime dependency: the service reads the student graph to stream it
TRAINING_ONLY = {"torch", "onnxscript", "matplotlib", "tqdm"}


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    out = []
    for line in lines:
        instr, _, args = line.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def _stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instr, args in _instructions(dockerfile):
        if instr == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instr, args))
    return stages


def _pip_installs(dockerfile: Path) -> list[list[str]]:
    """The argument lists of every ``pip install`` in a RUN instruction."""
    installs = []
    for instr, args in _instructions(dockerfile):
        if instr != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            tokens = shlex.split(command)
            for i in range(len(tokens) - 1):
                if tokens[i] == "pip" and tokens[i + 1] == "install":
                    installs.append(tokens[i + 2 :])
    return installs


def _closure(requirements: list[Requirement]) -> set[str]:
    """Canonical names of ``requirements`` and everything they require, extras honoured."""
    seen: set[tuple[str, frozenset[str]]] = set()
    stack = list(requirements)
    while stack:
        req = stack.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = importlib.metadata.distribution(req.name)
        for line in dist.requires or []:
            sub = Requirement(line)
            extras = req.extras or {""}
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                stack.append(sub)
    return {name for name, _ in seen}


def test_image_installs_the_runtime_dependencies_only(helpers: ModuleType) -> None:
    """`pip install .` with no extras = pyproject's [project] dependencies: no torch in
    them nor among their own requirements."""
    installs = _pip_installs(helpers.DOCKERFILE)
    assert installs == [["-c", "constraints.txt", "."]], (
        f"expected exactly one `pip install -c constraints.txt .`, got {installs}"
    )
    project = tomllib.loads((helpers.ROOT / "pyproject.toml").read_text())["project"]
    runtime = [Requirement(d) for d in project["dependencies"]]
    closure = _closure(runtime)
    assert "uvicorn" in closure and "onnxruntime" in closure  # the resolution did run
    assert not closure & TRAINING_ONLY, f"training packages in the image: {closure & TRAINING_ONLY}"
    assert not {n for n in closure if n.startswith("nvidia-")}
    # and the extras that would bring them are never requested
    assert "torch==2.13.0" in project["optional-dependencies"]["train"]
    assert not any("[" in arg for arg in installs[0])


def _pins(path: Path) -> dict[str, str]:
    """canonical name -> version of a constraints file's ``name==version`` lines."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{line}: pin with =="
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_constraints_pin_everything_the_image_and_make_install(helpers: ModuleType) -> None:
    """constraints.txt (make lock) pins every package of the image's install set and of the
    extras make installs, at versions that satisfy pyproject; `make` installs with it too."""
    constraints = helpers.ROOT / "constraints.txt"
    pins = _pins(constraints)
    project = tomllib.loads((helpers.ROOT / "pyproject.toml").read_text())["project"]
    runtime = [Requirement(d) for d in project["dependencies"]]
    extras = [Requirement(d) for e in ("train", "dev") for d in project["optional-dependencies"][e]]
    stale = "constraints.txt is stale: run `make lock`"
    declared = {canonicalize_name(r.name) for r in runtime + extras}
    assert not declared - set(pins), f"{stale} (not pinned: {sorted(declared - set(pins))})"
    for closure in (_closure(runtime), _closure(runtime + extras)):
        missing = closure - set(pins) - {"apprentice"}
        assert not missing, f"{stale} (not pinned: {sorted(missing)})"
    for req in runtime + extras:
        version = pins[canonicalize_name(req.name)]
        assert req.specifier.contains(version, prereleases=True), f"{stale} ({req} vs {version})"
    assert pins["torch"] == "2.13.0"  # no local label: the CPU and GPU builds both satisfy it
    makefile = (helpers.ROOT / "Makefile").read_text()
    assert "CONSTRAINTS := constraints.txt" in makefile
    assert makefile.count("-c $(CONSTRAINTS)") >= 3  # service, torch and extras installs
    (copy,) = [
        args
        for instr, args in _stages(helpers.DOCKERFILE)[0]
        if instr == "COPY" and "constraints.txt" in args
    ]
    assert copy.split()[-1] == "./"


def test_base_image_is_a_pinned_python_311_slim(helpers: ModuleType) -> None:
    text = helpers.DOCKERFILE.read_text()
    (image,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", image), image
    froms = [args for instr, args in _instructions(helpers.DOCKERFILE) if instr == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)


def test_runtime_stage_copies_code_models_data_and_runs_unprivileged(
    helpers: ModuleType,
) -> None:
    runtime = _stages(helpers.DOCKERFILE)[-1]
    copies = [args for instr, args in runtime if instr == "COPY" and "--from" not in args]
    for source in ("service/", "models/", "data/"):
        assert any(c.split()[0] == source for c in copies), f"runtime stage lacks COPY {source}"
    users = [args for instr, args in runtime if instr == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    env = " ".join(args for instr, args in runtime if instr == "ENV")
    model = re.search(r"APPRENTICE_MODEL=(\S+)", env)
    assert model and model.group(1).startswith("/app/models/")
    from service.settings import DEFAULT_MODEL

    assert Path(model.group(1)).name == DEFAULT_MODEL.name
    assert "APPRENTICE_HOST=0.0.0.0" in env  # reachable from outside the container
    state = re.search(r"APPRENTICE_STATE_DIR=(\S+)", env)
    assert state and any(
        instr == "RUN" and f"chown apprentice:apprentice {state.group(1)}" in args
        for instr, args in runtime
    ), "the state directory must be writable by the service user"


def test_process_runs_in_exec_form(helpers: ModuleType) -> None:
    """Exec form (a JSON array) keeps /bin/sh out of the way, so SIGTERM reaches python."""
    runtime = _stages(helpers.DOCKERFILE)[-1]
    cmds = [args for instr, args in runtime if instr in {"CMD", "ENTRYPOINT"}]
    assert cmds, "no CMD/ENTRYPOINT"
    for args in cmds:
        assert isinstance(json.loads(args), list), f"shell form: {args}"
    assert json.loads(cmds[-1]) == ["python", "-m", "service"]


@pytest.fixture
def health_server(request: pytest.FixtureRequest) -> Iterator[int]:
    """A loopback server answering /ready with the status given by the test's param (and
    /health with 200: a live but unready service is not healthy)."""
    status = request.param

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            codes = {"/ready": status, "/health": 200}
            self.send_response(codes.get(self.path, 404))
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("health_server", "healthy"), [(200, True), (503, False)], indirect=["health_server"]
)
def test_healthcheck_probe_follows_readiness(
    helpers: ModuleType, health_server: int, healthy: bool
) -> None:
    env = {**os.environ, "APPRENTICE_PORT": str(health_server)}
    proc = subprocess.run(helpers.healthcheck_argv(), env=env, capture_output=True, timeout=30)
    assert (proc.returncode == 0) is healthy, proc.stderr


def test_healthcheck_probe_fails_when_nothing_listens(helpers: ModuleType) -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "APPRENTICE_PORT": str(port)}
    proc = subprocess.run(helpers.healthcheck_argv(), env=env, capture_output=True, timeout=30)
    assert proc.returncode != 0


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule, enough for these patterns: the last matching pattern
    wins, `!` re-includes, a pattern matching a directory covers what is under it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        regex = fnmatch.translate(pat).replace(".*.*", ".*")
        if pat.startswith("**/"):
            regex = f"(?:.*/)?{fnmatch.translate(pat[3:])}"
        if any(re.fullmatch(regex, p) for p in prefixes):
            ignored = not negate
    return ignored


def _dockerignore(helpers: ModuleType) -> list[str]:
    text = (helpers.ROOT / ".dockerignore").read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def test_dockerignore_keeps_what_the_image_copies_and_nothing_else(helpers: ModuleType) -> None:
    patterns = _dockerignore(helpers)
    sources = {
        src
        for instr, args in _instructions(helpers.DOCKERFILE)
        if instr == "COPY" and "--from" not in args
        for src in args.split()[:-1]
    }
    assert {"pyproject.toml", "README.md", "constraints.txt", "service/", "models/", "data/"} <= (
        sources
    )
    for src in sources:
        assert not _ignored(src.rstrip("/") + ("/x" if src.endswith("/") else ""), patterns), src
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "training/distill/train.py",
        "tests/deploy/test_dockerfile.py",
        "reports/report.md",
        "state/journal.sqlite",
        "service/__pycache__/app.cpython-311.pyc",
        ".pytest_cache/v/cache",
    ):
        assert _ignored(path, patterns), f"{path} would enter the build context"


def test_build_stage_context_builds_the_service_wheel(helpers: ModuleType, tmp_path: Path) -> None:
    """What the build stage copies is enough for `pip install .`: build the wheel from a
    copy of exactly those files (README.md included, training/ absent)."""
    build = _stages(helpers.DOCKERFILE)[0]
    context = tmp_path / "src"
    context.mkdir()
    patterns = _dockerignore(helpers)
    for instr, args in build:
        if instr != "COPY":
            continue
        for src in args.split()[:-1]:
            origin = helpers.ROOT / src
            if origin.is_dir():
                shutil.copytree(
                    origin,
                    context / src,
                    ignore=lambda d, names: [
                        n
                        for n in names
                        if _ignored(str((Path(d) / n).relative_to(helpers.ROOT)), patterns)
                    ],
                )
            else:
                shutil.copy(origin, context / src)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("apprentice-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith("/METADATA"))).decode()
    assert "service/__init__.py" in names
    assert not any(n.startswith("training/") for n in names)
    requires = [Requirement(r) for r in re.findall(r"^Requires-Dist: (.+)$", metadata, re.M)]
    runtime = {canonicalize_name(r.name) for r in requires if r.marker is None}
    assert "torch" not in runtime and "onnxruntime" in runtime
