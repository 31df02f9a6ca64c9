"""The study's runs on local worker processes and on a real two-worker Dask cluster on
loopback give the serial run's networks and predictions bit for bit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.market.klines import interval_ms
from training.data.series import calendar_folds, load_series, pooled_fold
from training.experiments import runner
from training.experiments.common import Env, teacher_targets, train_members, train_students
from training.experiments.config import load_report_config, quick_config
from training.experiments.harness import FitSettings
from training.progress import Progress

ROOT = Path(__file__).resolve().parents[3]


def _small_plan(tmp: Path) -> dict[str, Any]:
    """Two teacher members, then a scratch and a KD student × two seeds on a small fold."""
    fit = FitSettings(epochs=1, batch_size=64, max_batches=4, eval_every=2, patience=5)
    cfg = replace(quick_config(load_report_config(None)), teacher_fit=fit, student_fit=fit)
    s = load_series("BTCUSDT", "5", "", 1500)
    fold = pooled_fold([s], calendar_folds(s.times, interval_ms("5"), 1, 32, 0.2, 0.2)[0])
    with Progress(6, tmp / "run.log", enabled=False) as prog:
        env = Env.make(cfg, prog)
        members = train_members(env, fold, "t", (0, 1))
        tgt = teacher_targets(env, members, fold.train.x)
        plan = [("scratch", "scratch", None), ("kd", "kd", tgt)]
        preds, nets = train_students(env, fold, fold.test.x, plan, (3, 4), "t")
    return {
        "members": [m.state_dict() for m in members],
        "preds": preds,
        "nets": {k: v.state_dict() for k, v in nets.items()},
    }


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for sa, sb in zip(
        a["members"] + list(a["nets"].values()),
        b["members"] + list(b["nets"].values()),
        strict=True,
    ):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    assert a["preds"].keys() == b["preds"].keys()
    for name in a["preds"]:
        for pa, pb in zip(a["preds"][name], b["preds"][name], strict=True):
            for head in pa:
                np.testing.assert_array_equal(pa[head], pb[head])


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env = {
        k: os.environ.pop(k) for k in (runner.WORKERS_ENV, runner.CLUSTER_ENV) if k in os.environ
    }
    try:
        return _small_plan(tmp_path_factory.mktemp("serial"))
    finally:
        os.environ.update(env)


def test_local_worker_processes_give_the_serial_results(
    serial: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(runner.WORKERS_ENV, "2")
    monkeypatch.delenv(runner.CLUSTER_ENV, raising=False)
    got = _small_plan(tmp_path)
    assert runner._POOL is not None  # the runs went to the pool, not this process
    pool = runner._POOL[1]
    pids = set(getattr(pool, "_processes", {}) or {})
    assert len(pids) == 2 and os.getpid() not in pids
    _assert_same(serial, got)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[str]:
    """``dask scheduler`` and two ``dask worker`` processes on loopback."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    dask = str(Path(sys.executable).parent / "dask")
    common = ["--no-dashboard"]
    commands = [[dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), *common]]
    for i in range(2):
        worker = [dask, "worker", address, "--nthreads", "1", "--host", "127.0.0.1"]
        commands.append([*worker, "--name", f"w{i}", *common])
    procs = []
    for i, cmd in enumerate(commands):
        with open(tmp_path / f"dask-{i}.log", "wb") as log:  # the child keeps its own handle
            procs.append(
                subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
            )
    try:
        from distributed import Client

        deadline = time.monotonic() + 90
        while True:
            try:
                with Client(address, timeout="5s") as c:  # type: ignore[no-untyped-call]
                    c.wait_for_workers(2, timeout=max(1.0, deadline - time.monotonic()))
                    break
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_two_worker_dask_cluster_gives_the_serial_results(
    serial: dict[str, Any], dask_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Client

    monkeypatch.setenv(runner.CLUSTER_ENV, dask_cluster)
    got = _small_plan(tmp_path)
    _assert_same(serial, got)
    with Client(dask_cluster) as c:  # type: ignore[no-untyped-call]
        done = c.run(lambda dask_worker: dask_worker.state.executed_count)
    assert len(done) == 2 and all(n > 0 for n in done.values())  # both workers fitted
    assert sum(done.values()) == 6  # 2 teachers + 2 students x 2 seeds


def test_a_bad_worker_count_says_what_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runner.WORKERS_ENV, "two")
    with pytest.raises(ValueError, match=runner.WORKERS_ENV):
        runner._workers()
