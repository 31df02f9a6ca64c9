"""The distillation step: total = α·task + β·KD + Σ_j γ_j·feature_j, every term named.

:class:`Distiller` owns the student and the trainable distillation heads (projections, CRD
embeddings); the frozen teacher is held outside the module tree, so ``parameters()``,
``state_dict()``, ``train()`` and DDP only ever see what is trained. ``forward`` returns a
dict (timm's ``task/distillation.py`` style): ``loss`` (the total), ``logits`` (B, H, 2),
``task`` and ``kd`` (head-weighted sums over the two heads), the per-head terms
``task_direction``, ``task_volatility``, ``kd_direction``, ``kd_volatility``, and one entry
per feature term and layer pair (``fitnet_0``, ``attention_1`` ...). Feature terms act on the
shared trunk, so they serve both heads at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from service.model.card import HEADS
from training.config import DistillConfig
from training.distill import losses as L
from training.distill.projections import EmbedHead, align_pair, build_projection

Shape = tuple[int, ...]


# ------------------------------------------------------------------ layer pairs, schedules


def three_levels(n_layers: int) -> list[int]:
    """Early, middle and pre-head layer indices of an L-layer network."""
    return [0, int((n_layers - 1) / 2 + 0.5), n_layers - 1]


def default_pairs(n_teacher: int, n_student: int) -> list[tuple[int, int]]:
    """The three-level heuristic: early↔early, middle↔middle, pre-head↔pre-head.

    When the student is shallower two levels land on the same student layer; the deeper
    teacher layer wins (a layer is matched once). Returned shallow → deep.
    """
    chosen: list[tuple[int, int]] = []
    for t, s in reversed(list(zip(three_levels(n_teacher), three_levels(n_student), strict=True))):
        if all(t != ct and s != cs for ct, cs in chosen):
            chosen.append((t, s))
    return sorted(chosen)


def gamma_factor(schedule: str, epoch: int, epochs: int, final: float) -> float:
    """Multiplier of γ at ``epoch`` (0-based) of ``epochs``: 1 → ``final`` by the last epoch."""
    if schedule == "constant" or epochs <= 1:
        return 1.0
    frac = min(max(epoch / (epochs - 1), 0.0), 1.0)
    if schedule == "linear":
        return 1.0 + (final - 1.0) * frac
    if schedule == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown gamma schedule {schedule!r}")


def progressive_active(n_pairs: int, epoch: int, every: int) -> list[bool]:
    """Pairs (ordered shallow → deep) switched on at ``epoch``: deepest first, one more
    every ``every`` epochs."""
    n_on = min(n_pairs, 1 + epoch // max(every, 1))
    return [j >= n_pairs - n_on for j in range(n_pairs)]


@dataclass(frozen=True)
class Weights:
    """Loss weights in force at one epoch."""

    alpha: float
    beta: float
    gammas: tuple[float, ...]
    stage: str  # "joint" | "hint" | "kd"


def standardize(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-channel standardisation over batch (and time): the φ/ψ of activation matching.

    It removes each channel's scale and offset, so the loss compares activation patterns
    rather than magnitudes (teacher and student channels live on different scales).
    """
    dims = [0] if x.dim() == 2 else [0, 2]
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)


# ---------------------------------------------------------------------------- the step


