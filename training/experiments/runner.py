"""Where the study's independent training runs execute: here, in local worker processes, or
on a Dask cluster (DESIGN section 13).

Every fit of a plan is independent: it seeds Python, numpy and torch from its own seed
(:func:`training.distill.recipe.seed_everything`) and reads only its inputs, so it gives the
same network wherever it runs, given the same torch thread count. :func:`run_fits` runs a
list of :class:`FitTask` on one shared fold (and the teachers the tasks distil from) and
yields their results in task order, so the caller's progress, predictions and
``results.json`` come out as from a serial run — bit for bit (a test holds it on a real
two-worker cluster).

Where, by one environment variable each (read per call, so a test or a shell can switch):

* ``APPRENTICE_TRAIN_WORKERS=N`` — N local worker processes (spawned once per process, kept
  for the next plan); 1 or unset: serially in this process, exactly as before;
* ``APPRENTICE_TRAIN_CLUSTER=tcp://HOST:8786`` — a Dask scheduler (``dask scheduler`` and
  ``dask worker tcp://HOST:8786 --nthreads 1`` on any machines that have this checkout and
  its environment); it wins over the workers variable.

The shared inputs travel once per plan, not once per run: to local workers as one pickle
file each worker loads once (its path in every task), to Dask by ``scatter(broadcast=True)``.
Each worker sets torch's thread count to the study's (``threads`` in the config) before it
fits, as the serial run does.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.config import DistillConfig
from training.experiments.fit import CachedTeacher, FitResult
from training.experiments.harness import FitSettings, FoldLike, fit
from training.nets.networks import NetSpec

WORKERS_ENV = "APPRENTICE_TRAIN_WORKERS"
CLUSTER_ENV = "APPRENTICE_TRAIN_CLUSTER"


@dataclass(frozen=True)
class FitTask:
    """One independent run: network, distillation, fit settings, seed and which of the
    plan's teachers it distils from (an index into the shared teachers, or None)."""

    spec: NetSpec
    cfg: DistillConfig
    settings: FitSettings
    seed: int
    teacher: int | None = None


@dataclass(frozen=True)
class Shared:
    """What every task of one plan reads: the fold and the distinct teachers."""

    data: FoldLike
    teachers: tuple[CachedTeacher, ...]


def plan_tasks(
    spec: NetSpec,
    jobs: Sequence[tuple[DistillConfig, FitSettings, int, CachedTeacher | None]],
) -> tuple[list[FitTask], tuple[CachedTeacher, ...]]:
    """Tasks for (distill config, fit settings, seed, teacher) jobs, teachers deduplicated."""
    teachers: list[CachedTeacher] = []
    tasks = []
    for cfg, settings, seed, teacher in jobs:
        idx = None
        if teacher is not None:
            found = [i for i, t in enumerate(teachers) if t is teacher]
            if not found:
                teachers.append(teacher)
            idx = found[0] if found else len(teachers) - 1
        tasks.append(FitTask(spec, cfg, settings, seed, idx))
    return tasks, tuple(teachers)


def run_fits(
    data: FoldLike,
    spec: NetSpec,
    jobs: Sequence[tuple[DistillConfig, FitSettings, int, CachedTeacher | None]],
    threads: int,
) -> Iterator[FitResult]:
    """Fit every job on ``data`` where the environment says (module docstring); results in
    job order. Serial (the default) fits lazily, one per ``next``."""
    tasks, teachers = plan_tasks(spec, jobs)
    shared = Shared(data, teachers)
    cluster = os.environ.get(CLUSTER_ENV, "").strip()
    if cluster:
        yield from _on_dask(cluster, shared, tasks, threads)
        return
    workers = _workers()
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield run_task(shared, task, threads)  # as run_report sets it: usually a no-op
        return
    yield from _on_local(workers, shared, tasks, threads)


def run_task(shared: Shared, task: FitTask, threads: int | None) -> FitResult:
    """One fit (on whichever process runs it); ``threads`` sets torch's thread count first."""
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    teacher = shared.teachers[task.teacher] if task.teacher is not None else None
    return fit(task.spec, shared.data, task.cfg, task.settings, task.seed, teacher)


def _workers() -> int:
    raw = os.environ.get(WORKERS_ENV, "").strip() or "1"
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(
            f"{WORKERS_ENV}={raw!r}: give a whole number of worker processes"
        ) from None
    if n < 1:
        raise ValueError(f"{WORKERS_ENV}={raw!r}: at least 1")
    return n


# ------------------------------------------------------------------ local worker processes
_POOL: tuple[int, Executor] | None = None
_LOADED: tuple[str, Shared] | None = None  # in a worker: the last shared inputs it read


def _pool(workers: int) -> Executor:
    global _POOL
    if _POOL is None or _POOL[0] != workers:
        if _POOL is not None:
            _POOL[1].shutdown()
        # spawn, not fork: a forked child of a process that already ran torch's thread
        # pools can hang in them
        ctx = multiprocessing.get_context("spawn")
        _POOL = (workers, ProcessPoolExecutor(max_workers=workers, mp_context=ctx))
    return _POOL[1]


def _local_task(path: str, task: FitTask, threads: int) -> FitResult:
    global _LOADED
    if _LOADED is None or _LOADED[0] != path:
        with open(path, "rb") as fh:
            _LOADED = (path, pickle.load(fh))
    return run_task(_LOADED[1], task, threads)


def _on_local(
    workers: int, shared: Shared, tasks: Sequence[FitTask], threads: int
) -> Iterator[FitResult]:
    pool = _pool(workers)
    with tempfile.TemporaryDirectory(prefix="apprentice-fits-") as d:
        path = str(Path(d) / "shared.pkl")
        with open(path, "wb") as fh:
            pickle.dump(shared, fh, protocol=pickle.HIGHEST_PROTOCOL)
        futures = [pool.submit(_local_task, path, t, threads) for t in tasks]
        try:
            for fut in futures:
                yield fut.result()
        finally:
            for fut in futures:
                fut.cancel()


# ------------------------------------------------------------------ a Dask cluster
def _on_dask(
    address: str, shared: Shared, tasks: Sequence[FitTask], threads: int
) -> Iterator[FitResult]:
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed ships with the train extra
        raise RuntimeError(
            f"{CLUSTER_ENV} is set but dask's `distributed` is not installed: "
            "pip install -e '.[train]'"
        ) from None
    with Client(address, timeout="30s") as client:  # type: ignore[no-untyped-call]
        remote: Any = client.scatter(shared, broadcast=True)
        futures = [
            client.submit(run_task, remote, t, threads, pure=False, key=f"fit-{i}-{os.getpid()}")
            for i, t in enumerate(tasks)
        ]
        for fut in futures:
            yield fut.result()
