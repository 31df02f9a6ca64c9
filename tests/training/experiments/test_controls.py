"""Issue 29's standing controls inside the experiments: the diverse teacher's KD targets,
the linear student and the pre-registered plan's counts."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from service import features as fx
from training.experiments.harness import diverse_targets, tempered_pair
from training.nets.networks import NetSpec, build_network, count_parameters, default_spec


def test_tempered_pair_is_a_network_softmax_at_temperature() -> None:
    p = np.array([0.2, 0.5, 0.9])
    got = tempered_pair(p, 4.0)  # (3, 2)
    logit = torch.tensor(np.log(p / (1 - p)), dtype=torch.float32)
    want = F.softmax(torch.stack([torch.zeros(3), logit], dim=-1) / 4.0, dim=-1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_diverse_target_weighs_the_network_ensemble_and_each_other_model_alike() -> None:
    spec = default_spec("tcn", "student", fx.N_FEATURES, fx.WINDOW)
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(build_network(spec).eval())
    x = np.random.default_rng(0).normal(size=(8, fx.N_FEATURES, fx.WINDOW)).astype(np.float32)
    T = 4.0
    lin = {"direction": np.full(8, 0.6), "volatility": np.full(8, 0.8)}
    trees = {"direction": np.full(8, 0.4), "volatility": np.full(8, 0.3)}
    tgt = diverse_targets(members, [lin, trees], x, [0], T)
    with torch.no_grad():
        outs = [m(torch.from_numpy(x)) for m in members]
    nets = torch.stack([F.softmax(lg / T, dim=-1) for lg in outs]).mean(0)  # (B, H, 2)
    others = [
        torch.stack([tempered_pair(o[h], T) for h in ("direction", "volatility")], dim=1)
        for o in (lin, trees)
    ]
    want = (nets + others[0] + others[1]) / 3
    torch.testing.assert_close(F.softmax(tgt.logits / T, dim=-1), want, atol=1e-6, rtol=0)
    assert set(tgt.feats) == {0}  # features still come from a network member


def test_linear_student_is_one_linear_map_of_the_window() -> None:
    net = build_network(NetSpec("mlp", fx.N_FEATURES, fx.WINDOW, ()))
    assert count_parameters(net) == (fx.N_FEATURES * fx.WINDOW + 1) * 4
    logits, feats = net.forward_with_features(torch.zeros(3, fx.N_FEATURES, fx.WINDOW))
    assert logits.shape == (3, 2, 2) and feats == []


def test_plan_counts_include_the_new_rows() -> None:
    from training.experiments import cross_asset, pooled, selection
    from training.experiments.config import load_report_config

    cfg = load_report_config("configs/report.toml")
    rows = pooled.student_rows(cfg)
    assert "kd (diverse teacher)" in rows and "linear student (kd)" in rows
    assert ("kd", "logistic regression") in pooled.comparisons(cfg)
    assert pooled.n_runs(cfg) == cfg.pooled.folds * (len(cfg.members) + len(rows) * len(cfg.seeds))
    assert selection.n_runs(cfg) == len(cfg.select.sizes) + 1 + len(cfg.members)
    assert "kd (pooled diverse teacher)" in cross_asset.distilled(cfg)
    assert all(
        (d, "logistic regression") in cross_asset.comparisons(cfg)
        for d in cross_asset.distilled(cfg)
    )
