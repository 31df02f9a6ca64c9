"""The loop on real bundled data (small slices): learning, reproducibility, checkpoints, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.__main__ import main
from training.config import METHODS, from_dict, load_config
from training.distill.train import load_checkpoint, model_from_checkpoint, run

ROOT = Path(__file__).resolve().parents[3]
SMALL = [
    "--set",
    "data.last_bars=1500",
    "--set",
    "run.threads=1",
    "--set",
    "train.max_batches=3",
    "--no-progress",
]


def _cfg(path: str, out: Path, **overrides: object):  # type: ignore[no-untyped-def]
    base = {
        "data.last_bars": 3000,
        "run.threads": 1,
        "train.progress": False,
        "run.out_dir": str(out),
    }
    return load_config(ROOT / path, {**base, **overrides})


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    for fam in ("tcn", "mlp"):
        argv = [
            "teacher",
            "--config",
            str(ROOT / f"configs/{fam}/teacher.toml"),
            "--out",
            str(out),
            *SMALL,
        ]
        assert main([*argv, "--set", "train.epochs=2"]) == 0
    return out


def test_teacher_loss_goes_down_and_checkpoint_is_complete(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = _cfg(
        "configs/tcn/teacher.toml",
        tmp_path,
        **{
            "train.epochs": 3,
            "train.patience": 9,
            "train.eval_every": 0,  # one check per epoch
            "data.last_bars": 2000,
        },
    )
    result = run(cfg, role="teacher")
    ckpt = load_checkpoint(result.checkpoint)
    losses = [h["train"]["task"] for h in ckpt["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert {"task_direction", "task_volatility"} <= set(ckpt["history"][0]["train"])
    assert ckpt["best_step"] == ckpt["history"][ckpt["best_epoch"]]["step"]
    # the weights kept are the best check's: their validation score is the history's minimum
    kept = sum(result.metrics["val"][h]["loss"] for h in ("direction", "volatility"))
    assert kept == pytest.approx(min(h["val"]["select"] for h in ckpt["history"]), abs=1e-6)
    assert from_dict(ckpt["config"]) == cfg  # the resolved config travels with the weights
    assert ckpt["spec"]["family"] == "tcn" and ckpt["params"] > 50_000
    assert ckpt["data_span"]["train"]["windows"] > 0 and len(ckpt["feature_names"]) == 12
    for head in ("direction", "volatility"):
        assert 0.0 < result.metrics["val"][head]["loss"] < 2.0
        assert 0.0 < result.metrics["test"][head]["accuracy"] < 1.0
    assert ckpt["symbols"] == ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT"]
    net = model_from_checkpoint(result.checkpoint)
    assert not net.training
    assert (result.checkpoint.parent / "metrics.json").exists()


def test_runs_are_reproducible(tmp_path: Path, teachers: Path) -> None:
    torch.set_num_threads(1)
    states = []
    for i in range(2):
        cfg = _cfg(
            "configs/tcn/combined.toml",
            tmp_path / str(i),
            **{
                "train.epochs": 2,
                "train.max_batches": 4,
                "distill.teacher": str(teachers / "tcn-teacher/checkpoint.pt"),
            },
        )
        states.append(load_checkpoint(run(cfg).checkpoint)["state_dict"])
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=0, atol=0)


def test_feature_loss_goes_down_while_distilling(tmp_path: Path, teachers: Path) -> None:
    torch.set_num_threads(1)
    cfg = _cfg(
        "configs/tcn/fitnet.toml",
        tmp_path,
        **{
            "train.epochs": 3,
            "train.patience": 9,
            "distill.teacher": str(teachers / "tcn-teacher/checkpoint.pt"),
        },
    )
    hist = load_checkpoint(run(cfg).checkpoint)["history"]
    for term in ("fitnet_0", "fitnet_1"):
        assert hist[-1]["train"][term] < hist[0]["train"][term]


@pytest.mark.parametrize("family", ["tcn", "mlp"])
def test_cli_distills_every_method(
    family: str, teachers: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = teachers / f"{family}-teacher/checkpoint.pt"
    for method in METHODS:
        argv = [
            "distill",
            "--config",
            str(ROOT / f"configs/{family}/{method}.toml"),
            "--teacher",
            str(teacher),
        ]
        assert main([*argv, "--out", str(teachers), "--set", "train.epochs=1", *SMALL]) == 0, method
        ckpt = load_checkpoint(teachers / f"{family}-{method}/checkpoint.pt")
        assert ckpt["config"]["distill"]["method"] == method
        assert (
            ckpt["teacher"].get("path", "") == ("" if method == "scratch" else str(teacher))
            or method == "scratch"
        )
    assert "| run | method |" in capsys.readouterr().out


def test_cli_help_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "distill" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[distill]\nmethod = "fitnet"\n')
    assert main(["distill", "--config", str(bad)]) == 2
    assert "distill.teacher" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name", ["fitnet_two_stage", "combined_progressive", "crd_bank", "fitnet_pairs"]
)
def test_schedule_variants_run(name: str, teachers: Path) -> None:
    teacher = teachers / "tcn-teacher/checkpoint.pt"
    argv = [
        "distill",
        "--config",
        str(ROOT / f"configs/tcn/{name}.toml"),
        "--teacher",
        str(teacher),
    ]
    extra = [
        "--set",
        "train.epochs=2",
        "--set",
        "distill.hint_epochs=1",
        "--set",
        "distill.progressive_every=1",
    ]
    assert main([*argv, "--out", str(teachers), *extra, *SMALL]) == 0
    cfg = load_config(ROOT / f"configs/tcn/{name}.toml")
    hist = load_checkpoint(teachers / cfg.run.name / "checkpoint.pt")["history"]
    if name == "fitnet_two_stage":
        assert [h["stage"] for h in hist] == ["hint", "kd"]
        assert "task" in hist[0]["train"] and "fitnet_0" not in hist[1]["train"]


def test_sweep_prints_one_row_per_config(
    teachers: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configs = [str(ROOT / f"configs/mlp/{m}.toml") for m in ("scratch", "gram")]
    teacher = str(teachers / "mlp-teacher/checkpoint.pt")
    argv = [
        "sweep",
        *configs,
        "--teacher",
        teacher,
        "--out",
        str(teachers),
        "--set",
        "train.epochs=1",
    ]
    assert main([*argv, *SMALL]) == 0
    out = capsys.readouterr().out
    assert "| mlp-scratch | scratch |" in out and "| mlp-gram | gram |" in out
