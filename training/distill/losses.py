"""Distillation losses as pure functions (DESIGN section 4).

Conventions: ``s`` is the student, ``t`` the teacher. Conv features are (B, C, T) (batch,
channels, time), MLP features (B, C). Teacher tensors are detached inside every loss, so a
caller that forgets ``torch.no_grad()`` still cannot push gradients into the teacher.
Projections (student → teacher shape) are applied by the caller, never in here.

Two-head networks give logits (B, H, 2), one (B, 2) pair per head (direction, volatility);
:func:`head_task_losses` and :func:`head_kd_losses` return one term per head, which the
caller weights and sums (DESIGN section 4: L_task and L_KD sum over the heads).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "activation_loss",
    "attention_map",
    "attention_transfer_loss",
    "crd_loss",
    "fitnet_loss",
    "gram_loss",
    "gram_matrix",
    "head_kd_losses",
    "head_task_losses",
    "kd_loss",
    "pool_time",
    "weighted_sum",
]


def kd_loss(s_logits: Tensor, t_logits: Tensor, T: float) -> Tensor:
    """Hinton KD: T² · batch mean of KL(softmax(t/T) ‖ softmax(s/T)).

    The T² factor keeps the gradient scale independent of the temperature.
    """
    if s_logits.shape != t_logits.shape:
        raise ValueError(
            f"kd_loss: logits shapes differ {tuple(s_logits.shape)} vs {tuple(t_logits.shape)}"
        )
    log_p_s = F.log_softmax(s_logits / T, dim=-1)  # (B, K)
    log_p_t = F.log_softmax(t_logits.detach() / T, dim=-1)  # (B, K)
    # KL(p_t ‖ p_s) = Σ p_t (log p_t − log p_s), summed over classes, averaged over the batch.
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)  # (B,)
    return kl.mean() * (T * T)


def head_task_losses(logits: Tensor, y: Tensor) -> list[Tensor]:
    """Cross-entropy per head: logits (B, H, 2), labels y (B, H) int64 → H scalars."""
    if logits.dim() != 3 or y.shape != logits.shape[:2]:
        raise ValueError(
            f"head_task_losses: logits {tuple(logits.shape)} need (B, H, 2) and labels (B, H), "
            f"got labels {tuple(y.shape)}"
        )
    return [F.cross_entropy(logits[:, h], y[:, h]) for h in range(logits.shape[1])]


def head_kd_losses(s_logits: Tensor, t_logits: Tensor, T: float) -> list[Tensor]:
    """:func:`kd_loss` per head on (B, H, 2) student and teacher logits → H scalars."""
    if s_logits.dim() != 3:
        raise ValueError(f"head_kd_losses: logits must be (B, H, 2), got {tuple(s_logits.shape)}")
    if s_logits.shape != t_logits.shape:
        raise ValueError(
            f"kd_loss: logits shapes differ {tuple(s_logits.shape)} vs {tuple(t_logits.shape)}"
        )
    return [kd_loss(s_logits[:, h], t_logits[:, h], T) for h in range(s_logits.shape[1])]


def weighted_sum(terms: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Σ_h w_h · term_h (one weight per head)."""
    if len(terms) != len(weights):
        raise ValueError(f"{len(terms)} head terms but {len(weights)} head weights")
    total = terms[0] * weights[0]
    for term, w in zip(terms[1:], weights[1:], strict=True):
        total = total + term * w
    return total


def fitnet_loss(t_feat: Tensor, s_proj: Tensor) -> Tensor:
    """FitNets hint loss: ½ · mean over all elements of (t − r(s))²; ``s_proj`` = r(s)."""
    _same_shape("fitnet_loss", t_feat, s_proj)
    return 0.5 * (t_feat.detach() - s_proj).pow(2).mean()


def attention_map(A: Tensor, p: int = 2) -> Tensor:
    """Spatial (here: temporal) attention map of a (B, C, T) feature.

    Σ_c |A_c|^p over channels → (B, T), each row divided by its L2 norm. The map does not
    depend on the channel count, which is why AT needs no projection head.
    """
    if A.dim() != 3:
        raise ValueError(
            f"attention_map needs (B, C, T) features, got shape {tuple(A.shape)}; "
            "(B, C) features have no time axis to attend over"
        )
    q = A.abs().pow(p).sum(dim=1)  # (B, T)
    return F.normalize(q, p=2, dim=1, eps=1e-12)


def pool_time(x: Tensor, length: int) -> Tensor:
    """Adaptive average pooling of a (B, C, T) tensor to (B, C, length)."""
    if x.shape[-1] == length:
        return x
    return F.adaptive_avg_pool1d(x, length)


def attention_transfer_loss(s_feat: Tensor, t_feat: Tensor, p: int = 2) -> Tensor:
    """Zagoruyko & Komodakis AT: batch mean of ‖Q_s − Q_t‖₂ (the norm, not squared).

    When the time lengths differ, the longer feature is adaptive-average-pooled to the
    shorter length first. Channel counts may differ. (B, C) inputs raise ValueError.
    """
    for name, x in (("student", s_feat), ("teacher", t_feat)):
        if x.dim() != 3:
            raise ValueError(
                f"attention_transfer_loss: {name} feature has shape {tuple(x.shape)}; "
                "attention transfer needs (B, C, T) features (conv/TCN layers), not (B, C)"
            )
    if s_feat.shape[0] != t_feat.shape[0]:
        raise ValueError("attention_transfer_loss: batch sizes differ")
    length = min(s_feat.shape[-1], t_feat.shape[-1])
    q_s = attention_map(pool_time(s_feat, length), p)  # (B, T')
    q_t = attention_map(pool_time(t_feat.detach(), length), p)  # (B, T')
    loss: Tensor = (q_s - q_t).norm(p=2, dim=1).mean()
    return loss


