"""Projection heads map student features to the teacher's shape, across families too."""

from __future__ import annotations

import pytest
import torch

from training.distill.projections import EmbedHead, align_pair, build_projection, default_kind


@pytest.mark.parametrize(
    ("kind", "s_shape", "t_shape", "out"),
    [
        ("linear", (16, 32), (64, 32), (64, 32)),
        ("mlp", (16, 32), (64, 32), (64, 32)),
        ("conv1x1", (16, 32), (64, 32), (64, 32)),
        ("pool_linear", (16, 32), (64, 32), (64,)),
        ("linear", (16,), (32,), (32,)),
        ("mlp", (16,), (32,), (32,)),
        ("pool_linear", (16,), (32,), (32,)),
    ],
)
def test_projection_output_shapes(
    kind: str, s_shape: tuple[int, ...], t_shape: tuple[int, ...], out: tuple[int, ...]
) -> None:
    head = build_projection(kind, s_shape, t_shape)
    assert head(torch.randn(3, *s_shape)).shape == (3, *out)


def test_linear_and_conv1x1_agree_on_conv_features() -> None:
    torch.manual_seed(0)
    lin = build_projection("linear", (4, 6), (5, 6))
    conv = build_projection("conv1x1", (4, 6), (5, 6))
    conv.conv.weight.data = lin.fc.weight.data.unsqueeze(-1).clone()
    conv.conv.bias.data = lin.fc.bias.data.clone()
    x = torch.randn(2, 4, 6)
    torch.testing.assert_close(lin(x), conv(x))


def test_defaults_and_errors() -> None:
    assert default_kind((16, 32), (64, 32)) == "conv1x1"
    assert default_kind((16,), (32,)) == "linear"
    assert default_kind((16, 32), (32,)) == "pool_linear"
    with pytest.raises(ValueError, match="conv1x1"):
        build_projection("conv1x1", (16,), (32,))
    with pytest.raises(ValueError, match="unknown projection"):
        build_projection("attention", (16,), (32,))


def test_align_pair_pools_time() -> None:
    t = torch.arange(8.0).view(1, 1, 8)
    s = torch.zeros(1, 1, 4)
    ta, _ = align_pair(t, s)
    torch.testing.assert_close(ta, torch.tensor([[[0.5, 2.5, 4.5, 6.5]]]))
    ta, _ = align_pair(t, torch.zeros(1, 1))
    torch.testing.assert_close(ta, torch.tensor([[3.5]]))


def test_embed_head_is_unit_norm() -> None:
    e = EmbedHead(16, 8)(torch.randn(5, 16, 32))
    assert e.shape == (5, 8)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(5))
