"""Teacher/student networks: shapes, sizes, causality, normalisation inside the model."""

from __future__ import annotations

import pytest
import torch

from training.nets.networks import (
    NetSpec,
    build_network,
    count_parameters,
    default_spec,
    feature_shapes,
)

F_, T_ = 12, 32


@pytest.mark.parametrize("family", ["tcn", "mlp"])
def test_forward_with_features_shapes(family: str) -> None:
    torch.manual_seed(0)
    for role in ("teacher", "student"):
        spec = default_spec(family, role, F_, T_)
        net = build_network(spec).eval()
        logits, feats = net.forward_with_features(torch.randn(5, F_, T_))
        assert logits.shape == (5, 2, 2)  # (B, heads: direction + volatility, classes)
        assert len(feats) == len(spec.channels)
        for f, c in zip(feats, spec.channels, strict=True):
            assert f.shape == ((5, c, T_) if family == "tcn" else (5, c))
        torch.testing.assert_close(
            net(torch.zeros(2, F_, T_)), net.forward_with_features(torch.zeros(2, F_, T_))[0]
        )


@pytest.mark.parametrize("family", ["tcn", "mlp"])
def test_two_heads_share_the_trunk(family: str) -> None:
    torch.manual_seed(0)
    net = build_network(default_spec(family, "student", F_, T_)).eval()
    logits, _ = net.forward_with_features(torch.randn(7, F_, T_))
    assert not torch.allclose(logits[:, 0], logits[:, 1])  # two different heads
    # one trunk: a gradient from either head alone reaches the first layer
    for h in (0, 1):
        net.zero_grad()
        net(torch.randn(4, F_, T_))[:, h].sum().backward()
        first = next(p for n, p in net.named_parameters() if "head" not in n)
        assert first.grad is not None and first.grad.abs().sum() > 0


def test_default_sizes() -> None:
    sizes = {
        (fam, role): count_parameters(build_network(default_spec(fam, role, F_, T_)))
        for fam in ("tcn", "mlp")
        for role in ("teacher", "student")
    }
    assert 1_000 < sizes[("tcn", "student")] < 10_000  # "a few thousand parameters"
    assert sizes[("tcn", "teacher")] > 10 * sizes[("tcn", "student")]
    assert sizes[("mlp", "teacher")] > 3 * sizes[("mlp", "student")]
    assert feature_shapes(build_network(default_spec("mlp", "teacher", F_, T_)), F_, T_) == [
        (128,),
        (64,),
        (32,),
    ]


def test_tcn_is_causal() -> None:
    torch.manual_seed(0)
    net = build_network(default_spec("tcn", "teacher", F_, T_)).eval()
    x = torch.randn(1, F_, T_)
    y = x.clone()
    y[:, :, 20:] += 5.0  # change the future from step 20 on
    _, fx = net.forward_with_features(x)
    _, fy = net.forward_with_features(y)
    for a, b in zip(fx, fy, strict=True):
        torch.testing.assert_close(a[:, :, :20], b[:, :, :20])
        assert not torch.allclose(a[:, :, 20:], b[:, :, 20:])


def test_normalisation_is_part_of_the_model() -> None:
    torch.manual_seed(0)
    net = build_network(default_spec("tcn", "student", F_, T_)).eval()
    x = torch.randn(3, F_, T_)
    mean = torch.linspace(-1, 1, F_)
    std = torch.linspace(0.5, 2, F_)
    before = net(x)
    net.norm.set_stats(mean, std)
    after = net(x * std.view(1, -1, 1) + mean.view(1, -1, 1))
    torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-5)
    assert "norm.mean" in net.state_dict() and "norm.std" in net.state_dict()


def test_spec_round_trip_and_errors() -> None:
    spec = NetSpec("tcn", F_, T_, (8, 8, 8), dilations=(1, 3, 9))
    assert NetSpec.from_dict(spec.to_dict()) == spec
    assert NetSpec.from_dict(
        default_spec("tcn", "student", F_, T_).to_dict()
    ).resolved_dilations() == (1, 2)
    with pytest.raises(ValueError, match="family"):
        build_network(NetSpec("rnn", F_, T_, (8,)))
    with pytest.raises(ValueError, match="dilations"):
        NetSpec("tcn", F_, T_, (8, 8), dilations=(1,)).resolved_dilations()
