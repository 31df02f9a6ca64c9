"""docker-compose.yml, validated by Debian's docker-compose (v1) without a Docker engine.

`docker-compose config` resolves and validates the file (schema, interpolation, merges);
which services `up` would start under each profile is computed by compose's own project
code (its only engine call, a network lookup, answered by a stand-in client).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPLAY_FLAGS = ("--symbols", "--interval", "--speed", "--host", "--port")


def _env(**extra: str) -> dict[str, str]:
    """The caller's environment without compose/apprentice settings, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COMPOSE_", "APPRENTICE_", "GF_", "DOCKER_"))
    }
    env.update(extra)
    return env


def _compose(
    helpers: ModuleType, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    binary = helpers.require_binary("docker-compose")
    return subprocess.run(
        [binary, "--project-directory", str(helpers.ROOT), "-f", str(helpers.COMPOSE_YML), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=helpers.ROOT,
        check=False,
    )


def _config(helpers: ModuleType, *profile_args: str, **env: str) -> dict[str, Any]:
    """`docker-compose config` as a user runs it: no variable set unless ``env`` gives one."""
    proc = _compose(helpers, *profile_args, "config", env=_env(**env))
    assert proc.returncode == 0, proc.stderr
    return dict(yaml.safe_load(proc.stdout))


def _published(port: str | dict[str, Any]) -> str:
    """``host_ip:published`` of a port in compose v1's short or v2's long output syntax."""
    return port if isinstance(port, str) else f"{port['host_ip']}:{port['published']}"


def _volume(entry: str | dict[str, Any]) -> tuple[str, str]:
    """(source, target) of a volume in compose v1's short or v2's long output syntax."""
    if isinstance(entry, dict):
        return entry["source"], entry["target"]
    source, target, *_ = entry.split(":")
    return source, target


def test_compose_config_is_valid(helpers: ModuleType) -> None:
    services = _config(helpers)["services"]
    assert {"apprentice", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), (
            f"{name}: pin the image tag ({image})"
        )
        assert service["restart"] == "unless-stopped", name
        assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    live = services["apprentice"]
    assert live["environment"]["APPRENTICE_WS_URL"] == "wss://stream.bybit.com/v5/public/linear"
    assert live["environment"]["APPRENTICE_REST_URL"] == "https://api.bybit.com"
    assert live["environment"]["APPRENTICE_HOST"] == "0.0.0.0"
    assert live["init"] is True  # tini as PID 1 forwards SIGTERM to python
    assert live["build"]["context"] == str(helpers.ROOT)
    (state,) = (_volume(v) for v in live["volumes"])
    assert state == ("apprentice-state", "/var/lib/apprentice")
    assert "apprentice-state" in _config(helpers)["volumes"]  # a named volume
    assert live["environment"]["APPRENTICE_STATE_DIR"] == "/var/lib/apprentice"
    # bound to loopback unless APPRENTICE_BIND says otherwise
    for service in services.values():
        for port in service.get("ports", []):
            assert _published(port).startswith("127.0.0.1:"), _published(port)


def test_compose_config_with_replay_profile(helpers: ModuleType) -> None:
    services = _config(helpers, "--profile", "replay")["services"]
    replay, service = services["replay"], services["apprentice-replay"]
    assert replay["image"] == service["image"] == services["apprentice"]["image"]
    command = replay["command"]
    assert command[:3] == ["python", "-m", "service.replay"]
    port = command[command.index("--port") + 1]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    env = service["environment"]
    assert env["APPRENTICE_WS_URL"] == f"ws://replay:{port}/v5/public/linear"
    assert env["APPRENTICE_REST_URL"] == f"http://replay:{port}"
    assert service["depends_on"]["replay"]["condition"] == "service_healthy"
    assert f"127.0.0.1:{port}/" in " ".join(replay["healthcheck"]["test"])
    # the replay account does not share the live one's state
    assert _volume(service["volumes"][0]) == ("apprentice-replay-state", "/var/lib/apprentice")
    # both definitions answer to `apprentice` on the network: Prometheus' single target
    for name in ("apprentice", "apprentice-replay"):
        assert "apprentice" in services[name]["networks"]["default"]["aliases"]


def test_replay_command_uses_flags_the_replay_exchange_accepts(helpers: ModuleType) -> None:
    compose = yaml.safe_load(helpers.COMPOSE_YML.read_text())
    command = compose["services"]["replay"]["command"]
    flags = [arg for arg in command if arg.startswith("--")]
    assert set(flags) == set(REPLAY_FLAGS)
    try:
        import service.replay.__main__  # noqa: F401
    except ImportError:
        pytest.skip("this checkout has no `python -m service.replay` entry point")
    proc = subprocess.run(
        [sys.executable, "-m", "service.replay", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=helpers.ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    for flag in flags:
        assert flag in proc.stdout, f"`python -m service.replay` has no {flag}"


def test_every_port_is_on_loopback_unless_the_user_opts_in(helpers: ModuleType) -> None:
    for profile in ([], ["--profile", "replay"]):
        ports = [
            _published(p)
            for s in _config(helpers, *profile)["services"].values()
            for p in s.get("ports", [])
        ]
        assert len(ports) >= 3 and all(p.startswith("127.0.0.1:") for p in ports), ports
        opted = [
            _published(p)
            for s in _config(helpers, *profile, APPRENTICE_BIND="0.0.0.0")["services"].values()
            for p in s.get("ports", [])
        ]
        assert len(opted) >= 3 and all(p.startswith("0.0.0.0:") for p in opted), opted


def test_grafana_is_anonymous_read_only_without_a_password(helpers: ModuleType) -> None:
    """No variable set: compose starts (no mandatory value) and bakes in no password."""
    grafana = _config(helpers)["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env.get("GF_SECURITY_ADMIN_PASSWORD") is None  # passed through, never a default
    given = _config(helpers, GF_SECURITY_ADMIN_PASSWORD="t0p")["services"]["grafana"]
    assert given["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "t0p"


def _seconds(duration: str) -> float:
    """A compose duration (``2m``, ``90s``, ``1m30s``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration))
    assert parts, duration
    return sum(float(n) * units[u] for n, u in parts)


def _grafana_start(helpers: ModuleType, tmp_path: Path, **env: str) -> dict[str, str]:
    """Run Grafana's entrypoint from the resolved compose file with /run.sh (the image's own
    entrypoint) replaced by a script that prints the environment it was started with."""
    entrypoint = _config(helpers)["services"]["grafana"]["entrypoint"]
    assert entrypoint[:2] == ["/bin/sh", "-c"] and "/run.sh" in entrypoint[2], entrypoint
    stub = tmp_path / "run.sh"
    stub.write_text("#!/bin/sh\nenv -0\n")
    stub.chmod(0o755)
    script = entrypoint[2].replace("$$", "$").replace("/run.sh", str(stub))  # compose's $$ = $
    proc = subprocess.run(
        ["/bin/sh", "-c", script, *entrypoint[3:]],
        capture_output=True,
        timeout=30,
        env={"PATH": os.environ["PATH"], **env},
        check=True,
    )
    pairs = (item.split(b"=", 1) for item in proc.stdout.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode() for k, v in pairs}


def test_grafana_without_a_password_creates_no_admin_and_hides_the_login(
    helpers: ModuleType, tmp_path: Path
) -> None:
    for env in ({}, {"GF_SECURITY_ADMIN_PASSWORD": ""}):
        started = _grafana_start(helpers, tmp_path, **env)
        assert started["GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION"] == "true"
        assert started["GF_AUTH_DISABLE_LOGIN_FORM"] == "true"
        assert started["GF_AUTH_BASIC_ENABLED"] == "false"
        assert "GF_SECURITY_ADMIN_PASSWORD" not in started  # Grafana's default would be admin


def test_grafana_with_a_password_creates_the_admin_with_it(
    helpers: ModuleType, tmp_path: Path
) -> None:
    started = _grafana_start(helpers, tmp_path, GF_SECURITY_ADMIN_PASSWORD="choose-one")
    assert started["GF_SECURITY_ADMIN_PASSWORD"] == "choose-one"
    for key in (
        "GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION",
        "GF_AUTH_DISABLE_LOGIN_FORM",
        "GF_AUTH_BASIC_ENABLED",
    ):
        assert key not in started


def test_service_health_is_readiness_with_a_start_period(helpers: ModuleType) -> None:
    """Healthy = GET /ready answers 200; the start period covers the warm-up (503 meanwhile)."""
    services = _config(helpers, "--profile", "replay")["services"]
    for name in ("apprentice-replay",):
        check = services[name]["healthcheck"]
        assert "127.0.0.1:8000/ready" in " ".join(check["test"]), check
        assert _seconds(check["start_period"]) >= 60, check
    live = _config(helpers)["services"]["apprentice"]["healthcheck"]
    assert "/ready" in " ".join(live["test"])
    grafana = _config(helpers)["services"]["grafana"]
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"


# Compose's own profile logic (Debian's docker-compose is Python), run with the system
# interpreter that owns the package. The stand-in client answers the one engine question
# (does a legacy-named network or volume exist?) with "no".
_SELECT = r"""
import json, sys
import docker.errors
from compose.cli.command import get_profiles_from_options
from compose.config import config
from compose.config.environment import Environment
from compose.project import Project

class NoEngine:
    def inspect_network(self, name):
        raise docker.errors.NotFound("no engine in tests")

    inspect_volume = inspect_network

root, profiles = sys.argv[1], json.loads(sys.argv[2])
env = Environment.from_env_file(root)
data = config.load(config.find(root, None, env), True)
enabled = get_profiles_from_options({"--profile": profiles}, env)
project = Project.from_config("apprentice", data, NoEngine(), None, [], enabled)
print(json.dumps(sorted(s.name for s in project.get_services(include_deps=True))))
"""


def _started(helpers: ModuleType, profiles: list[str], **env: str) -> set[str]:
    compose = helpers.require_binary("docker-compose")
    interpreter = Path(compose).read_text().splitlines()[0].removeprefix("#!").split()
    proc = subprocess.run(
        [*interpreter, "-c", _SELECT, str(helpers.ROOT), json.dumps(profiles)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(**env),
    )
    if proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr:
        pytest.skip(f"compose's Python package not importable by {interpreter}")
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout))


def test_replay_profile_starts_the_offline_stack_only(helpers: ModuleType) -> None:
    """`--profile replay` replaces the live service (even with COMPOSE_PROFILES=live)."""
    expected = {"replay", "apprentice-replay", "prometheus", "grafana"}
    assert _started(helpers, ["replay"]) == expected
    assert _started(helpers, ["replay"], COMPOSE_PROFILES="live") == expected


def test_live_profile_starts_the_live_stack(helpers: ModuleType) -> None:
    expected = {"apprentice", "prometheus", "grafana"}
    assert _started(helpers, [], COMPOSE_PROFILES="live") == expected


def test_plain_up_starts_the_live_stack(helpers: ModuleType) -> None:
    """`docker compose up` with no flag: the committed .env enables the live profile."""
    if not (helpers.ROOT / ".env").exists():
        pytest.skip("no .env (COMPOSE_PROFILES=live) in this checkout: plain `up` has no profile")
    assert _started(helpers, []) == {"apprentice", "prometheus", "grafana"}


def test_trainer_profile_refreshes_on_the_service_volume_with_its_own_image(
    helpers: ModuleType,
) -> None:
    """Issue 31: `trainer` (profile "trainer") runs `python -m training refresh` every
    REFRESH_EVERY_HOURS on the service's state volume, from a torch image of its own."""
    services = _config(helpers, "--profile", "live", "--profile", "trainer")["services"]
    trainer, live = services["trainer"], services["apprentice"]
    assert trainer["image"] != live["image"]
    assert trainer["build"]["dockerfile"] == "deploy/trainer.Dockerfile"
    assert "torch" in (helpers.ROOT / "deploy/trainer.Dockerfile").read_text()
    script = " ".join(trainer["command"])
    assert "python -m training refresh" in script and "REFRESH_EVERY_HOURS" in script
    assert "--url" in script and trainer["environment"]["REFRESH_EVERY_HOURS"] == "24"
    (volume,) = (_volume(v) for v in trainer["volumes"])
    assert volume == ("apprentice-state", "/var/lib/apprentice")
    assert live["environment"]["APPRENTICE_MODEL_DIR"] == "/var/lib/apprentice/models"
    assert "/var/lib/apprentice/models" in script  # the registry the service reads
    assert "trainer" not in _started(helpers, [], COMPOSE_PROFILES="live")
