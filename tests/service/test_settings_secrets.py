"""Settings errors name the variable and the fix, and never contain the admin token.

Every field of :class:`Settings` is given a set of bad values with the token set, plus the
model-level rule (inverted thresholds, which once printed every APPRENTICE_* value), a token
pasted into another variable, and the real command line's stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import MAX_SYMBOLS, Settings, SettingsError, load_settings, redact_logs

TOKEN = "tok-9f8e7d6c5b4a-SECRET"
ROOT = Path(__file__).resolve().parents[2]
BAD_VALUES = ["", "x" * 300, "-1", "0", "1e400", "nan", "inf", "abc", "\x01", "1,2,1", "5m"]


def _errors_for(field: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    out = []
    for value in BAD_VALUES:
        monkeypatch.setenv(f"APPRENTICE_{field.upper()}", value)
        try:
            load_settings()
        except SettingsError as exc:
            out.append(str(exc))
        monkeypatch.delenv(f"APPRENTICE_{field.upper()}")
    return out


def test_no_settings_error_contains_the_admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPRENTICE_ADMIN_TOKEN", TOKEN)
    messages: dict[str, list[str]] = {}
    for field in Settings.model_fields:
        if field == "admin_token":
            continue
        messages[field] = _errors_for(field, monkeypatch)
    # every field that can be wrong was made wrong at least once
    # (host: not a name or address; model: a directory, e.g. "" = the working directory;
    # state_dir: a part longer than any file system takes)
    can_be_wrong = set(Settings.model_fields) - {"admin_token"}
    assert {f for f, m in messages.items() if m} == can_be_wrong
    # the model-level rule: its error's input is every setting, the token included
    monkeypatch.setenv("APPRENTICE_LONG_THRESHOLD", "0.5")
    monkeypatch.setenv("APPRENTICE_SHORT_THRESHOLD", "0.6")
    with pytest.raises(SettingsError) as err:
        load_settings()
    messages["thresholds"] = [str(err.value)]
    assert "APPRENTICE_SHORT_THRESHOLD must not exceed" in str(err.value)
    # overrides (tests, scripts) are held to the same rule
    with pytest.raises(SettingsError) as err:
        load_settings(admin_token=TOKEN, port="http")
    messages["overrides"] = [str(err.value)]
    total = sum(len(m) for m in messages.values())
    assert total > 40
    for field, texts in messages.items():
        for text in texts:
            assert TOKEN not in text, (field, text)
            assert "refusing to start" in text


def test_a_token_pasted_into_another_variable_is_scrubbed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APPRENTICE_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("APPRENTICE_PORT", TOKEN)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "APPRENTICE_PORT" in str(err.value) and TOKEN not in str(err.value)


def test_the_command_line_never_prints_the_token() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPRENTICE_")}
    env |= {
        "APPRENTICE_ADMIN_TOKEN": TOKEN,
        "APPRENTICE_LONG_THRESHOLD": "0.5",
        "APPRENTICE_SHORT_THRESHOLD": "0.6",  # inverted: once printed every value
    }
    r = subprocess.run(
        [sys.executable, "-m", "service"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "APPRENTICE_SHORT_THRESHOLD" in r.stderr and "Traceback" not in r.stderr
    assert TOKEN not in r.stderr and TOKEN not in r.stdout


def _run_service(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPRENTICE_")}
    env |= {"APPRENTICE_ADMIN_TOKEN": TOKEN, "APPRENTICE_PORT": "18150"} | extra
    return subprocess.run(
        [sys.executable, "-m", "service"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("var", "value", "named"),
    [
        ("APPRENTICE_MODEL", f"/nonexistent/{TOKEN}.onnx", "model"),
        ("APPRENTICE_HOST", f"{TOKEN}.invalid", "APPRENTICE_HOST"),
        ("APPRENTICE_STATE_DIR", f"/proc/{TOKEN}", "APPRENTICE_STATE_DIR"),
    ],
)
def test_start_up_checks_never_print_a_token_pasted_into_a_path_or_host(
    var: str, value: str, named: str
) -> None:
    """Issue 27: "model SuperSecret… not found", "cannot listen on 'SuperSecret…'"."""
    r = _run_service({var: value})
    assert r.returncode == 2, r.stderr
    assert named in r.stderr and "***" in r.stderr and "Traceback" not in r.stderr
    assert TOKEN not in r.stderr and TOKEN not in r.stdout


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ws_url", "ws://[::1"),
        ("ws_url", "ws://127.0.0.1:99999/v5/public/linear"),
        ("ws_url", "ws://" + "h" * 60_000 + "/v5"),
        ("rest_url", "http://:80"),
        ("rest_url", "ftp://api.bybit.com"),
        ("ping_interval_s", "1e-9"),
        ("http_header_timeout_s", "1e-300"),
        ("rest_per_5s", "600"),  # Bybit's own limit: a ban at the first burst
        ("rest_per_5s", "0"),
        ("admin_token", "a"),
        ("admin_token", " "),
        ("admin_token", "twelve chars with spaces"),
        ("symbols", ",".join(f"S{i:05d}USDT" for i in range(10_000))),
        ("model", "m" * 5_000 + ".onnx"),
        ("state_dir", "/tmp/" + "s" * 300),
    ],
    ids=lambda v: v[:24] if isinstance(v, str) else v,
)
def test_settings_that_would_break_the_service_later_are_refused_now(
    field: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"APPRENTICE_{field.upper()}", value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    text = str(err.value)
    assert f"APPRENTICE_{field.upper()}" in text and len(text) < 2_000, text[:300]


def test_the_ceiling_on_symbols_is_allowed_and_one_more_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = [f"S{i:03d}USDT" for i in range(MAX_SYMBOLS + 1)]
    assert len(load_settings(symbols=names[:-1]).symbols) == MAX_SYMBOLS
    with pytest.raises(SettingsError, match=f"at most {MAX_SYMBOLS}"):
        load_settings(symbols=names)


def test_log_lines_never_carry_the_token(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    previous = logging.getLogRecordFactory()
    try:
        redact_logs(load_settings(admin_token=TOKEN))
        logging.getLogger("service.test").warning("loading model %s", f"/m/{TOKEN}.onnx")
    finally:
        logging.setLogRecordFactory(previous)
    assert caplog.records and all(TOKEN not in r.getMessage() for r in caplog.records)
    assert "/m/***.onnx" in caplog.records[-1].getMessage()


def test_an_empty_token_means_admin_routes_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPRENTICE_ADMIN_TOKEN", "")  # docker compose's pass-through
    assert load_settings().admin_token is None