class Distiller(nn.Module):
    """Student + distillation heads; computes every named loss term of one batch."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        cfg: DistillConfig,
        *,
        epochs: int,
        input_shape: Shape,
        window: int,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.epochs = epochs
        self.window = window
        self.student = student
        self.__dict__["teacher"] = teacher  # not a submodule: never trained, saved or synced
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
        if cfg.method != "scratch" and teacher is None:
            raise ValueError(f"method {cfg.method!r} needs a teacher")
        self.pairs: list[tuple[int, int]] = []
        self.heads = nn.ModuleList()
        self.embed_s = nn.ModuleList()
        self.embed_t = nn.ModuleList()
        self._bank: list[tuple[Tensor, Tensor, Tensor]] = []  # per pair: (s, t, pos) queues
        if cfg.method in ("scratch", "kd") or teacher is None:
            self.gammas: tuple[float, ...] = ()
            return
        s_shapes = _shapes(student, input_shape)
        t_shapes = _shapes(teacher, _own_input(teacher, input_shape))
        self.pairs = [tuple(p) for p in cfg.pairs] or default_pairs(len(t_shapes), len(s_shapes))  # type: ignore[misc]
        for t, s in self.pairs:
            if not (0 <= t < len(t_shapes) and 0 <= s < len(s_shapes)):
                raise ValueError(
                    f"layer pair {(t, s)} out of range: teacher has {len(t_shapes)} "
                    f"layers, student {len(s_shapes)}"
                )
        n = len(self.pairs)
        self.gammas = _broadcast(cfg.gammas, n, "distill.gammas")
        kinds = _broadcast(cfg.projections or (cfg.projection,), n, "distill.projections")
        for (t, s), kind in zip(self.pairs, kinds, strict=True):
            if cfg.method == "crd":
                self.embed_s.append(EmbedHead(s_shapes[s][0], cfg.crd_dim))
                self.embed_t.append(EmbedHead(t_shapes[t][0], cfg.crd_dim))
            elif cfg.method == "attention" and len(s_shapes[s]) == len(t_shapes[t]) == 2:
                self.heads.append(nn.Identity())  # AT on conv features needs no projection
            else:
                self.heads.append(build_projection(kind, s_shapes[s], t_shapes[t]))

    @property
    def teacher(self) -> nn.Module | None:
        return self.__dict__["teacher"]  # type: ignore[no-any-return]

    def weights(self, epoch: int) -> Weights:
        """α, β and per-pair γ in force at ``epoch`` (schedules, progressive, two-stage)."""
        c = self.cfg
        if c.method == "scratch":
            return Weights(1.0, 0.0, (), "joint")
        n = len(self.pairs)
        if c.two_stage and c.method != "kd":
            if epoch < c.hint_epochs:
                f = gamma_factor(c.gamma_schedule, epoch, c.hint_epochs, c.gamma_final)
                return Weights(0.0, 0.0, tuple(g * f for g in self.gammas), "hint")
            return Weights(c.alpha, c.beta, (0.0,) * n, "kd")
        f = gamma_factor(c.gamma_schedule, epoch, self.epochs, c.gamma_final)
        gammas = [g * f for g in self.gammas]
        if c.progressive and n:
            every = c.progressive_every or max(1, self.epochs // n)
            on = progressive_active(n, epoch, every)
            gammas = [g if active else 0.0 for g, active in zip(gammas, on, strict=True)]
        return Weights(c.alpha, c.beta, tuple(gammas), "joint")

    def forward(
        self, x: Tensor, y: Tensor, pos: Tensor | None = None, epoch: int = 0
    ) -> dict[str, Tensor]:
        """All loss terms of one batch: x (B, F, T), y (B, H) labels, pos (B,) bar positions."""
        w = self.weights(epoch)
        s_logits, s_feats = self.student.forward_with_features(x)  # type: ignore[operator]
        out: dict[str, Tensor] = {"logits": s_logits}  # (B, H, 2)
        task = L.head_task_losses(s_logits, y)
        for name, term in zip(HEADS, task, strict=True):
            out[f"task_{name}"] = term
        out["task"] = L.weighted_sum(task, self.cfg.head_weights)
        total = w.alpha * out["task"]
        teacher = self.teacher
        if teacher is not None and self.cfg.method != "scratch":
            teacher.eval()  # BatchNorm/Dropout stay in inference mode whatever the caller did
            with torch.no_grad():
                t_logits, t_feats = teacher.forward_with_features(x)  # type: ignore[operator]
            kd = L.head_kd_losses(s_logits, t_logits, self.cfg.temperature)
            for name, term in zip(HEADS, kd, strict=True):
                out[f"kd_{name}"] = term
            out["kd"] = L.weighted_sum(kd, self.cfg.kd_head_weights or self.cfg.head_weights)
            total = total + w.beta * out["kd"]
            for j, gamma in enumerate(w.gammas):
                if gamma == 0.0:
                    continue
                t, s = self.pairs[j]
                for name, term in self._pair_terms(j, t_feats[t], s_feats[s], pos).items():
                    out[name] = term
                    total = total + gamma * term
        out["loss"] = total
        return out

    def _pair_terms(self, j: int, t: Tensor, s: Tensor, pos: Tensor | None) -> dict[str, Tensor]:
        m, t = self.cfg.method, t.detach()
        if m == "crd":
            return {f"crd_{j}": self._crd(j, t, s, pos)}
        r = self.heads[j](s)  # r(s): student projected to the teacher's channels
        ta, ra = align_pair(t, r)
        terms: dict[str, Tensor] = {}
        if m in ("fitnet", "combined"):
            terms[f"fitnet_{j}"] = L.fitnet_loss(ta, ra)
        if m in ("attention", "combined"):
            if t.dim() == 3 and s.dim() == 3:  # AT ignores channel counts: raw features
                terms[f"attention_{j}"] = L.attention_transfer_loss(s, t, self.cfg.at_p)
            else:  # vectors: attention over the (projected) neuron axis, (B, 1, C)
                terms[f"attention_{j}"] = L.attention_transfer_loss(
                    ra.reshape(ra.shape[0], 1, -1), ta.reshape(ta.shape[0], 1, -1), self.cfg.at_p
                )
        if m == "activation":
            terms[f"activation_{j}"] = L.activation_loss(standardize(ta), standardize(ra))
        if m in ("gram", "combined"):
            terms[f"gram_{j}"] = L.gram_loss(ta, ra)
        return terms

    def _crd(self, j: int, t: Tensor, s: Tensor, pos: Tensor | None) -> Tensor:
        e_s, e_t = self.embed_s[j](s), self.embed_t[j](t)  # (B, D) each, unit norm
        k = self.cfg.crd_bank
        bank = self._bank[j] if k > 0 and j < len(self._bank) else None
        loss = L.crd_loss(
            e_s,
            e_t,
            self.cfg.crd_tau,
            bank_s=bank[0] if bank else None,
            bank_t=bank[1] if bank else None,
            idx=pos,
            bank_idx=bank[2] if bank else None,
            exclude_within=self.window if pos is not None else 0,
        )
        if k > 0 and self.training:
            self._push_bank(j, e_s.detach(), e_t.detach(), pos)
        return loss

    def _push_bank(self, j: int, e_s: Tensor, e_t: Tensor, pos: Tensor | None) -> None:
        """FIFO queue of the newest ``crd_bank`` embeddings (and their bar positions)."""
        p = pos if pos is not None else torch.full((e_s.shape[0],), -(10**9), dtype=torch.long)
        while len(self._bank) <= j:
            d = e_s.shape[1]
            self._bank.append((e_s.new_zeros(0, d), e_s.new_zeros(0, d), p.new_zeros(0)))
        old_s, old_t, old_p = self._bank[j]
        k = self.cfg.crd_bank
        self._bank[j] = (
            torch.cat([e_s, old_s])[:k],
            torch.cat([e_t, old_t])[:k],
            torch.cat([p, old_p])[:k],
        )


def _own_input(model: nn.Module, default: Shape) -> Shape:
    """(F, T) a network reads, from its spec; `default` (the student's) for one without.
    A teacher may read more channels than the student (the 1m+5m teacher of setting C)."""
    spec = getattr(model, "spec", None)
    if spec is None:
        return default
    return (int(spec.n_features), int(spec.window))


def _shapes(model: nn.Module, input_shape: Shape) -> list[Shape]:
    was = model.training
    model.eval()
    with torch.no_grad():
        _, feats = model.forward_with_features(torch.zeros(2, *input_shape))  # type: ignore[operator]
    model.train(was)
    return [tuple(f.shape[1:]) for f in feats]


def _broadcast(values: Sequence, n: int, key: str) -> tuple:  # type: ignore[type-arg]
    if len(values) == 1:
        return tuple(values) * n
    if len(values) != n:
        raise ValueError(f"{key} has {len(values)} entries for {n} layer pairs; give 1 or {n}")
    return tuple(values)
