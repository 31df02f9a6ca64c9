"""The README's commands, run or checked as written: a newcomer copies them.

Every shell command is taken from the README's ``bash`` blocks and from inline code that
starts like a command, then checked by kind: ``make`` targets and variables against the
Makefile (a make option such as ``--quick`` is an error), ``.venv/bin/python -m ...`` by
running its ``--help`` and finding each flag there, ``docker compose`` by resolving it with
``docker-compose config`` and no variable set, ``curl`` paths against the app's routes, file
arguments and links against the tree. The API table must match the app's routes, and every
variable the README names must exist where it says.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
COMPOSE = (ROOT / "docker-compose.yml").read_text()
COMMAND_START = re.compile(
    r"^(?:[A-Z][A-Z0-9_]*=\S*\s+)*(?:make|\.venv/bin/python|python3?|docker|curl|git)\b"
)
MAX_LINES = 200


def _block_commands(text: str) -> list[str]:
    """Lines of the ```bash blocks, comments and continuations handled."""
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        pending = ""
        for raw in block.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()  # a comment after a command
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line = (pending + line).strip()
            pending = ""
            if line:
                commands.append(line)
    return commands


def _inline_commands(text: str) -> list[str]:
    """Inline code spans outside the blocks that read as a command."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    prose = re.sub(r"(?<!\n)\n(?!\n)", " ", prose)  # a span may wrap onto the next line
    spans = re.findall(r"`([^`]+)`", prose)
    return [s.strip() for s in spans if COMMAND_START.match(s.strip()) and " " in s.strip()]


COMMANDS = sorted(set(_block_commands(README) + _inline_commands(README)))


def _split(command: str) -> tuple[dict[str, str], list[str]]:
    """(leading VAR=value assignments, argv)."""
    argv = shlex.split(command)
    env: dict[str, str] = {}
    while argv and re.fullmatch(r"[A-Z][A-Z0-9_]*=.*", argv[0]):
        key, _, value = argv.pop(0).partition("=")
        env[key] = value
    return env, argv


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):(?!=)", MAKEFILE, re.M))


def _make_variables() -> set[str]:
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*[?:]?=", MAKEFILE, re.M))


def _settings_variables() -> set[str]:
    from service.settings import Settings

    return {f"APPRENTICE_{name.upper()}" for name in Settings.model_fields}


def _compose_variables() -> set[str]:
    names = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE))
    names |= set(re.findall(r"^\s+([A-Z][A-Z0-9_]*):\s*$", COMPOSE, re.M))  # passed through
    return names


DEMO_VARIABLES = {"APPRENTICE_REPLAY_PORT"}  # read by `make demo` (service/demo.py) only


def _training_variables() -> set[str]:
    """Variables the training runner reads from the environment (training/experiments)."""
    text = (ROOT / "training" / "experiments" / "runner.py").read_text()
    return set(re.findall(r'"(APPRENTICE_TRAIN_[A-Z0-9_]+)"', text))


@functools.cache
def _app_routes() -> set[tuple[str, str]]:
    from service.http.app import create_app
    from service.settings import load_settings

    app = create_app(load_settings())  # builds the routes; loads and connects nothing
    routes = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    for route in app.routes:  # routes left out of the schema (the page at /)
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD":
                routes.add((method, route.path))
    return routes


@functools.cache
def _help(module: str, sub: str | None) -> str:
    argv = [sys.executable, "-m", module, *([sub] if sub else []), "--help"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, f"`{' '.join(argv[1:])}` failed: {proc.stderr[-2000:]}"
    return proc.stdout


def _check_paths(argv: list[str]) -> None:
    """Arguments that name inputs exist (outputs such as --out may not exist yet)."""
    for flag in ("--config", "--model", "-f"):
        for i, arg in enumerate(argv[:-1]):
            if arg == flag:
                assert (ROOT / argv[i + 1]).exists(), f"{argv[i + 1]} does not exist"


def _recipe(target: str) -> str:
    """The recipe lines of a Makefile target."""
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n?)*)", MAKEFILE, re.M)
    assert match, target
    return match.group(1)


def _check_make(env: dict[str, str], argv: list[str]) -> None:
    targets, variables = _make_targets(), _make_variables()
    named = [a for a in argv[1:] if "=" not in a]
    for arg in argv[1:]:
        assert not arg.startswith("-"), f"`{arg}` is an option of make itself, not of the target"
        if "=" in arg:
            name, _, value = arg.partition("=")
            assert name in variables, f"the Makefile has no variable {name}"
            if name == "ARGS":  # passed to the target's `python -m X $(ARGS)`: X must take it
                (target,) = named
                module = re.search(r"-m (\S+) \$\(ARGS\)", _recipe(target))
                assert module, f"`make {target}` does not pass ARGS on"
                for flag in shlex.split(value):
                    assert flag in _help(module.group(1), None), f"{module.group(1)}: no {flag}"
        else:
            assert arg in targets, f"the Makefile has no target {arg!r}"
    for name in env:
        assert name in variables | _settings_variables() | DEMO_VARIABLES, name


def _check_python(argv: list[str]) -> None:
    assert argv[0] == ".venv/bin/python", "run Python through the venv make builds"
    assert argv[1] == "-m", argv
    module, rest = argv[2], argv[3:]
    sub = rest[0] if rest and not rest[0].startswith("-") else None
    text = _help(module, sub)
    for arg in rest:
        if arg.startswith("--") and arg != "--help":
            assert arg.split("=", 1)[0] in text, f"`{module} {sub or ''}` has no {arg}"
    _check_paths(rest)


