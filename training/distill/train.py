"""The training loop, top to bottom: config, data, model, optimiser, loop (nanoGPT style).

One loop trains teachers (method ``scratch`` on a teacher architecture) and students (any
method), both heads (direction, volatility) at once. It is seeded (same config → same
weights), uses the recipe of :mod:`training.distill.recipe` (per-step warm-up + cosine learning
rate, validation every ``train.eval_every`` batches, early stopping on the validation log loss of
``train.select_head``, the best check kept), balances pooled symbols per epoch, runs under
torchrun/DDP, and writes a checkpoint that embeds the resolved config, the architecture, the
data span and the per-check history. The teacher is a checkpoint or an ensemble directory.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from service.features import FEATURE_NAMES, FEATURE_SPEC_HASH
from service.model.card import HEADS
from training.config import ExperimentConfig
from training.data.dataset import Dataset, Split, batch_indices, load_dataset, symbol_codes
from training.distill import ddp
from training.distill.distiller import Distiller
from training.distill.recipe import (
    log_losses,
    lr_at_step,
    probabilities,
    seed_everything,
    selection_score,
)
from training.nets.networks import NetSpec, Network, build_network, count_parameters, default_spec

__all__ = ["RunResult", "load_checkpoint", "model_from_checkpoint", "run", "seed_everything"]

CHECKPOINT_FORMAT = "apprentice-checkpoint/1"


@dataclass(frozen=True)
class RunResult:
    checkpoint: Path
    metrics: dict[str, Any]


# ----------------------------------------------------------------------- checkpoints


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`run` (plain dicts and tensors only)."""
    ckpt: dict[str, Any] = torch.load(Path(path), map_location="cpu", weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an Apprentice checkpoint ({CHECKPOINT_FORMAT})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any] | str | Path) -> Network:
    """Rebuild the network of a checkpoint (normalisation included), in eval mode."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    net = build_network(NetSpec.from_dict(ckpt["spec"]))
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()


def resolve_spec(cfg: ExperimentConfig, role: str, n_features: int) -> NetSpec:
    """The architecture a config asks for: the family default, overridden by [model]."""
    m = cfg.model
    spec = default_spec(m.family, role, n_features, cfg.data.window)
    return NetSpec(
        family=m.family,
        n_features=n_features,
        window=cfg.data.window,
        channels=m.channels or spec.channels,
        kernel_size=m.kernel_size,
        dropout=spec.dropout if m.dropout < 0 else m.dropout,
    )


def load_teacher_path(path: str | Path) -> nn.Module:
    """A teacher checkpoint, or an ensemble directory (:mod:`training.nets.ensemble`), eval mode."""
    from training.nets.ensemble import is_ensemble_dir, load_ensemble

    if is_ensemble_dir(path):
        return load_ensemble(Path(path))
    return model_from_checkpoint(path)


def _load_teacher(cfg: ExperimentConfig, ds: Dataset) -> tuple[nn.Module | None, dict[str, Any]]:
    if cfg.distill.method == "scratch":
        return None, {}
    from training.nets.ensemble import Ensemble, is_ensemble_dir

    path = cfg.distill.teacher
    if is_ensemble_dir(path):
        ens = load_teacher_path(path)
        assert isinstance(ens, Ensemble)
        if any(s.window != ds.window for s in ens.specs):
            raise ValueError(f"ensemble {path} was trained on another window")
        info = {
            "path": path,
            "ensemble": True,
            "specs": [s.to_dict() for s in ens.specs],
            "feature_member": ens.feature_member,
            "params": ens.param_count(),
            "member_params": ens.member_param_count(),
        }
        return ens, info
    ckpt = load_checkpoint(path)
    if ckpt["feature_spec_hash"] != FEATURE_SPEC_HASH or ckpt["window"] != ds.window:
        raise ValueError(
            f"teacher {path} was trained on other features or window; "
            "retrain it with this code (python -m training teacher ...)"
        )
    info = {
        "path": path,
        "spec": ckpt["spec"],
        "params": ckpt["params"],
        "val": ckpt["metrics"].get("val", {}),
    }
    return model_from_checkpoint(ckpt), info


# ------------------------------------------------------------------------ evaluation


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 2048) -> Tensor:
    """Logits (M, H, 2) of a network in eval mode over raw windows (M, F, T)."""
    was = model.training
    model.eval()
    out = [model(torch.from_numpy(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, 2, 2)


def evaluate(model: nn.Module, split: Split) -> dict[str, Any]:
    """Per head: log loss, accuracy and share of class-1 predictions on a split."""
    logits = predict_logits(model, split.x)
    probs = probabilities(logits)
    losses = log_losses(split.y, probs)
    out: dict[str, Any] = {"n": float(len(split))}
    for h, name in enumerate(HEADS):
        pred = probs[name] > 0.5
        out[name] = {
            "loss": losses[name],
            "accuracy": float(np.mean(pred == (split.y[:, h] == 1))),
            "positive_share": float(np.mean(pred)),
        }
    return out


@torch.no_grad()
def evaluate_terms(distiller: Distiller, split: Split, epoch: int) -> dict[str, float]:
    """Every loss term of the distillation objective on a split (eval mode, no bank push)."""
    was = distiller.training
    distiller.eval()
    sums: dict[str, float] = defaultdict(float)
    n = 0
    for idx in batch_indices(len(split), 1024, seed=0, epoch=0, shuffle=False):
        b = len(idx)
        out = distiller(*_batch(split, idx), epoch=epoch)
        for k, v in out.items():
            if k != "logits":
                sums[k] += float(v) * b
        n += b
    distiller.train(was)
    return {k: v / max(n, 1) for k, v in sums.items()}


def _batch(split: Split, idx: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, F, T), y (B, H), pos (B,) of the rows ``idx``."""
    return (
        torch.from_numpy(split.x[idx]),
        torch.from_numpy(split.y[idx]),
        torch.from_numpy(split.pos[idx]),
    )


