"""Ensemble targets, per-head predictions, the LR schedule and the progress log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from service import features as fx
from training.experiments.harness import average, ensemble_targets, predict
from training.nets.networks import build_network, default_spec
from training.progress import Progress


def test_ensemble_kd_target_is_the_average_of_tempered_probabilities() -> None:
    spec = default_spec("tcn", "student", fx.N_FEATURES, fx.WINDOW)
    members = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        members.append(build_network(spec).eval())
    x = np.random.default_rng(0).normal(size=(16, fx.N_FEATURES, fx.WINDOW)).astype(np.float32)
    T = 4.0
    tgt = ensemble_targets(members, x, [0, 1], T, feature_member=1)
    with torch.no_grad():
        outs = [m.forward_with_features(torch.from_numpy(x)) for m in members]
    want = torch.stack([F.softmax(lg / T, dim=-1) for lg, _ in outs]).mean(0)  # (B, H, 2)
    got = F.softmax(tgt.logits / T, dim=-1)  # what the Distiller's KD term reads
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # feature targets are member 1's, unaveraged
    torch.testing.assert_close(tgt.feats[0], outs[1][1][0])
    # predictions per head; an ensemble row averages the members' probabilities
    ps = [predict(m, x) for m in members]
    assert set(ps[0]) == {"direction", "volatility"} and ps[0]["volatility"].shape == (16,)
    avg = average(ps)
    np.testing.assert_allclose(avg["direction"], np.mean([p["direction"] for p in ps], axis=0))


def test_progress_counts_runs_and_logs_each(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    with Progress(3, log, enabled=False) as p:
        p.log("start")
        p.step("a", 1.0)
        p.step("b")
    text = log.read_text()
    assert "start" in text and "run 1/3: a (1.0s)" in text and "run 2/3: b" in text
    assert "note: 2 runs done, plan said 3" in text


def test_fit_is_deterministic_for_a_seed() -> None:
    from dataclasses import replace

    from service.market.klines import interval_ms
    from training.config import DistillConfig
    from training.data.series import calendar_folds, load_series, pooled_fold
    from training.experiments.harness import FitSettings, fit

    s = load_series("BTCUSDT", "5", "", 1500)
    cf = calendar_folds(s.times, interval_ms("5"), 1, 32, 0.2, 0.2)[0]
    pf = pooled_fold([s], cf)
    spec = replace(default_spec("tcn", "student", fx.N_FEATURES, fx.WINDOW), dropout=0.1)
    settings = FitSettings(epochs=1, batch_size=64, max_batches=6, eval_every=3, patience=5)
    runs = [fit(spec, pf, DistillConfig(), settings, seed) for seed in (3, 3, 4)]
    p = [predict(r.net, pf.test.x)["volatility"] for r in runs]
    np.testing.assert_array_equal(p[0], p[1])
    assert not np.array_equal(p[0], p[2])
    assert len(runs[0].history) == 2  # checks after batches 3 and 6
    # a small training set gets at least min_steps steps (more epochs), still early-stopped
    longer = fit(spec, pf, DistillConfig(), replace(settings, min_steps=30, patience=50), 3)
    assert len(longer.history) == 10  # 6 batches per epoch, 5 epochs, a check every 3


def test_feature_reference_reads_each_bar_once() -> None:
    from training.data.dataset import Split
    from training.report.export import feature_reference

    rng = np.random.default_rng(0)
    n_bars, t = 200, fx.WINDOW
    feats = rng.normal(size=(n_bars, fx.N_FEATURES)).astype(np.float32)
    ends = np.arange(t - 1, n_bars, 3)  # overlapping windows, every 3rd bar
    x = fx.make_windows(feats.astype(np.float64), ends)
    split = Split(x, np.zeros((len(ends), 2), np.int64), ends.astype(np.int64), ends * 300_000)
    ref = feature_reference(split)
    seen = feats[: ends[-1] + 1]  # bars 0 .. last end, each once
    assert ref.rows == seen.shape[0]
    name = fx.FEATURE_NAMES[3]
    np.testing.assert_allclose(ref.values[name], np.quantile(seen[:, 3], ref.quantiles), rtol=1e-6)
