"""The committed student's candidates may read more training and validation windows than A's
runs, on the same test rows, and may run their whole schedule; either way the rule's reference
teacher is trained as they are."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from service.market.klines import interval_ms
from training.data.series import calendar_folds, load_series, pooled_fold
from training.experiments.common import Env
from training.experiments.config import ReportConfig, load_report_config
from training.experiments.harness import FitSettings
from training.experiments.pooled import PooledOutcome
from training.experiments.results import SettingResult
from training.experiments.selection import n_runs, own_teacher, reads_more, run, selection_fold
from training.progress import Progress


def test_the_selection_fold_reads_every_window_and_keeps_as_test() -> None:
    cfg = load_report_config(None)
    cfg = replace(
        cfg,
        pooled=replace(cfg.pooled, symbols=("BTCUSDT", "ETHUSDT"), train_stride=6, val_stride=6),
        select=replace(cfg.select, train_stride=1, val_stride=1),
    )
    series = [load_series(s, "5", "", 3000) for s in cfg.pooled.symbols]
    cf = calendar_folds(series[0].times, interval_ms("5"), 2, 32, 0.1, 0.15)[-1]
    last = pooled_fold(series, cf, 6, val_stride=6)
    empty = SettingResult("A", "", "", last.test.y, last.test.start_ms, last.test_symbol)
    a = PooledOutcome(empty, [], last, series, {}, cf)
    pf = selection_fold(cfg, a)
    assert len(pf.train) > 5 * len(last.train)
    assert len(pf.val) > 5 * len(last.val)
    assert set(last.val.start_ms) <= set(pf.val.start_ms)
    np.testing.assert_array_equal(pf.test.x, last.test.x)
    # A's own windows are among the selection's: the first of them is the same window
    np.testing.assert_array_equal(pf.train.x[0], last.train.x[0])
    # stride 0 (or A's own) reuses A's fold
    same = replace(cfg, select=replace(cfg.select, train_stride=0, val_stride=0))
    assert selection_fold(same, a) is last
    # reading more windows, the selection trains its own ensemble teacher on them
    assert reads_more(cfg) and not reads_more(same)
    assert own_teacher(cfg) and not own_teacher(same)
    assert n_runs(cfg) == n_runs(same) + len(cfg.members)
    # so does running every fit's whole schedule on A's own windows
    whole = replace(same, select=replace(same.select, whole_schedule=True))
    assert own_teacher(whole) and not reads_more(whole)
    assert n_runs(whole) == n_runs(cfg)


def _small_a(cfg: ReportConfig) -> PooledOutcome:
    series = [load_series(s, "5", "", 1500) for s in cfg.pooled.symbols]
    cf = calendar_folds(series[0].times, interval_ms("5"), 1, 32, 0.1, 0.15)[-1]
    last = pooled_fold(series, cf, cfg.pooled.train_stride, val_stride=cfg.pooled.val_stride)
    empty = SettingResult("A", "", "", last.test.y, last.test.start_ms, last.test_symbol)
    return PooledOutcome(empty, [], last, series, {}, cf)


def test_whole_schedule_fits_run_every_step_and_train_their_own_teacher(tmp_path: Path) -> None:
    # patience 1 with a check after every batch: an early-stopped fit ends at its first
    # check without improvement; a whole-schedule fit takes all 12 steps and keeps its best
    fit = FitSettings(epochs=1, batch_size=32, lr=0.05, max_batches=12, eval_every=1, patience=1)
    base = load_report_config(None)
    cfg = replace(
        base,
        seeds=(0,),
        members=(0,),
        progress=False,
        teacher_fit=fit,
        student_fit=fit,
        pooled=replace(base.pooled, symbols=("BTCUSDT", "ETHUSDT"), train_stride=2, val_stride=2),
        select=replace(base.select, sizes=((4,),), whole_schedule=True),
    )
    a = _small_a(cfg)
    with Progress(n_runs(cfg), tmp_path / "log", False) as prog:
        whole = run(Env.make(cfg, prog), a)
    log = (tmp_path / "log").read_text()
    assert "select teacher seed 0" in log  # the reference is trained as the candidates are
    c = whole.candidates[0]
    assert c.steps == 12 and 1 <= c.best_step <= 12
    # after the rule, the chosen student's test AUC per head with its day-block interval
    ci = whole.chosen_test["volatility"]
    assert set(whole.chosen_test) == {"direction", "volatility"}
    assert ci.ci_low <= ci.auc <= ci.ci_high and ci.n_blocks >= 1
    assert whole.as_dict()["chosen_test_auc"]["volatility"]["auc"] == ci.auc
    # the same candidate with the recipe's patience, distilled from that teacher, stops early
    early_cfg = replace(cfg, select=replace(cfg.select, whole_schedule=False))
    early_a = replace(a, members=whole.members)
    with Progress(n_runs(early_cfg), None, False) as prog:
        early = run(Env.make(early_cfg, prog), early_a)
    assert early.members == whole.members  # A's own fits: A's teacher is the reference
    assert early.candidates[0].steps < 12
