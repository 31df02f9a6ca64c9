"""The loop under torchrun: 2 gloo processes on CPU finish with identical weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from training.config import load_config
from training.distill.train import load_checkpoint, run

ROOT = Path(__file__).resolve().parents[3]


def test_two_process_ddp_run_ends_with_identical_weights(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    small = {
        "data.last_bars": 1500,
        "run.threads": 1,
        "train.progress": False,
        "run.out_dir": str(tmp_path),
    }
    teacher_cfg = load_config(
        ROOT / "configs/tcn/teacher.toml", {**small, "train.epochs": 1, "train.max_batches": 2}
    )
    teacher = run(teacher_cfg, role="teacher").checkpoint

    # Progressive FitNet: the shallow pair's head is unused in epoch 0 (find_unused_parameters).
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "training", "distill", "--config", str(ROOT / "configs/tcn/fitnet.toml"),
        "--teacher", str(teacher), "--out", str(tmp_path), "--no-progress",
        "--set", "data.last_bars=1500", "--set", "run.threads=1", "--set", "train.epochs=2",
        "--set", "train.max_batches=3", "--set", "train.dump_rank_weights=true",
        "--set", "distill.progressive=true", "--set", "distill.progressive_every=1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "tcn-fitnet"
    w0 = torch.load(out / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(out / "weights_rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["history"]) == 2
    assert "fitnet_0" not in ckpt["history"][0]["train"]  # progressive: deepest pair first
    assert "fitnet_0" in ckpt["history"][1]["train"]
