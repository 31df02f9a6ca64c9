"""Experiment configs: TOML round trip, base chains, overrides, clear errors, shipped files."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import (
    ConfigError,
    ExperimentConfig,
    from_dict,
    load_config,
    parse_override,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*/*.toml") if not p.name.startswith("_"))


def test_round_trip_dict_and_toml(tmp_path: Path) -> None:
    cfg = ExperimentConfig().replace(
        **{
            "distill.method": "combined",
            "distill.teacher": "t.pt",
            "distill.pairs": [[0, 0], [3, 1]],
            "distill.gammas": [0.1, 0.5],
            "model.channels": [8, 8],
            "train.lr": 0.01,
        }
    )
    assert from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "x.toml"
    path.write_text(cfg.to_toml())
    assert load_config(path) == cfg
    assert cfg.distill.pairs == ((0, 0), (3, 1))


def test_base_chain_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text(
        '[train]\nepochs = 7\nlr = 0.5\n[data]\nsymbol = "ETHUSDT"\n'
    )
    (tmp_path / "child.toml").write_text('base = "base.toml"\n[train]\nepochs = 3\n')
    cfg = load_config(tmp_path / "child.toml", dict([parse_override("data.interval=1")]))
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.symbol, cfg.data.interval) == (
        3,
        0.5,
        "ETHUSDT",
        "1",
    )
    assert parse_override("model.family=mlp") == ("model.family", "mlp")
    assert parse_override("distill.gammas=[0.1, 0.2]") == ("distill.gammas", [0.1, 0.2])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train": {"epoch": 3}}, "unknown key"),
        ({"bogus": {}}, "unknown config table"),
        ({"distill": {"method": "magic"}}, "distill.method"),
        ({"distill": {"method": "fitnet"}}, "distill.teacher"),
        ({"train": {"epochs": "ten"}}, "train.epochs"),
        ({"distill": {"gamma_schedule": "step"}}, "gamma_schedule"),
    ],
)
def test_bad_configs_say_what_to_fix(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(raw)


def test_base_cycle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('base = "b.toml"\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\n')
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.toml")


def test_every_shipped_config_loads() -> None:
    assert len(CONFIGS) >= 18
    methods = set()
    for path in CONFIGS:
        cfg = load_config(path)
        assert cfg.run.name and cfg.run.name != "run", path
        methods.add((cfg.model.family, cfg.distill.method))
    for fam in ("tcn", "mlp"):
        for m in ("scratch", "kd", "fitnet", "attention", "activation", "gram", "crd", "combined"):
            assert (fam, m) in methods
