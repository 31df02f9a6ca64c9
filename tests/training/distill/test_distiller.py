"""The distillation step: named terms, weights, schedules, and where gradients go."""

from __future__ import annotations

import math

import pytest
import torch

from training.config import METHODS, DistillConfig
from training.distill import losses as L
from training.distill.distiller import (
    Distiller,
    default_pairs,
    gamma_factor,
    progressive_active,
    three_levels,
)
from training.nets.networks import NetSpec, build_network

F_, T_ = 12, 32


def _nets(family: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    if family == "tcn":
        teacher = build_network(NetSpec("tcn", F_, T_, (24, 24, 24, 24)))
        student = build_network(NetSpec("tcn", F_, T_, (8, 8)))
    else:
        teacher = build_network(NetSpec("mlp", F_, T_, (48, 24, 16)))
        student = build_network(NetSpec("mlp", F_, T_, (12, 8)))
    return teacher, student


def _distiller(family: str, method: str, **kw: object) -> Distiller:
    teacher, student = _nets(family)
    cfg = DistillConfig(method=method, teacher="t.pt", **kw)  # type: ignore[arg-type]
    return Distiller(
        student,
        None if method == "scratch" else teacher,
        cfg,
        epochs=10,
        input_shape=(F_, T_),
        window=T_,
    )


def _batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(n, F_, T_, generator=g),
        torch.randint(0, 2, (n, 2), generator=g),  # (B, H): direction, volatility
        torch.arange(n) * 40,
    )


def test_three_level_heuristic() -> None:
    assert three_levels(4) == [0, 2, 3]
    assert three_levels(3) == [0, 1, 2]
    assert default_pairs(4, 2) == [(0, 0), (3, 1)]
    assert default_pairs(3, 2) == [(0, 0), (2, 1)]
    assert default_pairs(4, 4) == [(0, 0), (2, 2), (3, 3)]


def test_gamma_schedules() -> None:
    assert gamma_factor("constant", 5, 10, 0.0) == 1.0
    assert gamma_factor("linear", 0, 11, 0.0) == pytest.approx(1.0)
    assert gamma_factor("linear", 5, 11, 0.0) == pytest.approx(0.5)
    assert gamma_factor("linear", 10, 11, 0.2) == pytest.approx(0.2)
    assert gamma_factor("cosine", 5, 11, 0.0) == pytest.approx(0.5)
    assert gamma_factor("cosine", 10, 11, 0.1) == pytest.approx(0.1)
    assert gamma_factor("cosine", 2, 11, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))


def test_progressive_matching_starts_deepest() -> None:
    assert progressive_active(3, 0, 2) == [False, False, True]
    assert progressive_active(3, 2, 2) == [False, True, True]
    assert progressive_active(3, 9, 2) == [True, True, True]
    d = _distiller("tcn", "fitnet", progressive=True, progressive_every=3)
    assert d.weights(0).gammas == (0.0, 0.2)
    assert d.weights(3).gammas == (0.2, 0.2)


def test_two_stage_fitnet() -> None:
    d = _distiller("tcn", "fitnet", two_stage=True, hint_epochs=2)
    w0, w2 = d.weights(0), d.weights(2)
    assert (w0.stage, w0.alpha, w0.beta, w0.gammas) == ("hint", 0.0, 0.0, (0.2, 0.2))
    assert (w2.stage, w2.alpha, w2.beta, w2.gammas) == ("kd", 0.3, 0.3, (0.0, 0.0))
    x, y, pos = _batch()
    out = d(x, y, pos, epoch=0)
    assert out["loss"].item() == pytest.approx(
        0.2 * (out["fitnet_0"] + out["fitnet_1"]).item(), rel=1e-5
    )
    out = d(x, y, pos, epoch=2)
    assert "fitnet_0" not in out
    assert out["loss"].item() == pytest.approx(
        (0.3 * out["task"] + 0.3 * out["kd"]).item(), rel=1e-5
    )


KD = {"kd", "kd_direction", "kd_volatility"}
EXPECTED_TERMS = {
    "scratch": set(),
    "kd": KD,
    "fitnet": KD | {"fitnet_0", "fitnet_1"},
    "attention": KD | {"attention_0", "attention_1"},
    "activation": KD | {"activation_0", "activation_1"},
    "gram": KD | {"gram_0", "gram_1"},
    "crd": KD | {"crd_0", "crd_1"},
    "combined": KD | {"fitnet_0", "fitnet_1", "attention_0", "attention_1", "gram_0", "gram_1"},
}
TASK = {"task", "task_direction", "task_volatility"}


