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

from service.settings import Settings, SettingsError, load_settings

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
    can_be_wrong = set(Settings.model_fields) - {"admin_token", "host", "state_dir", "model"}
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