# ------------------------------------------------------------------------------ loop


def run(cfg: ExperimentConfig, role: str = "student", dataset: Dataset | None = None) -> RunResult:
    """Train one network as the config says and write ``<out_dir>/<name>/checkpoint.pt``."""
    ctx = ddp.setup()
    torch.set_num_threads(max(cfg.run.threads, 1))
    seed_everything(cfg.run.seed)
    t_cfg = cfg.train
    out_dir = Path(cfg.run.out_dir) / cfg.run.name

    # data
    ds = dataset if dataset is not None else load_dataset(cfg.data)
    # model
    spec = resolve_spec(cfg, role, ds.n_features)
    net = build_network(spec)
    net.norm.set_stats(ds.mean, ds.std)
    teacher, teacher_info = _load_teacher(cfg, ds)
    distiller = Distiller(
        net,
        teacher,
        cfg.distill,
        epochs=t_cfg.epochs,
        input_shape=(ds.n_features, ds.window),
        window=ds.window,
    )
    model = ddp.wrap(distiller, ctx)
    # optimiser: student and distillation heads (the teacher is not in the module tree)
    opt = torch.optim.AdamW(distiller.parameters(), lr=t_cfg.lr, weight_decay=t_cfg.weight_decay)

    groups = symbol_codes(ds.train) if t_cfg.balance else None

    def epoch_batches(epoch: int) -> list[np.ndarray]:
        batches = list(
            batch_indices(
                len(ds.train),
                t_cfg.batch_size,
                seed=cfg.run.seed,
                epoch=epoch,
                rank=ctx.rank,
                world=ctx.world,
                groups=groups,
            )
        )
        return batches[: t_cfg.max_batches] if t_cfg.max_batches > 0 else batches

    per_epoch = len(epoch_batches(0))
    total = max(per_epoch * t_cfg.epochs, 1)
    every = t_cfg.eval_every if t_cfg.eval_every > 0 else per_epoch
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"loss": math.inf, "epoch": -1, "step": 0, "state": None, "heads": None}
    stale, step, stop = 0, 0, False
    sums: dict[str, float] = defaultdict(float)
    n_sum = 0
    t0 = time.perf_counter()
    for epoch in range(t_cfg.epochs):
        distiller.train()
        batches = epoch_batches(epoch)
        bar = tqdm(
            batches,
            desc=f"{cfg.run.name} {epoch + 1}/{t_cfg.epochs}",
            disable=not (t_cfg.progress and ctx.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        for b, idx in enumerate(bar):
            for group in opt.param_groups:
                group["lr"] = lr_at_step(t_cfg.lr, step, total, t_cfg.warmup, t_cfg.lr_schedule)
            out = model(*_batch(ds.train, idx), epoch=epoch)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            step += 1
            n_sum += 1
            for k, v in out.items():
                if k != "logits":
                    sums[k] += float(v.detach())
            bar.set_postfix({k: f"{v / n_sum:.4f}" for k, v in sums.items()}, refresh=False)
            due = step % every == 0 or step == total  # the run's last step is always checked
            if not due and not (t_cfg.eval_every <= 0 and b + 1 == len(batches)):
                continue
            ddp.sync_buffers(distiller, ctx)
            seconds = time.perf_counter() - t0
            train_terms = {k: ddp.all_reduce_mean(v / max(n_sum, 1), ctx) for k, v in sums.items()}
            sums, n_sum = defaultdict(float), 0
            val_terms = evaluate_terms(distiller, ds.val, epoch)
            val = evaluate(net, ds.val)
            losses = {h: val[h]["loss"] for h in HEADS}
            score = selection_score(losses, t_cfg.select_head, cfg.distill.head_weights)
            distiller.train()
            stage = distiller.weights(epoch).stage
            history.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "stage": stage,
                    "seconds": seconds,
                    "lr": opt.param_groups[0]["lr"],
                    "train": train_terms,
                    "val": {
                        **val_terms,
                        "select": score,
                        **{f"accuracy_{h}": val[h]["accuracy"] for h in HEADS},
                    },
                }
            )
            if ctx.is_main:
                terms = " ".join(f"{k}={v:.4f}" for k, v in train_terms.items())
                heads = " ".join(f"{h}={losses[h]:.4f}" for h in HEADS)
                print(
                    f"[{cfg.run.name}] epoch {epoch + 1}/{t_cfg.epochs} step {step} {stage} "
                    f"{seconds:.1f}s train {terms} | val log loss {heads} select={score:.4f}",
                    flush=True,
                )
            if stage == "hint":
                continue  # the classifier is not trained yet: nothing to select on
            if score < best["loss"] - 1e-6:
                best = {
                    "loss": score,
                    "epoch": epoch,
                    "step": step,
                    "state": copy.deepcopy(net.state_dict()),
                    "heads": copy.deepcopy(distiller.state_dict()),
                }
                stale = 0
            else:
                stale += 1
                if stale >= t_cfg.patience:
                    stop = True
                    break
        bar.close()
        if stop:
            break

    if best["state"] is not None:
        net.load_state_dict(best["state"])
    metrics = {"val": evaluate(net, ds.val), "test": evaluate(net, ds.test)}
    if teacher is not None:
        metrics["teacher_test"] = evaluate(teacher, ds.test)
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "role": role,
        "config": cfg.to_dict(),
        "spec": spec.to_dict(),
        "state_dict": net.state_dict(),
        "distill_state": {
            k: v for k, v in (best["heads"] or {}).items() if not k.startswith("student.")
        },
        "params": count_parameters(net),
        "feature_names": list(FEATURE_NAMES),
        "feature_spec_hash": FEATURE_SPEC_HASH,
        "window": ds.window,
        "symbol": ds.symbol,
        "symbols": list(ds.symbols),
        "interval": ds.interval,
        "data_span": ds.span(),
        "norm": {"mean": ds.mean.tolist(), "std": ds.std.tolist()},
        "teacher": teacher_info,
        "pairs": [list(p) for p in distiller.pairs],
        "best_epoch": best["epoch"],
        "best_step": best["step"],
        "history": history,
        "metrics": metrics,
        "world_size": ctx.world,
    }
    path = out_dir / "checkpoint.pt"
    if t_cfg.dump_rank_weights:
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), out_dir / f"weights_rank{ctx.rank}.pt")
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(ckpt, path)
        summary = {k: v for k, v in ckpt.items() if k not in ("state_dict", "distill_state")}
        (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    ddp.barrier(ctx)
    return RunResult(path, metrics)
