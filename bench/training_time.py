"""Section 5: training wall time for the teacher and every distillation method.

Each method trains one full epoch through helper-1's real loop (``training.distill.train.run``) on
the pooled training set of configs/common.toml (five 5m symbols) with one torch thread; the
students distil from the teacher trained here (its quality does not matter for timing). A
second, short table runs the teacher and the scratch student for a few steps with the
configured thread count (``configs/common.toml``) beside one thread, because on a shared
2-core machine torch's intra-op pool oversubscribes the cores.
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
BUDGET_S = 170.0
THREAD_STEPS = 8


def _checkpoint(path: Path) -> dict[str, Any]:
    import torch

    ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt


def _config(name: str, overrides: dict[str, Any]) -> Any:
    from training.config import load_config

    return load_config(ROOT / f"configs/tcn/{name}.toml", overrides)


def run(quick: bool = False) -> Section:
    """Measure and return the section."""
    from training.data.dataset import load_dataset
    from training.distill.train import run as train_run

    sec = Section("5. Training")
    out = Path(tempfile.mkdtemp(prefix="bench-train-"))
    base: dict[str, Any] = {
        "train.epochs": 1,
        "train.max_batches": 4 if quick else 0,
        "train.eval_every": 0,  # one validation check per epoch: history[0] is epoch 1
        "train.progress": False,
        "run.out_dir": str(out),
        "run.threads": 1,
    }
    configured = int(_config("teacher", {}).run.threads)
    t0 = time.perf_counter()
    ds = load_dataset(_config("teacher", base).data)
    t_data = time.perf_counter() - t0
    batch = int(_config("teacher", base).train.batch_size)
    per_epoch = math.ceil(len(ds.train) / batch)

    started = time.perf_counter()
    rows: list[list[object]] = []
    teacher_ckpt = ""
    for role, name in [("teacher", "teacher"), *[("student", m) for m in METHODS]]:
        if time.perf_counter() - started > BUDGET_S:
            rows.append([name, "skipped: section time budget", "", "", ""])
            continue
        overrides = dict(base)
        if role == "student" and name != "scratch":
            overrides["distill.teacher"] = teacher_ckpt
        t0 = time.perf_counter()
        result = train_run(_config(name, overrides), role=role, dataset=ds)
        wall = time.perf_counter() - t0
        ckpt = _checkpoint(result.checkpoint)
        if role == "teacher":
            teacher_ckpt = str(result.checkpoint)
        seconds = float(ckpt["history"][0]["seconds"])
        steps = per_epoch if not quick else 4
        rows.append(
            [
                f"{name} ({role}, {ckpt['params']:,} params)",
                steps,
                seconds,
                seconds / steps * 1e3,
                wall,
            ]
        )

    thread_rows: list[list[object]] = []
    if not quick and configured != 1:
        for role, name in (("teacher", "teacher"), ("student", "scratch")):
            for threads in (configured, 1):
                o = {**base, "train.max_batches": THREAD_STEPS, "run.threads": threads}
                result = train_run(_config(name, o), role=role, dataset=ds)
                s = float(_checkpoint(result.checkpoint)["history"][0]["seconds"])
                thread_rows.append([name, threads, THREAD_STEPS, s / THREAD_STEPS * 1e3])

    sec.add(
        f"Bundled {ds.symbol} 5m, {len(ds.train):,} training windows → {per_epoch} steps per epoch "
        f"at batch {batch}; dataset built once in {t_data:.1f} s. Family tcn "
        "(configs/tcn/*.toml), one torch thread, "
        + ("4 steps per method (quick mode)." if quick else "one full epoch per method."),
        "",
    )
    sec.table(
        (
            "run",
            "steps",
            "epoch s (train steps)",
            "ms / step",
            "run wall s (+ validation, checkpoint)",
        ),
        rows,
    )
    if thread_rows:
        sec.add(
            f"Torch threads: `configs/common.toml` sets `run.threads = {configured}`; the same "
            f"{THREAD_STEPS} steps with that and with one thread, side by side:",
            "",
        )
        sec.table(("run", "torch threads", "steps", "ms / step"), thread_rows)
    elapsed = time.perf_counter() - started
    sec.targets.append(
        Target(
            "training section within budget",
            "≤ 3 min",
            f"{elapsed:.0f} s",
            elapsed <= 180.0,
            "informational: no speed target for training",
        )
    )
    return sec
