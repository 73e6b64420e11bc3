"""Decomposition and composition (Gu, Zhang, Liu, Cai, ETNA 56, 2022; METHODS.md §4): split the global
network along its width into K sub-networks, train them in parallel with no communication, compose
their weights into the global network's initialisation (`fastretrain.compose`), then train it.

Phases of `--method decompose` (all inside the engine's `before_fit`, which the engine times, so the
sub-network phase counts in `wall_seconds`):
1. K sub-networks (every hidden width / K, seed per sub-network) train for `sub_epochs` epochs — as K
   spawned processes joined in a gloo group used for one final barrier only (default), one after another
   in this process (`parallel="sequential"`, to time each sub-network alone), or, under torchrun, one
   sub-network per rank. Each sees the whole training set (default) or a disjoint shard. Each saves its
   checkpoint in OUT/subnets/subnet<j>/ after every epoch, so an interrupted phase resumes.
2. Compose; the global network (the engine's model) gets the composed weights.
3. The engine trains the global network for the remaining `--epochs` − `sub_epochs` epochs.
A resumed global run (its checkpoint exists) does not touch the sub-networks again.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed as dist
from ..checkpoint import atomic_json, atomic_torch_save
from ..compose import compose, decompose
from ..engine import CHECKPOINT, Strategy, _seed_from
from ..errors import FastRetrainError
from ..methods import register_method
from ..schedules import parse_schedule


@dataclass
class SubnetJob:
    """Everything one sub-network's training needs; picklable, so it can go to a spawned process."""

    index: int  # j in 0..K-1
    K: int
    model: nn.Module  # the initialised sub-network
    data: Any  # ImageTensors of the training set
    indices: torch.Tensor | None  # the training images it sees (None: all)
    folder: str  # its checkpoint / metrics folder
    seed: int
    epochs: int
    lr: float
    batch_size: int
    optimizer: str
    momentum: float
    weight_decay: float
    schedule: str
    label_smoothing: float
    image_size: int
    norm: tuple
    device: str
    amp: bool
    threads: int
    progress: bool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_subnet(job: SubnetJob) -> dict[str, Any]:
    """Train one sub-network for `job.epochs` epochs (resuming its own checkpoint); return its record.

    Plain SGD(M)/AdamW loop with the run's augmentation and LR schedule; no torch.distributed calls, so it
    runs the same in a spawned process, in the parent, or on a torchrun rank.
    """
    torch.set_num_threads(job.threads)
    folder = Path(job.folder)
    folder.mkdir(parents=True, exist_ok=True)
    device = torch.device(job.device)
    model = copy.deepcopy(job.model).to(device)
    if job.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=job.lr, momentum=job.momentum, weight_decay=job.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=job.lr, weight_decay=job.weight_decay)
    start, history, train_seconds = 0, [], 0.0
    ck_path = folder / "checkpoint.pt"
    if ck_path.is_file():
        ck = torch.load(ck_path, map_location=device, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start, history, train_seconds = ck["epoch"], ck["history"], ck["train_seconds"]
    schedule = parse_schedule(job.schedule, job.epochs)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=job.label_smoothing)
    idx_all = torch.arange(len(job.data)) if job.indices is None else job.indices
    n = len(idx_all)
    batches = max(1, math.ceil(n / job.batch_size))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (job.amp and device.type == "cuda") else None
    model.train()
    for epoch in range(start, job.epochs):
        gen = torch.Generator().manual_seed(_seed_from(job.seed, epoch, "subnet"))
        order = idx_all[torch.randperm(n, generator=gen)]
        sums = torch.zeros(3, dtype=torch.float64)  # loss, correct, count
        t0 = time.perf_counter()
        for it, chunk in enumerate(order.split(job.batch_size)):
            if len(chunk) == 1 and n > 1:  # a trailing batch of one breaks batch norm
                continue
            for g in opt.param_groups:
                g["lr"] = job.lr * schedule(epoch + it / batches)
            x, y = job.data.prepare(chunk, True, job.image_size, job.norm, gen, device)
            if autocast is not None:
                with autocast:
                    logits = model(x).float()
            else:
                logits = model(x)
            loss = loss_fn(logits, y)
            if not torch.isfinite(loss):
                raise FastRetrainError(f"sub-network {job.index + 1}/{job.K}: training loss is {float(loss):.4g} "
                                       f"at epoch {epoch + 1}, batch {it + 1} (try a lower --lr)")  # fmt: skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.tensor([float(loss.detach()) * len(y), float((logits.detach().argmax(1) == y).sum()), len(y)], dtype=torch.float64)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        loss_sum, correct, count = sums.tolist()
        line = {"subnet": job.index, "epoch": epoch + 1, "train_loss": loss_sum / count, "train_acc": correct / count,
                "epoch_seconds": seconds, "train_seconds": train_seconds, "images_per_second": count / seconds}  # fmt: skip
        history.append(line)
        atomic_torch_save({"epoch": epoch + 1, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                           "optimizer": opt.state_dict(), "history": history, "train_seconds": train_seconds}, ck_path)  # fmt: skip
        with open(folder / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        if job.progress:
            print(f"subnet {job.index + 1}/{job.K}  epoch {epoch + 1}/{job.epochs}  train_loss {line['train_loss']:.4f}  "
                  f"train_acc {line['train_acc']:.4f}  {seconds:.1f}s  {line['images_per_second']:.0f} img/s", flush=True)  # fmt: skip
    record = {"subnet": job.index, "epochs": job.epochs, "train_seconds": train_seconds, "history": history, "threads": job.threads}
    atomic_json(record, folder / "result.json")
    return record


def _spawn_entry(rank: int, jobs: list[SubnetJob], port: int) -> None:
    """Process `rank` of the parallel phase: train sub-network `rank`, then meet the others at a barrier."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=len(jobs))
    try:
        train_subnet(jobs[rank])
        torch.distributed.barrier()  # the only communication: composition waits for every sub-network
    finally:
        torch.distributed.destroy_process_group()


def run_subnets(jobs: list[SubnetJob], parallel: str = "processes") -> None:
    """Train every job: K spawned processes in a gloo group ("processes") or one after another ("sequential")."""
    if parallel == "sequential" or len(jobs) == 1:
        threads = torch.get_num_threads()
        try:
            for job in jobs:
                train_subnet(job)
        finally:
            torch.set_num_threads(threads)
        return
    import torch.multiprocessing as mp

    try:
        mp.spawn(_spawn_entry, args=(jobs, _free_port()), nprocs=len(jobs), join=True)
    except mp.ProcessRaisedException as e:
        last = str(e).strip().splitlines()[-1]
        raise FastRetrainError(f"sub-network training failed in a worker process: {last}") from e
    except mp.ProcessExitedException as e:
        raise FastRetrainError(f"a sub-network worker process died: {e} (a script that trains with method decompose "
                               "must guard its entry point with `if __name__ == '__main__':`, as spawned processes "
                               "re-import it)") from e  # fmt: skip


@dataclass
class Decompose(Strategy):
    """Train K width-wise sub-networks in parallel, compose them into the global network's init, train it."""

    order = -100  # the global network's weights are set before any other strategy looks at them
    subnets: int = 2  # K: sub-networks (must divide every hidden width of --model)
    sub_epochs: int | None = None  # epochs of the sub-network phase, taken from --epochs (None: epochs // 2)
    shards: str = "whole"  # whole: every sub-network sees all training images; disjoint: image i goes to one
    sub_lr: float | None = None  # sub-networks' peak learning rate (None: --lr)
    parallel: str = "processes"  # processes (K spawned gloo processes) or sequential (one after another here)
    threads: int | None = None  # torch threads per sub-network process (None: this process's threads // K)

    def __post_init__(self) -> None:
        self.info: dict[str, Any] = {}  # what the sub-network phase measured (state for resume, not an option)

    def _check(self, engine) -> int:
        from ..widthnets import WidthNet

        if not isinstance(engine.model, WidthNet):
            raise FastRetrainError(f"method decompose needs a width-parametrised model of this package "
                                   f"(vgg-small, resnet20, resnet32, resnet18-cifar), not {engine.cfg.model!r}")  # fmt: skip
        if self.shards not in ("whole", "disjoint"):
            raise FastRetrainError(f"decompose.shards must be whole or disjoint, got {self.shards!r}")
        if self.parallel not in ("processes", "sequential"):
            raise FastRetrainError(f"decompose.parallel must be processes or sequential, got {self.parallel!r}")
        total = engine.cfg.epochs
        sub = self.sub_epochs if self.sub_epochs is not None else total // 2
        if not (1 <= sub < total):
            raise FastRetrainError(f"decompose.sub_epochs must be in 1..epochs-1 (the global network needs at least "
                                   f"one of the {total} epochs), got {sub}")  # fmt: skip
        return sub

    def before_fit(self, engine) -> None:
        sub_epochs = self._check(engine)
        # the sub-network phase uses `sub_epochs` of the run's epochs; the engine trains the global net for the rest
        engine.cfg = dataclasses.replace(engine.cfg, epochs=engine.cfg.epochs - sub_epochs)
        engine.schedule = parse_schedule(engine.cfg.schedule, engine.cfg.epochs)
        if engine.cfg.resume and engine.out and (engine.out / CHECKPOINT).is_file():
            return  # the global run continues from its checkpoint; the sub-networks are done
        K, cfg = self.subnets, engine.cfg
        seeds = [_seed_from(cfg.seed, "subnet", j) for j in range(K)]
        subnets = decompose(engine.model, K, seeds=seeds)
        tmp = None
        if engine.out:
            root = engine.out / "subnets"
        elif dist.world() == 1:
            root = Path(tmp := tempfile.mkdtemp(prefix="fastretrain-subnets-"))
        else:
            raise FastRetrainError("method decompose under torchrun needs --out (a folder all ranks can read)")
        if dist.is_main() and root.exists() and not cfg.resume:
            shutil.rmtree(root)  # a fresh run starts its sub-networks over
        dist.barrier()
        shard = None
        if self.shards == "disjoint":
            perm = torch.randperm(len(engine.train_data), generator=torch.Generator().manual_seed(_seed_from(cfg.seed, "shards")))
        spawned = self.parallel == "processes" and dist.world() == 1
        threads = self.threads or max(1, torch.get_num_threads() // (K if spawned else 1))
        jobs = []
        for j in range(K):
            if self.shards == "disjoint":
                shard = perm[j::K].sort().values
            device = engine.device
            if device.type == "cuda" and dist.world() == 1:
                device = torch.device("cuda", j % torch.cuda.device_count())
            jobs.append(SubnetJob(
                index=j, K=K, model=subnets[j], data=engine.train_data, indices=shard, folder=str(root / f"subnet{j}"),
                seed=seeds[j], epochs=sub_epochs, lr=self.sub_lr or cfg.lr, batch_size=cfg.batch_size, optimizer=cfg.optimizer,
                momentum=cfg.momentum, weight_decay=cfg.weight_decay, schedule=cfg.schedule, label_smoothing=cfg.label_smoothing,
                image_size=engine.image_size, norm=tuple(map(tuple, engine.norm)), device=str(device), amp=engine.amp,
                threads=threads, progress=cfg.progress))  # fmt: skip
        todo = [job for job in jobs if not _finished(job)]
        if dist.is_main() and cfg.progress:
            how = "one per rank" if dist.world() > 1 else ("one after another" if self.parallel == "sequential" else f"{len(todo)} processes")
            print(f"decompose: training {K} sub-networks of {type(engine.model).__name__}{subnets[0].config} for {sub_epochs} "
                  f"epoch(s), {self.shards} training set, {how}, {threads} thread(s) each", flush=True)  # fmt: skip
        t0 = time.perf_counter()
        if dist.world() > 1:  # torchrun: rank r trains sub-networks r, r + W, ...; no DDP, no collectives but the barrier
            run_subnets([job for job in todo if job.index % dist.world() == dist.rank()], "sequential")
            dist.barrier()
        elif todo:
            run_subnets(todo, self.parallel)
        subnet_seconds = time.perf_counter() - t0
        records = [json.loads((Path(job.folder) / "result.json").read_text()) for job in jobs]
        for net, job in zip(subnets, jobs):
            ck = torch.load(Path(job.folder) / "checkpoint.pt", map_location="cpu", weights_only=True)
            net.load_state_dict(ck["model"])
        t1 = time.perf_counter()
        composed = compose(subnets)
        with torch.no_grad():
            engine.model.load_state_dict(composed.state_dict())
        compose_seconds = time.perf_counter() - t1
        # reporting only, excluded from the clock: the sub-networks' and the composed network's test accuracy
        t2 = time.perf_counter()
        sub_eval = [_evaluate(engine, net) for net in subnets]
        comp_loss, comp_acc = engine.evaluate()
        engine.wall_seconds -= time.perf_counter() - t2  # the engine adds all of before_fit's time back
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        train_secs = [r["train_seconds"] for r in records]
        self.info = {
            "subnets": K, "sub_epochs": sub_epochs, "subnet_seconds": subnet_seconds, "compose_seconds": compose_seconds,
            "subnet_train_seconds": train_secs, "subnet_seconds_k_devices": max(train_secs) + compose_seconds,
            "subnet_test_acc": [a for _, a in sub_eval], "subnet_test_loss": [l for l, _ in sub_eval],
            "test_acc_at_composition": comp_acc, "test_loss_at_composition": comp_loss,
        }  # fmt: skip
        if dist.is_main():
            print(f"decompose: sub-network phase {subnet_seconds:.1f}s wall ({K} sub-networks, own training time "
                  f"{', '.join(f'{s:.1f}' for s in train_secs)}s; test acc {', '.join(f'{a:.4f}' for _, a in sub_eval)}); "
                  f"composed in {compose_seconds:.2f}s: test acc {comp_acc:.4f}, loss {comp_loss:.4f}", flush=True)  # fmt: skip

    def after_eval(self, engine) -> None:
        if engine.epoch == 0 and self.info:  # the first global epoch's line carries the sub-network phase
            engine.log.update(self.info)

    def after_fit(self, engine) -> None:
        if dist.is_main() and self.info:
            sub = self.info["subnet_seconds"]
            print(f"decompose: wall time {engine.wall_seconds:.1f}s = sub-network phase {sub:.1f}s "
                  f"+ global phase {engine.wall_seconds - sub:.1f}s", flush=True)  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"info": dict(self.info)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.info = dict(state.get("info", {}))


def _finished(job: SubnetJob) -> bool:
    result = Path(job.folder) / "result.json"
    return result.is_file() and json.loads(result.read_text()).get("epochs") == job.epochs


@torch.no_grad()
def _evaluate(engine, net: nn.Module) -> tuple[float, float]:
    """(loss, accuracy) of a sub-network on the whole test set, on this process alone."""
    net = net.to(engine.device).eval()
    loss = correct = count = 0.0
    for x, y in engine.batches(engine.test_data, train=False, shard=False):
        logits = net(x).float()
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
        count += len(y)
    return loss / max(count, 1), correct / max(count, 1)


register_method("decompose", Decompose, help="train K width-wise sub-networks in parallel, compose them into the "
                "global network's initialisation, then train it (needs vgg-small / resnet20 / ...)")  # fmt: skip
