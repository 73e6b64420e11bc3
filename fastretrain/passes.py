"""Passes over data: the prepared batches the engine trains and evaluates on, and the evaluation pass.

Training batches (`train=True`): this epoch's shuffled shard of the training data (DistributedSampler seeded by the
run seed and the epoch, or `--balance sampler`'s class-balanced draw from `engine.rng("balance")`), augmented with
`engine.rng("augment")`, a trailing batch of one dropped (batch norm). Evaluation batches: in order, the evaluation
transform, sharded over ranks unless `shard=False`, twice the training batch size. Metrics are summed on the device
as float64 (summed loss, correct, count) and reduced over ranks once per pass, without host syncs per batch.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import DistributedSampler

from . import distributed as dist
from .bundle import balanced_indices
from .errors import NonFiniteLossError
from .run_folder import CHECKPOINT


def batches(engine, data, train: bool = False, shard: bool = True, batch_size: int | None = None):
    """Yield prepared (x, y) batches of `data` (None: `engine.train_data`) on `engine.device` (Engine.batches)."""
    data = engine.train_data if data is None else data
    n, cfg = len(data), engine.cfg
    if train and cfg.balance == "sampler":  # class-balanced draw, as many per rank as the sampler gives
        per_rank = math.ceil(n / dist.world())
        idx = balanced_indices(data.y, per_rank * dist.world(), engine.rng("balance"))[dist.rank() :: dist.world()]
    elif train:
        sampler = DistributedSampler(data, dist.world(), dist.rank(), shuffle=True, seed=cfg.seed)
        sampler.set_epoch(engine.epoch)
        idx = torch.tensor(list(sampler))
    else:
        idx = torch.arange(n)
        if shard and dist.world() > 1:
            idx = idx[dist.rank() :: dist.world()]
    bs = batch_size or (cfg.batch_size if train else 2 * cfg.batch_size)
    chunks = list(idx.split(bs))
    if train and len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks.pop()
    gen = engine.rng("augment", per_rank=True) if train else None
    if hasattr(data, "read_ahead"):  # disk-backed images: read the next batches while this one trains
        data.read_ahead(chunks)
    for chunk in chunks:
        x, y = data.prepare(chunk, train, engine.image_size, engine.norm, gen, engine.device)
        if engine.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, y


def num_batches(n: int, batch_size: int) -> int:
    """Training batches per epoch on this rank, of `n` training images (the trailing batch of one is dropped)."""
    per_rank = math.ceil(n / dist.world())
    k = math.ceil(per_rank / batch_size)
    return k - 1 if k > 1 and per_rank % batch_size == 1 else k


def sums(logits: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor) -> torch.Tensor:
    """(summed loss, correct, count) of one batch as float64 on its device: added up without host syncs."""
    count = torch.tensor(len(y), device=logits.device, dtype=torch.float64)
    return torch.stack([loss_sum.double(), (logits.argmax(1) == y).sum().double(), count])


@torch.no_grad()
def evaluate(engine, data, net: nn.Module) -> tuple[float, float]:
    """(mean loss, accuracy) of `net` in eval mode on `data`, over all ranks (Engine.evaluate)."""
    was = net.training
    net.eval()
    total = torch.zeros(3, dtype=torch.float64, device=engine.device)  # loss, correct, count
    for x, y in engine.batches(data, train=False):
        with engine.autocast():
            logits = net(x).float()
        total += sums(logits, y, nn.functional.cross_entropy(logits, y, reduction="sum"))
    net.train(was)
    loss, correct, count = dist.all_reduce_sum(total).tolist()
    return loss / max(count, 1), correct / max(count, 1)


def accumulation(i: int, n: int, total: int) -> tuple[bool, int]:
    """(whether batch `i` is not the last of its --accumulate group, the group's size in batches): groups of `n`
    batches from the epoch's start, the last one shorter when the epoch's `total` batches run out."""
    start = i - i % n
    size = max(min(n, total - start), 1)
    return i - start + 1 < size, size


def check_finite(engine, force: bool = False) -> None:
    """Stop the run (NonFiniteLossError, naming the last good checkpoint if any) when `engine.loss` is not finite
    on some rank. A host sync per batch is free on CPU; on GPU only every 20 batches, and at the epoch's end."""
    if not (force or engine.device.type == "cpu" or engine.iter % 20 == 0):
        return
    bad = torch.tensor(0.0 if torch.isfinite(engine.loss.detach()).all() else 1.0, device=engine.device)
    if dist.all_reduce_sum(bad).item() > 0:
        where = f" (last good checkpoint: {engine.out / CHECKPOINT})" if engine.out and engine.epoch > 0 else ""
        loss = float(engine.loss.detach())
        raise NonFiniteLossError(f"training loss is {loss:.4g} at epoch {engine.epoch + 1}, batch {engine.iter + 1}; "
                                 f"stopped (try a lower --lr){where}")