def _compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("`docker-compose` not installed (apt-get install docker-compose)")
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COMPOSE_", "APPRENTICE_", "GF_", "DOCKER_"))
    }
    return subprocess.run(
        [binary, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**clean, **env},
        check=False,
    )


def _check_docker(env: dict[str, str], argv: list[str]) -> None:
    if argv[1] != "compose":
        assert argv[1] in {"build", "run", "volume"}, argv  # engine commands, not run here
        return
    globals_, rest = [], argv[2:]
    while rest and rest[0] in ("--profile", "-f"):
        globals_ += rest[:2]
        rest = rest[2:]
    _check_paths(globals_)
    for name in env:
        assert name in _compose_variables(), f"docker-compose.yml does not read {name}"
    proc = _compose(*globals_, "config", env=env)
    assert proc.returncode == 0, proc.stderr
    services = _compose(*globals_, "config", "--services", env=env).stdout.split()
    sub, args = rest[0], rest[1:]
    assert sub in {"up", "down", "logs", "exec", "rm", "ps", "build", "restart"}, sub
    named = [a for a in args if not a.startswith("-")]
    if sub in ("logs", "exec", "rm", "restart"):
        assert named and named[0] in services, f"no compose service {named[:1]}"


def _check_curl(argv: list[str]) -> None:
    (url,) = [a for a in argv[1:] if not a.startswith("-")]
    path = "/" + url.split("/", 1)[1] if "/" in url else "/"
    assert any(
        method == "GET" and re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", route), path)
        for method, route in _app_routes()
    ), f"the app has no GET {path}"


def _check_git(argv: list[str]) -> None:
    for arg in argv[2:]:
        if not arg.startswith("-"):
            assert (ROOT / arg).exists(), f"{arg} does not exist"


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs_as_written(command: str) -> None:
    env, argv = _split(command)
    kind = Path(argv[0]).name
    if kind == "make":
        _check_make(env, argv)
    elif argv[0].endswith("python") or kind in ("python", "python3"):
        _check_python(argv)
    elif kind == "docker":
        _check_docker(env, argv)
    elif kind == "curl":
        _check_curl(argv)
    elif kind == "git":
        _check_git(argv)
    else:
        pytest.fail(f"no check for {command!r}")


def test_the_readme_has_the_commands_it_promises() -> None:
    assert {"make demo", "make test"} <= set(COMMANDS)
    assert len(COMMANDS) >= 15  # the extraction found the blocks


def test_readme_is_short() -> None:
    lines = README.count("\n")
    assert lines <= MAX_LINES, f"README.md has {lines} lines; a newcomer reads ~{MAX_LINES}"


def test_readme_links_point_at_files() -> None:
    for target in re.findall(r"\]\(([^)]+)\)", README):
        if not re.match(r"[a-z]+://", target):
            assert (ROOT / target.split("#")[0]).exists(), f"broken link {target}"


def test_api_table_matches_the_app() -> None:
    section = README.split("## HTTP API", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for cell in re.findall(r"^\| (`[^|]+`) \|", section, re.M):
        for method, path in re.findall(r"`(GET|POST|PUT|DELETE) (/[^`]*)`", cell):
            documented.add((method, path))
    app = {r for r in _app_routes() if not r[1].startswith(("/docs", "/openapi", "/redoc"))}
    assert documented - app == set(), "README routes the app does not have"
    assert app - documented == set(), "app routes the README's API table does not list"


def test_every_variable_the_readme_names_exists() -> None:
    known = (
        _settings_variables()
        | DEMO_VARIABLES
        | _compose_variables()
        | _make_variables()
        | _training_variables()
        | {"COMPOSE_PROFILES"}  # the committed .env's one setting
    )
    named = set(
        re.findall(r"\b(?:APPRENTICE|GF|TORCH|TRAIN|REPLAY|PROMETHEUS|GRAFANA)_[A-Z0-9_]+", README)
    )
    assert named - known == set(), f"the README names variables nothing reads: {named - known}"
    for var in ("APPRENTICE_PORT", "APPRENTICE_LOG_LEVEL", "APPRENTICE_BIND", "TORCH_INDEX_URL"):
        assert var in named, f"the README should tell about {var}"


def test_configuration_defaults_match_the_settings() -> None:
    """The configuration table's defaults are the Settings model's (the first value shown)."""
    from service.settings import Settings

    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(
        r"^\| `(APPRENTICE_\w+)`(?: / `(APPRENTICE_\w+)`)? \| ([^|]+) \|", section, re.M
    )
    assert rows
    for first, second, defaults in rows:
        shown = re.findall(r"`([^`]+)`", defaults)
        for var, value in zip([first, second] if second else [first], shown, strict=False):
            field = Settings.model_fields[var.removeprefix("APPRENTICE_").lower()]
            default = field.get_default(call_default_factory=True)
            default = ",".join(default) if isinstance(default, list) else default
            if isinstance(default, Path):
                assert Path(value).name == default.name, f"{var}: README {value}, code {default}"
            elif default is not None:
                assert value == str(default), f"{var}: README {value}, code {default}"