@pytest.mark.parametrize("family", ["tcn", "mlp"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_returns_named_terms_and_their_weighted_sum(family: str, method: str) -> None:
    d = _distiller(family, method)
    x, y, pos = _batch()
    out = d(x, y, pos)
    assert set(out) == {"loss", "logits"} | TASK | EXPECTED_TERMS[method]
    assert out["logits"].shape == (16, 2, 2)
    assert out["task"].item() == pytest.approx(
        (out["task_direction"] + out["task_volatility"]).item(), rel=1e-6
    )
    if method == "scratch":
        expected = out["task"]
    else:
        feats = sum((v for k, v in out.items() if k[-1].isdigit()), torch.tensor(0.0))
        expected = 0.3 * out["task"] + 0.3 * out["kd"] + 0.2 * feats
        assert out["kd"].item() == pytest.approx(
            (out["kd_direction"] + out["kd_volatility"]).item(), rel=1e-6
        )
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("family", ["tcn", "mlp"])
@pytest.mark.parametrize("method", ["fitnet", "attention", "activation", "gram", "crd", "combined"])
def test_gradients_reach_student_and_heads_only(family: str, method: str) -> None:
    d = _distiller(family, method)
    teacher = d.teacher
    assert teacher is not None
    d.train()
    assert not teacher.training  # train() on the distiller leaves the teacher in eval mode
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not any(p is q for p in d.parameters() for q in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x, y, pos = _batch()
    d(x, y, pos)["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    student_grads = [p.grad for p in d.student.parameters()]
    assert all(g is not None for g in student_grads)
    heads = [*d.heads.parameters(), *d.embed_s.parameters(), *d.embed_t.parameters()]
    if method == "attention" and family == "tcn":
        assert not heads  # attention maps ignore channel counts: nothing to project
    else:
        assert heads and all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads)
    for k, v in teacher.state_dict().items():  # BatchNorm running stats untouched
        torch.testing.assert_close(v, before[k])


@pytest.mark.parametrize("family", ["tcn", "mlp"])
def test_per_head_weights(family: str) -> None:
    d = _distiller(family, "kd", head_weights=(0.25, 2.0), kd_head_weights=(0.0, 1.0))
    x, y, pos = _batch()
    out = d(x, y, pos)
    s_logits = out["logits"]
    t_logits = d.teacher(x)  # type: ignore[misc]
    ce = [torch.nn.functional.cross_entropy(s_logits[:, h], y[:, h]) for h in (0, 1)]
    kd = [L.kd_loss(s_logits[:, h], t_logits[:, h], 4.0) for h in (0, 1)]
    assert out["task"].item() == pytest.approx((0.25 * ce[0] + 2.0 * ce[1]).item(), rel=1e-5)
    assert out["kd"].item() == pytest.approx(kd[1].item(), rel=1e-5)  # direction KD off
    assert out["kd_direction"].item() == pytest.approx(kd[0].item(), rel=1e-5)  # still logged
    # a head weighted 0 in both sends no gradient into its own output row
    d0 = _distiller(family, "kd", head_weights=(0.0, 1.0), kd_head_weights=(0.0, 1.0))
    d0(x, y, pos)["loss"].backward()
    w = d0.student.head.weight.grad  # (H·2, C): rows 0-1 direction, 2-3 volatility
    assert w[:2].abs().sum() == 0 and w[2:].abs().sum() > 0


def test_attention_on_tcn_uses_raw_features() -> None:
    d = _distiller("tcn", "attention")
    x, y, pos = _batch()
    teacher = d.teacher
    assert teacher is not None
    _, sf = d.student.forward_with_features(x)
    _, tf = teacher.forward_with_features(x)
    out = d(x, y, pos)
    expected = L.attention_transfer_loss(sf[0], tf[0])
    assert out["attention_0"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_crd_memory_bank_fills_and_excludes_neighbours() -> None:
    d = _distiller("tcn", "crd", crd_bank=24)
    d.train()
    x, y, _ = _batch()
    for step in range(3):
        d(x, y, torch.arange(16) + 1000 * step)
    bank_s, bank_t, bank_pos = d._bank[0]
    assert bank_s.shape == (24, 32) and bank_t.shape == (24, 32) and bank_pos.shape == (24,)
    assert bank_pos[0].item() == 2000  # newest first
    d.eval()
    d(x, y, torch.arange(16))  # evaluation never writes the bank
    assert d._bank[0][2][0].item() == 2000


def test_config_errors() -> None:
    teacher, student = _nets("tcn")
    with pytest.raises(ValueError, match="out of range"):
        Distiller(
            student,
            teacher,
            DistillConfig(method="fitnet", pairs=((9, 0),)),
            epochs=2,
            input_shape=(F_, T_),
            window=T_,
        )
    with pytest.raises(ValueError, match="gammas"):
        Distiller(
            student,
            teacher,
            DistillConfig(method="fitnet", gammas=(0.1, 0.2, 0.3)),
            epochs=2,
            input_shape=(F_, T_),
            window=T_,
        )
    with pytest.raises(ValueError, match="needs a teacher"):
        Distiller(
            student, None, DistillConfig(method="kd"), epochs=2, input_shape=(F_, T_), window=T_
        )
