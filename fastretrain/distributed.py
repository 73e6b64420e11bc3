"""torch.distributed helpers: the engine runs unchanged under `torchrun --nproc_per_node=K`.

`single_process()` makes this process act alone (world size 1, rank 0) while it is inside a process group:
decomposition trains each sub-network with a whole `Engine` in a worker that belongs to a group (for one final
barrier) or on one torchrun rank, and that engine must neither shard its data nor wrap its model in DDP.
"""
from __future__ import annotations

import atexit
import contextlib
import os

import torch
import torch.distributed as dist

from .errors import FastRetrainError


_alone = 0  # depth of nested single_process() blocks


@contextlib.contextmanager
def single_process():
    """Within the block, world() is 1, rank() 0 and collectives are no-ops, whatever group this process is in."""
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


def _grouped() -> bool:
    return not _alone and dist.is_available() and dist.is_initialized()


def resolve_device(spec: str) -> torch.device:
    """The device of `--device` auto|cpu|cuda|cuda:N; "auto" and "cuda" pick this rank's GPU (LOCAL_RANK)."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        return torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise FastRetrainError(f"--device {spec}: CUDA is not available on this machine")
    if spec == "cuda":
        return torch.device(f"cuda:{local}")
    if spec != "cpu" and not spec.startswith("cuda:"):
        raise FastRetrainError(f"--device must be auto, cpu, cuda or cuda:N; got {spec!r}")
    return torch.device(spec)


def init_from_env(device: torch.device) -> None:
    """Join the process group torchrun describes (RANK/WORLD_SIZE set); a no-op for one process."""
    if _alone or (dist.is_available() and dist.is_initialized()):
        return
    if dist.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(shutdown)


def shutdown() -> None:
    """Leave the process group cleanly. Without it, a gloo rank can abort at interpreter exit
    ("terminate called without an active exception") when its peer has already gone; registered at exit
    by `init_from_env`, safe to call twice."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> int:
    return dist.get_world_size() if _grouped() else 1


def rank() -> int:
    return dist.get_rank() if _grouped() else 0


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (returns t); identity for one process."""
    if world() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def average(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks, in place (returns t): e.g. batch-norm statistics each rank estimated on its shard."""
    return all_reduce_sum(t).div_(world())


@torch.no_grad()
def average_buffers(module: torch.nn.Module) -> None:
    """Average `module`'s floating-point buffers (BN running stats) over ranks, so every replica evaluates alike."""
    if world() > 1:
        for b in module.buffers():
            if b.is_floating_point():
                b.copy_(all_reduce_sum(b.clone()) / world())


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank `src`'s values into `t` on every rank, in place (returns t); identity for one process."""
    if world() > 1:
        dist.broadcast(t, src)
    return t


def broadcast_object(obj, src: int = 0):
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if world() > 1:
        dist.barrier()
