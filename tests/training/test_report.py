"""The report pipeline end to end in --quick mode, the config loader and the leakage stop."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from training.evaluate import LeakageAlarm
from training.report import FoldOutput, check_all, run_report
from training.report_config import load_report_config, quick_config

ROOT = Path(__file__).resolve().parents[2]


def test_quick_report_runs_end_to_end(tmp_path: Path) -> None:
    cfg = load_report_config(None, quick=True)
    cfg = replace(
        cfg,
        name="t",
        out_dir=str(tmp_path),
        models_dir=str(tmp_path / "models"),
        methods=("kd", "gram", "combined"),
        export_method="combined",
        seeds=(0,),
        last_bars=1200,
        transfer=replace(cfg.transfer, cross_timeframe=False),
    )
    path = run_report(cfg, quick=True)
    text = path.read_text()
    for heading in (
        "## Results on the pooled test folds",
        "## Does the teacher beat the baselines?",
        "## Does each student beat scratch",
        "## How much of the teacher-minus-scratch gap",
        "## Feature similarity (linear CKA",
        "## Fee-aware backtest",
        "## Transfer experiments",
        "Cross-asset",
        "Cross-domain",
        "## The exported student",
    ):
        assert heading in text, heading
    for name in ("label-smoothed", "kd (cross-fitted)", "combined (cross-fitted)", "majority"):
        assert f"| {name} |" in text
    for png in ("equity.png", "curves.png", "calibration.png", "cka_combined.png"):
        assert (path.parent / png).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "models" / "student_pooled_5m.onnx").exists()
    assert (tmp_path / "models" / "student_pooled_5m.json").exists()
    # `python -m training evaluate` scores the export with onnxruntime on its held-out bars
    from training.evaluate import main as evaluate_main

    model = tmp_path / "models" / "student_pooled_5m.onnx"
    assert evaluate_main(["--model", str(model), "--json"]) == 0
    from service.model_card import ModelCard

    card = ModelCard.load(model.with_suffix(".json"))
    assert card.teacher.params > 10 * card.student.params > 0
    assert set(card.metrics["cka"]) and 0.0 <= card.metrics["agreement_with_teacher"] <= 1.0


def test_leakage_alarm_stops_the_report() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000)
    out = FoldOutput(0, y, np.arange(1000) * 300_000, np.zeros(1000))
    out.preds["honest"] = [rng.random(1000)]
    check_all(out)
    out.preds["peeking"] = [np.where(y == 1, 0.7, 0.3)]
    with pytest.raises(LeakageAlarm):
        check_all(out)


def test_repo_report_config_loads_and_is_sized_for_two_cores() -> None:
    cfg = load_report_config(ROOT / "configs" / "report.toml")
    assert cfg.folds >= 3 and len(cfg.seeds) >= 3
    assert cfg.export_name == "student_pooled_5m"
    q = quick_config(cfg)
    assert q.student_fit.epochs == 1 and q.last_bars <= 1800


def test_unknown_keys_are_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "r.toml"
    bad.write_text("[report]\nfolds = 3\nbogus = 1\n")
    with pytest.raises(ValueError, match="bogus"):
        load_report_config(bad)
