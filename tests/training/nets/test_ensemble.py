"""The ensemble teacher: averaged probabilities per head, feature targets, save/load, KD."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import DistillConfig
from training.distill.distiller import Distiller
from training.experiments.fit import (
    CachedTeacher,
    FitSettings,
    FoldData,
    cache_teacher,
    network_outputs,
    train_ensemble,
)
from training.nets.ensemble import Ensemble, is_ensemble_dir, load_ensemble
from training.nets.networks import NetSpec, build_network, count_parameters

F_, T_ = 12, 32


def _members() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    nets = [
        build_network(NetSpec("tcn", F_, T_, (8, 8))),
        build_network(NetSpec("tcn", F_, T_, (8, 8))),
        build_network(NetSpec("mlp", F_, T_, (16, 8))),  # families may mix
    ]
    for n in nets:
        n.eval()
    return nets


def _x(n: int = 6) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 1, (n, F_, T_)).astype(np.float32)


def test_outputs_are_the_averaged_member_probabilities_per_head() -> None:
    members = _members()
    ens = Ensemble(members, feature_member=1, seeds=(0, 1, 2))
    x = _x()
    got = ens.predict_proba(x)
    assert set(got) == {"direction", "volatility"}
    with torch.no_grad():
        per = [torch.softmax(m(torch.from_numpy(x)), -1)[..., 1] for m in members]  # (N, H)
    mean = torch.stack(per).mean(0).double().numpy()
    np.testing.assert_allclose(got["direction"], mean[:, 0], atol=1e-7)
    np.testing.assert_allclose(got["volatility"], mean[:, 1], atol=1e-7)
    # the KD logits are log p̄: softmax of them gives the average back
    logits, _ = network_outputs(ens, x)
    assert logits.shape == (6, 2, 2)
    np.testing.assert_allclose(torch.softmax(logits, -1)[..., 1].numpy(), mean, atol=1e-6)
    assert ens.param_count() == sum(count_parameters(m) for m in members)
    assert ens.member_param_count() == count_parameters(members[1])
    assert ens.member_param_count(2) == count_parameters(members[2])
    from training.export import torch_latency_us

    assert 0 < torch_latency_us(ens, x, n=5) < 1e7


def test_feature_targets_come_from_the_configured_member() -> None:
    members = _members()
    x = torch.from_numpy(_x())
    for k in (0, 2):
        ens = Ensemble(members, feature_member=k)
        with torch.no_grad():
            _, feats = ens.forward_with_features(x)
            _, own = members[k].forward_with_features(x)
        assert len(feats) == len(own)
        for a, b in zip(feats, own, strict=True):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="feature_member"):
        Ensemble(members, feature_member=3)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    ens = Ensemble(_members(), feature_member=2, seeds=(4, 5, 6), info={"fold": 0})
    ens.save(tmp_path / "ens")
    assert is_ensemble_dir(tmp_path / "ens") and not is_ensemble_dir(tmp_path)
    back = load_ensemble(tmp_path / "ens")
    assert back.feature_member == 2 and back.seeds == (4, 5, 6) and back.info == {"fold": 0}
    assert [s.family for s in back.specs] == ["tcn", "tcn", "mlp"]
    x = _x()
    for head in ("direction", "volatility"):
        np.testing.assert_array_equal(back.predict_proba(x)[head], ens.predict_proba(x)[head])
    with pytest.raises(FileNotFoundError):
        load_ensemble(tmp_path)


def test_kd_from_an_ensemble_uses_the_average_and_member_features() -> None:
    members = _members()
    ens = Ensemble(members[:2], feature_member=1)
    student = build_network(NetSpec("tcn", F_, T_, (4, 4)))
    x = torch.from_numpy(_x(16))
    y = torch.randint(0, 2, (16, 2))
    from training.data.dataset import Split

    train = Split(x.numpy(), y.numpy(), np.arange(16) * 40, np.arange(16))
    cached = cache_teacher(ens, train, [0, 1])
    assert isinstance(cached, CachedTeacher)
    d = Distiller(
        student,
        cached,
        DistillConfig(method="fitnet", teacher="e"),
        epochs=2,
        input_shape=(F_, T_),
        window=T_,
    )
    cached.select(torch.arange(16))
    out = d(x, y)
    with torch.no_grad():
        _, member_feats = members[1].forward_with_features(x)
    # the cached targets are the live ensemble's: averaged logits and member 1's features
    torch.testing.assert_close(cached.logits, ens(x))
    torch.testing.assert_close(cached.feats[1], member_feats[1])
    assert torch.isfinite(out["loss"]) and "fitnet_0" in out and "kd_volatility" in out


def test_train_ensemble_trains_one_member_per_seed() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)

    def split(n: int):  # type: ignore[no-untyped-def]
        from training.data.dataset import Split

        x = rng.normal(0, 1, (n, F_, T_)).astype(np.float32)
        return Split(x, rng.integers(0, 2, (n, 2)), np.arange(n) * 40, np.arange(n))

    data = FoldData(0, split(96), split(64), split(32), np.zeros(F_), np.ones(F_), np.zeros(32))
    spec = NetSpec("tcn", F_, T_, (4, 4))
    ens, results = train_ensemble(spec, data, FitSettings(epochs=1, batch_size=32), [0, 1, 2])
    assert len(ens) == 3 and len(results) == 3 and ens.seeds == (0, 1, 2)
    w = [next(iter(m.parameters())).detach().clone() for m in ens.members]
    assert not torch.equal(w[0], w[1])  # different seeds, different members
