"""Section 5: training wall time for the teacher and every distillation method.

Full epochs of every method do not fit the benchmark's budget on two shared cores, so each
run trains ``STEPS`` optimiser steps of one epoch through helper-1's real loop
(``training.train.run`` with ``train.max_batches``) on the bundled BTCUSDT 5m data, and the
epoch time is projected as seconds per step × steps per epoch. The wall time of each run
(including its validation pass and checkpoint) is reported beside it. The students distil
from the teacher trained here (its quality does not matter for timing).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import Section, Target

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("scratch", "kd", "fitnet", "attention", "activation", "gram", "crd", "combined")
STEPS = 8
BUDGET_S = 170.0


def _history(checkpoint: Path) -> dict[str, Any]:
    import torch

    ckpt: dict[str, Any] = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return ckpt


def run(quick: bool = False) -> Section:
    """Measure and return the section."""
    from training.config import load_config
    from training.data import load_dataset
    from training.train import run as train_run

    sec = Section("5. Training")
    out = Path(tempfile.mkdtemp(prefix="bench-train-"))
    steps = 2 if quick else STEPS
    common = {
        "train.epochs": 1,
        "train.max_batches": steps,
        "train.progress": False,
        "run.out_dir": str(out),
    }
    cfg = load_config(ROOT / "configs/tcn/teacher.toml", common)
    t0 = time.perf_counter()
    ds = load_dataset(cfg.data)
    t_data = time.perf_counter() - t0
    per_epoch = math.ceil(len(ds.train) / cfg.train.batch_size)
    rows: list[list[object]] = []
    started = time.perf_counter()
    teacher_ckpt = ""
    for role, name in [("teacher", "teacher"), *[("student", m) for m in METHODS]]:
        if time.perf_counter() - started > BUDGET_S:
            rows.append([name, "skipped (time budget)", "", "", "", ""])
            continue
        path = ROOT / f"configs/tcn/{'teacher' if role == 'teacher' else name}.toml"
        overrides = dict(common)
        if role == "student" and name != "scratch":
            overrides["distill.teacher"] = teacher_ckpt
        cfg = load_config(path, overrides)
        t0 = time.perf_counter()
        result = train_run(cfg, role=role, dataset=ds)
        wall = time.perf_counter() - t0
        ckpt = _history(result.checkpoint)
        if role == "teacher":
            teacher_ckpt = str(result.checkpoint)
        seconds = float(ckpt["history"][0]["seconds"])
        per_step = seconds / steps
        rows.append(
            [
                f"{name} ({role}, {ckpt['params']:,} params)",
                steps,
                per_step * 1e3,
                per_step * per_epoch,
                wall,
                f"{cfg.run.threads}",
            ]
        )
    sec.add(
        f"Bundled BTCUSDT 5m, {len(ds.train):,} training windows → {per_epoch} steps per epoch "
        f"at batch {cfg.train.batch_size}; dataset built once in {t_data:.1f} s. Family tcn "
        f"(configs/tcn/*.toml), {steps} timed steps per method; torch threads as configured.",
        "",
    )
    sec.table(
        (
            "run",
            "steps timed",
            "ms / step",
            "projected s / epoch",
            "run wall s (steps + validation + checkpoint)",
            "torch threads",
        ),
        rows,
    )
    sec.targets.append(
        Target(
            "training section within budget",
            "≤ 3 min",
            f"{time.perf_counter() - started:.0f} s",
            time.perf_counter() - started <= 180.0,
            "informational: no speed target for training",
        )
    )
    return sec