def activation_loss(t_feat: Tensor, s_feat: Tensor) -> Tensor:
    """Mean over all elements of (φ(t) − ψ(s))²; φ and ψ are applied by the caller."""
    _same_shape("activation_loss", t_feat, s_feat)
    return (t_feat.detach() - s_feat).pow(2).mean()


def gram_matrix(A: Tensor) -> Tensor:
    """Per-sample Gram matrix A·Aᵀ / (C·D) → (B, C, C); D is the time length (1 for (B, C))."""
    if A.dim() == 2:
        A = A.unsqueeze(-1)  # (B, C, 1)
    if A.dim() != 3:
        raise ValueError(f"gram_matrix needs (B, C, T) or (B, C), got {tuple(A.shape)}")
    _, c, d = A.shape
    return torch.bmm(A, A.transpose(1, 2)) / (c * d)  # (B, C, C)


def gram_loss(t_feat: Tensor, s_feat: Tensor) -> Tensor:
    """Batch mean of ‖G(t) − G(s)‖²_F. Channel counts must match: project the student first."""
    if t_feat.shape[1] != s_feat.shape[1]:
        raise ValueError(
            f"gram_loss: channel counts differ (teacher {t_feat.shape[1]}, student "
            f"{s_feat.shape[1]}); project the student feature to the teacher's channels first"
        )
    g_t = gram_matrix(t_feat.detach())  # (B, C, C)
    g_s = gram_matrix(s_feat)  # (B, C, C)
    return (g_t - g_s).pow(2).sum(dim=(1, 2)).mean()


def crd_loss(
    s_emb: Tensor,
    t_emb: Tensor,
    tau: float,
    *,
    bank_s: Tensor | None = None,
    bank_t: Tensor | None = None,
    idx: Tensor | None = None,
    bank_idx: Tensor | None = None,
    exclude_within: int = 0,
) -> Tensor:
    """Contrastive representation distillation as symmetric in-batch InfoNCE.

    ``s_emb``, ``t_emb``: (B, D), already L2-normalised, each from a trainable head (the
    teacher-side head reads detached teacher features). logits = s·tᵀ/τ (B, B) and the
    positive of row i is column i: ½·[CE(logits, diag) + CE(logitsᵀ, diag)].

    Memory bank (optional): ``bank_t`` (K, D) holds earlier teacher embeddings and is appended
    as extra negatives for the student-anchored direction; ``bank_s`` (K, D) holds earlier
    student embeddings for the teacher-anchored direction. Overlapping windows are
    near-duplicates, so with ``idx`` (B,) and ``bank_idx`` (K,) window positions, every
    negative whose position lies within ``exclude_within`` bars of the anchor is masked out
    (in-batch and bank). At chance (all logits equal, no bank) the loss is log B.
    """
    if s_emb.shape != t_emb.shape or s_emb.dim() != 2:
        raise ValueError(
            "crd_loss: embeddings must both be (B, D), got "
            f"{tuple(s_emb.shape)} and {tuple(t_emb.shape)}"
        )
    # t_emb is NOT detached: it comes from a trainable embedding head on the (detached)
    # teacher feature, and CRD trains that head too. Bank entries are constants.
    b = s_emb.shape[0]
    target = torch.arange(b, device=s_emb.device)
    logits = s_emb @ t_emb.T / tau  # (B, B): row i = student anchor i vs teacher j
    logits_t = logits.T  # (B, B): row i = teacher anchor i vs student j
    if exclude_within > 0 and idx is not None:
        near = (idx[:, None] - idx[None, :]).abs() < exclude_within  # (B, B)
        near &= ~torch.eye(b, dtype=torch.bool, device=s_emb.device)  # keep the positive
        logits = logits.masked_fill(near, -math.inf)
        logits_t = logits_t.masked_fill(near.T, -math.inf)
    if bank_t is not None and bank_s is not None and bank_t.shape[0] > 0:
        extra_s = s_emb @ bank_t.detach().T / tau  # (B, K)
        extra_t = t_emb @ bank_s.detach().T / tau  # (B, K)
        if exclude_within > 0 and idx is not None and bank_idx is not None:
            near_bank = (idx[:, None] - bank_idx[None, :]).abs() < exclude_within  # (B, K)
            extra_s = extra_s.masked_fill(near_bank, -math.inf)
            extra_t = extra_t.masked_fill(near_bank, -math.inf)
        logits = torch.cat([logits, extra_s], dim=1)  # (B, B + K)
        logits_t = torch.cat([logits_t, extra_t], dim=1)  # (B, B + K)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits_t, target))


def _same_shape(name: str, a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name}: teacher {tuple(a.shape)} and projected student {tuple(b.shape)} differ; "
            "choose a projection head that maps the student to the teacher's shape"
        )
