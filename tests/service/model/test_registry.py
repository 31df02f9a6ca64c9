"""The model registry: pure role transitions, immutable versions, the atomic roles file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.model.card import ModelCard, ModelCardError
from service.model.registry import (
    Registry,
    Roles,
    Version,
    atomic_write,
    file_name,
    promoted,
    refused,
    rolled_back,
    with_challenger,
    with_champion,
)

A = Version("s", "1", "aa", "/m/s-1.onnx")
B = Version("s", "2", "bb", "/m/s-2.onnx")
C = Version("s", "3", "cc", "/m/s-3.onnx")


def test_transitions_by_hand() -> None:
    r = with_champion(Roles(), A)
    assert r == Roles(champion=A)
    r = with_challenger(r, B)
    r = refused(refused(r))
    assert r.refusals_in_row == 2
    p = promoted(r)
    assert (p.champion, p.challenger, p.previous, p.refusals_in_row) == (B, None, A, 0)
    back = rolled_back(p)
    assert (back.champion, back.previous) == (A, B)
    assert rolled_back(back).champion == B  # a rollback can be undone
    assert with_champion(p, C).previous == B  # a reload keeps the one it replaced
    assert rolled_back(Roles(champion=A, challenger=B, previous=B)).challenger is None
    with pytest.raises(ValueError):
        promoted(Roles(champion=A))
    with pytest.raises(ValueError):
        rolled_back(Roles(champion=A))


def test_roles_round_trip_and_atomic_write(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "models", tmp_path / "state")
    assert reg.load_roles() == Roles()
    roles = Roles(champion=A, challenger=B, previous=C, refusals_in_row=3, configured=A)
    reg.save_roles(roles)
    assert reg.load_roles() == roles
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["models.json"]  # no temp left
    atomic_write(reg.roles_path, "{not json")
    with pytest.raises(ModelCardError, match="delete it"):
        reg.load_roles()


def test_register_copies_once_and_never_overwrites(
    tmp_path: Path, model_writer: Callable[..., Any]
) -> None:
    reg = Registry(tmp_path / "models", tmp_path / "state")
    m = model_writer(tmp_path / "in", name="student", version="2026.12.07+x", seed=1)
    v = reg.register(m.onnx_path)
    target = tmp_path / "models" / file_name(ModelCard.load(m.card_path))
    assert Path(v.path) == target.resolve() and target.name == "student-2026.12.07_x.onnx"
    card = ModelCard.load(target.with_suffix(".json"))
    assert card.onnx_file == target.name and card.sha256 == v.sha256
    assert reg.register(m.onnx_path) == v  # the same bytes again: a no-op
    assert reg.versions() == [v]
    other = model_writer(tmp_path / "in2", name="student", version="2026.12.07+x", seed=2)
    with pytest.raises(ModelCardError, match="new version"):
        reg.register(other.onnx_path)
    inside = model_writer(tmp_path / "models", name="kept", version="9")
    assert Path(reg.register(inside.onnx_path).path) == inside.onnx_path.resolve()  # in place
    bad = model_writer(tmp_path / "in3", name="bad", version="1")
    bad.onnx_path.write_bytes(bad.onnx_path.read_bytes() + b"x")
    with pytest.raises(ModelCardError, match="sha256"):
        reg.register(bad.onnx_path)
    assert json.loads(target.with_suffix(".json").read_text())["version"] == "2026.12.07+x"
