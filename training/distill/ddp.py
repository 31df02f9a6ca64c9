"""DistributedDataParallel on CPU (gloo), driven by the environment ``torchrun`` sets.

Without ``WORLD_SIZE`` > 1 everything here is a no-op and training runs in one process.
Under ``torchrun --nproc_per_node N -m training distill ...`` each rank trains on its shard
of every epoch's batches, DDP averages the gradients, and rank 0 alone writes checkpoints and
shows progress. Every rank evaluates the full validation split with identical weights, so
early-stopping decisions agree without any communication.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup() -> DistContext:
    """Join the process group when launched by torchrun (gloo backend: CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size())


def wrap(module: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP-wrap the trainable module when distributed.

    ``find_unused_parameters``: progressive matching and the FitNets hint stage leave some
    heads (or the classifier) out of the graph for whole epochs.
    """
    if not ctx.distributed:
        return module
    return DistributedDataParallel(module, find_unused_parameters=True)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    inner = module.module if isinstance(module, DistributedDataParallel) else module
    assert isinstance(inner, nn.Module)
    return inner


def all_reduce_mean(value: float, ctx: DistContext) -> float:
    """Mean of a scalar over ranks (used for the logged training loss)."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / ctx.world


@torch.no_grad()
def sync_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Average floating buffers (BatchNorm running statistics) over ranks, in place.

    DDP syncs buffers at the start of each forward only, so after an epoch every rank's
    running stats include its own last batch; averaging them before validation keeps the
    evaluated (and saved) models identical on every rank.
    """
    if not ctx.distributed:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(ctx.world)
        else:
            dist.broadcast(buf, src=0)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (e.g. before rank 0 reads what others wrote)."""
    if ctx.distributed:
        dist.barrier()


def teardown_if_initialized() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def teardown(ctx: DistContext) -> None:
    """Leave the process group."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
