"""Every distillation loss against values worked out by hand, plus its invariances."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.distill import losses as L


def test_kd_loss_matches_hand_computed_kl() -> None:
    s = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    t = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    T = 2.0
    # Row 1: p_t = softmax([1, 0]), p_s = [½, ½]; row 2: p_t = [½, ½], p_s = softmax([½, -½]).
    a = math.exp(1) / (math.exp(1) + 1)
    kl1 = a * math.log(a / 0.5) + (1 - a) * math.log((1 - a) / 0.5)
    b = math.exp(0.5) / (math.exp(0.5) + math.exp(-0.5))
    kl2 = 0.5 * math.log(0.5 / b) + 0.5 * math.log(0.5 / (1 - b))
    expected = T * T * (kl1 + kl2) / 2
    assert L.kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_is_zero_for_equal_logits_and_positive_otherwise() -> None:
    x = torch.randn(8, 2)
    assert L.kd_loss(x, x.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-7)
    assert L.kd_loss(x, x + torch.tensor([1.0, -1.0]), 4.0).item() > 0


def test_fitnet_loss_is_half_mean_square() -> None:
    t = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    s = torch.tensor([[0.0, 2.0], [3.0, 6.0]])
    # differences 1, 0, 0, -2 → squares 1, 0, 0, 4 → mean 1.25 → half 0.625
    assert L.fitnet_loss(t, s).item() == pytest.approx(0.625)


def test_fitnet_loss_rejects_unprojected_student() -> None:
    with pytest.raises(ValueError, match="projection"):
        L.fitnet_loss(torch.zeros(2, 4, 8), torch.zeros(2, 3, 8))


def test_attention_map_by_hand() -> None:
    A = torch.tensor([[[1.0, -2.0, 0.0], [2.0, 1.0, 0.0]]])  # (1, C=2, T=3)
    # Σ_c A² per step: [1+4, 4+1, 0] = [5, 5, 0]; L2 norm √50
    q = L.attention_map(A)
    expected = torch.tensor([[5.0, 5.0, 0.0]]) / math.sqrt(50.0)
    torch.testing.assert_close(q, expected)
    # p = 1: Σ|A| = [3, 3, 0], norm √18
    torch.testing.assert_close(
        L.attention_map(A, p=1), torch.tensor([[3.0, 3.0, 0.0]]) / math.sqrt(18)
    )


def test_attention_transfer_loss_by_hand() -> None:
    s = torch.tensor([[[1.0, 0.0]]])  # Q_s = [1, 0]
    t = torch.tensor([[[0.0, 3.0]]])  # Q_t = [0, 1]
    assert L.attention_transfer_loss(s, t).item() == pytest.approx(math.sqrt(2.0))
    # Two samples: identical maps contribute 0, so the batch mean halves it.
    s2 = torch.cat([s, t])
    t2 = torch.cat([t, t])
    assert L.attention_transfer_loss(s2, t2).item() == pytest.approx(math.sqrt(2.0) / 2)


def test_attention_transfer_ignores_channel_count() -> None:
    torch.manual_seed(0)
    s = torch.randn(4, 3, 16)
    t = torch.randn(4, 64, 16)
    base = L.attention_transfer_loss(s, t)
    # Repeating the student's channels changes C (3 → 9) but not the normalised map.
    assert L.attention_transfer_loss(s.repeat(1, 3, 1), t).item() == pytest.approx(
        base.item(), rel=1e-5
    )


def test_attention_transfer_pools_the_longer_feature() -> None:
    t_short = torch.tensor([[[1.0, 2.0]]])
    s_long = torch.tensor([[[1.0, 1.0, 2.0, 2.0]]])  # pools to [1, 2]
    assert L.attention_transfer_loss(s_long, t_short).item() == pytest.approx(0.0, abs=1e-7)
    assert L.attention_transfer_loss(t_short, s_long).item() == pytest.approx(0.0, abs=1e-7)


def test_attention_transfer_rejects_vectors() -> None:
    with pytest.raises(ValueError, match=r"\(B, C, T\)"):
        L.attention_transfer_loss(torch.zeros(2, 8), torch.zeros(2, 8, 4))
    with pytest.raises(ValueError, match=r"\(B, C, T\)"):
        L.attention_map(torch.zeros(2, 8))


def test_activation_loss_is_plain_mean_square() -> None:
    t = torch.tensor([1.0, -1.0, 0.5, 0.0])
    s = torch.tensor([0.0, 1.0, 0.5, 2.0])
    assert L.activation_loss(t, s).item() == pytest.approx((1 + 4 + 0 + 4) / 4)


def test_gram_matrix_by_hand() -> None:
    A = torch.tensor([[[1.0, 2.0], [0.0, 3.0]]])  # (1, C=2, D=2)
    # A·Aᵀ = [[5, 6], [6, 9]], divided by C·D = 4
    torch.testing.assert_close(L.gram_matrix(A), torch.tensor([[[5.0, 6.0], [6.0, 9.0]]]) / 4)
    v = torch.tensor([[1.0, 2.0]])  # (B, C) counts as D = 1: outer product / 2
    torch.testing.assert_close(L.gram_matrix(v), torch.tensor([[[1.0, 2.0], [2.0, 4.0]]]) / 2)


def test_gram_loss_by_hand_and_permutation() -> None:
    t = torch.tensor([[[1.0, 2.0], [0.0, 3.0]]])
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # G = I/4
    # G(t) − G(s) = [[4, 6], [6, 8]] / 4 → squared Frobenius (16 + 36 + 36 + 64) / 16
    assert L.gram_loss(t, s).item() == pytest.approx(152 / 16)
    torch.manual_seed(1)
    a, b = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    perm = torch.tensor([3, 0, 4, 1, 2])
    g = L.gram_matrix(a)
    torch.testing.assert_close(L.gram_matrix(a[:, perm]), g[:, perm][:, :, perm])
    assert L.gram_loss(a[:, perm], b[:, perm]).item() == pytest.approx(
        L.gram_loss(a, b).item(), rel=1e-5
    )


def test_gram_loss_needs_equal_channels() -> None:
    with pytest.raises(ValueError, match="project the student"):
        L.gram_loss(torch.zeros(2, 8, 4), torch.zeros(2, 4, 4))


def test_crd_at_chance_is_log_batch() -> None:
    e = torch.nn.functional.normalize(torch.ones(6, 4), dim=1)
    assert L.crd_loss(e, e.clone(), 0.1).item() == pytest.approx(math.log(6), rel=1e-6)
    bank = torch.nn.functional.normalize(torch.ones(10, 4), dim=1)
    with_bank = L.crd_loss(e, e.clone(), 0.1, bank_s=bank, bank_t=bank)
    assert with_bank.item() == pytest.approx(math.log(16), rel=1e-6)


def test_crd_by_hand_two_samples() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    tau = 0.5
    # logits = s·tᵀ/τ = [[2, 1.2], [0, 1.6]]
    ce = lambda row, k: -row[k] + math.log(sum(math.exp(v) for v in row))  # noqa: E731
    forward = (ce([2.0, 1.2], 0) + ce([0.0, 1.6], 1)) / 2
    backward = (ce([2.0, 0.0], 0) + ce([1.2, 1.6], 1)) / 2
    assert L.crd_loss(s, t, tau).item() == pytest.approx((forward + backward) / 2, rel=1e-6)


def test_crd_masks_temporally_adjacent_negatives() -> None:
    e = torch.nn.functional.normalize(torch.ones(4, 3), dim=1)
    idx = torch.tensor([0, 1, 100, 200])  # windows 0 and 1 overlap when T = 32
    loss = L.crd_loss(e, e.clone(), 0.1, idx=idx, exclude_within=32)
    # rows 0, 1 keep 3 candidates (log 3), rows 2, 3 keep all 4 (log 4)
    assert loss.item() == pytest.approx((2 * math.log(3) + 2 * math.log(4)) / 4, rel=1e-6)
    bank = e[:2].clone()
    bank_idx = torch.tensor([5, 500])  # the first overlaps windows 0 and 1
    loss = L.crd_loss(
        e, e.clone(), 0.1, bank_s=bank, bank_t=bank, idx=idx, bank_idx=bank_idx, exclude_within=32
    )
    assert loss.item() == pytest.approx((2 * math.log(4) + 2 * math.log(6)) / 4, rel=1e-6)


def test_crd_trains_both_embedding_heads_but_not_the_bank() -> None:
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)  # output of the teacher-side head
    bank = torch.randn(5, 3, requires_grad=True)
    norm = torch.nn.functional.normalize
    L.crd_loss(norm(s, dim=1), norm(t, dim=1), 0.1, bank_s=bank, bank_t=bank).backward()
    assert s.grad is not None and t.grad is not None
    assert bank.grad is None


def test_teacher_tensors_never_get_gradients() -> None:
    s = torch.randn(4, 6, 8, requires_grad=True)
    t = torch.randn(4, 6, 8, requires_grad=True)
    total = (
        L.fitnet_loss(t, s)
        + L.attention_transfer_loss(s, t)
        + L.activation_loss(t, s)
        + L.gram_loss(t, s)
        + L.kd_loss(s[:, :2, 0], t[:, :2, 0], 4.0)
    )
    total.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_head_losses_are_per_head_and_weighted() -> None:
    g = torch.Generator().manual_seed(3)
    s = torch.randn(10, 2, 2, generator=g)
    t = torch.randn(10, 2, 2, generator=g)
    y = torch.randint(0, 2, (10, 2), generator=g)
    task = L.head_task_losses(s, y)
    kd = L.head_kd_losses(s, t, 2.0)
    for h in (0, 1):
        assert task[h].item() == pytest.approx(F.cross_entropy(s[:, h], y[:, h]).item())
        assert kd[h].item() == pytest.approx(L.kd_loss(s[:, h], t[:, h], 2.0).item())
    assert L.weighted_sum(task, (0.5, 2.0)).item() == pytest.approx(
        (0.5 * task[0] + 2.0 * task[1]).item()
    )
    with pytest.raises(ValueError, match="head weights"):
        L.weighted_sum(task, (1.0,))
    with pytest.raises(ValueError, match="labels"):
        L.head_task_losses(s, y[:, 0])
