"""The training loop, top to bottom: config, data, model, optimiser, loop (nanoGPT style).

One loop trains teachers (method ``scratch`` on a teacher architecture) and students (any
method). It is seeded (same config → same weights), stops early on the validation task loss,
keeps the best epoch, runs under torchrun/DDP, and writes a checkpoint that embeds the
resolved config, the architecture, the data span and the per-epoch history.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from service.features import FEATURE_NAMES, FEATURE_SPEC_HASH
from training import ddp
from training.config import ExperimentConfig
from training.data import Dataset, Split, batch_indices, load_dataset
from training.distill import Distiller
from training.networks import NetSpec, Network, build_network, count_parameters, default_spec

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


def _load_teacher(cfg: ExperimentConfig, ds: Dataset) -> tuple[Network | None, dict[str, Any]]:
    if cfg.distill.method == "scratch":
        return None, {}
    ckpt = load_checkpoint(cfg.distill.teacher)
    if ckpt["feature_spec_hash"] != FEATURE_SPEC_HASH or ckpt["window"] != ds.window:
        raise ValueError(
            f"teacher {cfg.distill.teacher} was trained on other features or window; "
            "retrain it with this code (python -m training teacher ...)"
        )
    info = {
        "path": cfg.distill.teacher,
        "spec": ckpt["spec"],
        "params": ckpt["params"],
        "val": ckpt["metrics"].get("val", {}),
    }
    return model_from_checkpoint(ckpt), info


# ------------------------------------------------------------------------ evaluation


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 2048) -> Tensor:
    """Logits (M, 2) of a network in eval mode over raw windows (M, F, T)."""
    was = model.training
    model.eval()
    out = [model(torch.from_numpy(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, 2)


def evaluate(model: nn.Module, split: Split) -> dict[str, float]:
    """Task loss (cross-entropy), accuracy and share of "up" predictions on a split."""
    logits = predict_logits(model, split.x)
    y = torch.from_numpy(split.y)
    pred = logits.argmax(dim=1)
    return {
        "loss": float(F.cross_entropy(logits, y)),
        "accuracy": float((pred == y).double().mean()),
        "up_share": float(pred.double().mean()),
        "n": float(len(split)),
    }


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
    return (
        torch.from_numpy(split.x[idx]),
        torch.from_numpy(split.y[idx]),
        torch.from_numpy(split.pos[idx]),
    )


# ------------------------------------------------------------------------------ loop


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU kernels used here are deterministic)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(base: float, epoch: int, epochs: int) -> float:
    """Cosine decay from ``base`` to 5 % of it over the run."""
    frac = epoch / max(epochs - 1, 1)
    return base * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * frac)))


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

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"loss": math.inf, "epoch": -1, "state": None, "heads": None}
    stale = 0
    for epoch in range(t_cfg.epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(t_cfg.lr, epoch, t_cfg.epochs)
        distiller.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = defaultdict(float)
        steps = 0
        batches = list(
            batch_indices(
                len(ds.train),
                t_cfg.batch_size,
                seed=cfg.run.seed,
                epoch=epoch,
                rank=ctx.rank,
                world=ctx.world,
            )
        )
        if t_cfg.max_batches > 0:
            batches = batches[: t_cfg.max_batches]
        bar = tqdm(
            batches,
            desc=f"{cfg.run.name} {epoch + 1}/{t_cfg.epochs}",
            disable=not (t_cfg.progress and ctx.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        for idx in bar:
            out = model(*_batch(ds.train, idx), epoch=epoch)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            steps += 1
            for k, v in out.items():
                if k != "logits":
                    sums[k] += float(v.detach())
            bar.set_postfix({k: f"{v / steps:.4f}" for k, v in sums.items()}, refresh=False)
        bar.close()
        ddp.sync_buffers(distiller, ctx)
        seconds = time.perf_counter() - t0
        train_terms = {k: ddp.all_reduce_mean(v / max(steps, 1), ctx) for k, v in sums.items()}
        val_terms = evaluate_terms(distiller, ds.val, epoch)
        val = evaluate(net, ds.val)
        stage = distiller.weights(epoch).stage
        history.append(
            {
                "epoch": epoch,
                "stage": stage,
                "seconds": seconds,
                "lr": opt.param_groups[0]["lr"],
                "train": train_terms,
                "val": {**val_terms, "accuracy": val["accuracy"]},
            }
        )
        if ctx.is_main:
            terms = " ".join(f"{k}={v:.4f}" for k, v in train_terms.items())
            print(
                f"[{cfg.run.name}] epoch {epoch + 1}/{t_cfg.epochs} {stage} {seconds:.1f}s "
                f"train {terms} | val task={val['loss']:.4f} acc={val['accuracy']:.4f}",
                flush=True,
            )
        if stage == "hint":
            continue  # the classifier is not trained yet: nothing to select on
        if val["loss"] < best["loss"] - 1e-6:
            best = {
                "loss": val["loss"],
                "epoch": epoch,
                "state": copy.deepcopy(net.state_dict()),
                "heads": copy.deepcopy(distiller.state_dict()),
            }
            stale = 0
        else:
            stale += 1
            if stale >= t_cfg.patience:
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
        "interval": ds.interval,
        "data_span": ds.span(),
        "norm": {"mean": ds.mean.tolist(), "std": ds.std.tolist()},
        "teacher": teacher_info,
        "pairs": [list(p) for p in distiller.pairs],
        "best_epoch": best["epoch"],
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
