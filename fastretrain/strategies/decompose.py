"""Decomposition and composition (Gu, Zhang, Liu, Cai, ETNA 56, 2022; docs/decompose.md): split the global
network along its width into K sub-networks, train them in parallel with no communication, compose
their weights into the global network's initialisation (`fastretrain.compose`), then train it.

Phases of `--method decompose` (all inside the engine's `before_fit`, which the engine times, so the
sub-network phase, process start-up included, counts in `wall_seconds`):
1. K sub-networks (every hidden width / K, seed per sub-network) train for `sub_epochs` epochs, each with an
   `Engine` of its own: the run's TrainConfig with the sub-network's epochs, LR, seed, folder and device
   replaced, plain training (no other method), no evaluation, run under `distributed.single_process()`. As K
   spawned processes joined in a gloo group used for one final barrier only (default), one after another in
   this process (`parallel="sequential"`, to time each sub-network alone), or, under torchrun, one
   sub-network per rank. Each sees the whole training set (default) or a disjoint shard. Each engine saves
   its checkpoint in OUT/subnets/subnet<j>/ after every epoch, so an interrupted phase resumes (--resume).
2. Compose; the global network (the engine's model) gets the composed weights.
3. The engine trains the global network for the remaining `--epochs` − `sub_epochs` epochs.
A resumed global run (its checkpoint exists) does not touch the sub-networks again.
"""
from __future__ import annotations

import copy
import dataclasses
import json
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
from ..checkpoint import atomic_json, load_checkpoint
from ..compose import compose, decompose
from ..config import TrainConfig
from ..data import DataBundle
from ..engine import CHECKPOINT, Engine, Strategy, seed_from
from ..errors import FastRetrainError
from ..methods import check_options, register_method
from ..widthnets import WidthNet


@dataclass
class SubnetJob:
    """One sub-network's training; picklable, so it can go to a spawned process."""

    index: int  # j in 0..K-1
    K: int
    model: nn.Module  # the initialised sub-network
    data: DataBundle  # its training images (all, or its shard); no validation or test images
    cfg: TrainConfig  # the run's config with this sub-network's epochs, LR, seed, folder (out) and device
    threads: int
    progress: bool  # print a line per epoch


class SubnetLines(Strategy):
    """Prints `subnet j/K  epoch e/E  train_loss ...` after each sub-network epoch."""

    def __init__(self, index: int, K: int):
        self.index, self.K = index, K

    def after_eval(self, engine) -> None:
        log = engine.log
        print(f"subnet {self.index + 1}/{self.K}  epoch {engine.epoch + 1}/{engine.cfg.epochs}  "
              f"train_loss {log['train_loss']:.4f}  train_acc {log['train_acc']:.4f}  {log['epoch_seconds']:.1f}s  "
              f"{log['images_per_second']:.0f} img/s", flush=True)


def train_subnet(job: SubnetJob) -> dict[str, Any]:
    """Train one sub-network with the engine, as if this process were alone; write and return its record."""
    torch.set_num_threads(job.threads)
    lines = [SubnetLines(job.index, job.K)] if job.progress else []
    with dist.single_process():  # inside a spawned group or on a torchrun rank: no sharding, no DDP
        engine = Engine(copy.deepcopy(job.model), job.data, job.cfg, lines, device=job.cfg.device, out_dir=job.cfg.out)
        engine.val_data = engine.test_data = None  # no evaluation: the parent's clock counts this whole phase
        summary = engine.fit()
    record = {"subnet": job.index, "epochs": summary["epochs"], "train_seconds": summary["wall_seconds"],
              "history": engine.history, "threads": job.threads}
    atomic_json(record, Path(job.cfg.out) / "result.json")
    return record


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        raise FastRetrainError(f"a sub-network worker process died: {e} (a script that trains with method "
                               "decompose must guard its entry point with `if __name__ == '__main__':`, as spawned "
                               "processes re-import it)") from e


@dataclass
class Decompose(Strategy):
    """Train K width-wise sub-networks in parallel, compose them into the global network's init, train it."""

    order = -200  # the global network's weights are set before any other strategy looks at them (linear-probe's)
    subnets: int = 2  # K: sub-networks (must divide every hidden width of --model)
    sub_epochs: int | None = None  # epochs of the sub-network phase, taken from --epochs (None: epochs // 2)
    shards: str = "whole"  # whole: every sub-network sees all training images; disjoint: image i goes to one
    sub_lr: float | None = None  # sub-networks' peak learning rate (None: --lr)
    parallel: str = "processes"  # processes (K spawned gloo processes) or sequential (one after another here)
    threads: int | None = None  # torch threads per sub-network process (None: this process's threads // K)

    def __post_init__(self) -> None:
        check_options("decompose", [
            (self.subnets >= 2, f"subnets must be >= 2, got {self.subnets}"),
            (self.sub_epochs is None or self.sub_epochs >= 1, f"sub_epochs must be >= 1, got {self.sub_epochs}"),
            (self.shards in ("whole", "disjoint"), f"shards must be whole or disjoint, got {self.shards!r}"),
            (self.sub_lr is None or self.sub_lr > 0, f"sub_lr must be > 0, got {self.sub_lr}"),
            (self.parallel in ("processes", "sequential"),
             f"parallel must be processes or sequential, got {self.parallel!r}"),
            (self.threads is None or self.threads >= 1, f"threads must be >= 1, got {self.threads}"),
        ])
        self.info: dict[str, Any] = {}  # what the sub-network phase measured (state for resume, not an option)

    def _sub_epochs(self, engine) -> int:
        if not isinstance(engine.model, WidthNet):
            raise FastRetrainError(f"method decompose needs a width-parametrised model of this package "
                                   f"(vgg-small, resnet20, resnet32, resnet18-cifar), not {engine.cfg.model!r}")
        total = engine.cfg.epochs
        sub = self.sub_epochs if self.sub_epochs is not None else total // 2
        if not (1 <= sub < total):
            raise FastRetrainError(f"decompose.sub_epochs must be in 1..epochs-1 (the global network needs at "
                                   f"least one of the {total} epochs), got {sub}")
        return sub

    def before_fit(self, engine) -> None:
        sub_epochs = self._sub_epochs(engine)
        # the sub-network phase uses `sub_epochs` of the run's epochs; the engine trains the global net for the rest
        engine.set_epochs(engine.cfg.epochs - sub_epochs)
        if engine.cfg.resume and engine.out and (engine.out / CHECKPOINT).is_file():
            return  # the global run continues from its checkpoint; the sub-networks are done
        K, cfg = self.subnets, engine.cfg
        seeds = [seed_from(cfg.seed, "subnet", j) for j in range(K)]
        subnets = decompose(engine.model, K, seeds=seeds)
        root, tmp = self._folder(engine)
        jobs = self._jobs(engine, subnets, seeds, sub_epochs, root)
        todo = [job for job in jobs if not _finished(job)]
        if dist.is_main() and cfg.progress:
            how = "one per rank" if dist.world() > 1 else (
                "one after another" if self.parallel == "sequential" else f"{len(todo)} processes")
            print(f"decompose: training {K} sub-networks of {type(engine.model).__name__}{subnets[0].config} for "
                  f"{sub_epochs} epoch(s), {self.shards} training set, {how}, {jobs[0].threads} thread(s) each",
                  flush=True)
        t0 = time.perf_counter()
        if dist.world() > 1:  # torchrun: rank r trains sub-networks r, r + W, ...; no collectives but the barrier
            run_subnets([job for job in todo if job.index % dist.world() == dist.rank()], "sequential")
            dist.barrier()
        elif todo:
            run_subnets(todo, self.parallel)
        subnet_seconds = time.perf_counter() - t0
        records = [json.loads((Path(job.cfg.out) / "result.json").read_text()) for job in jobs]
        for net, job in zip(subnets, jobs):  # each sub-network's last weights, from its engine's checkpoint
            net.load_state_dict(load_checkpoint(Path(job.cfg.out) / CHECKPOINT)["model"])
        t1 = time.perf_counter()
        composed = compose(subnets)
        with torch.no_grad():
            engine.model.load_state_dict(composed.state_dict())
        compose_seconds = time.perf_counter() - t1
        with engine.untimed():  # reporting only: the sub-networks' and the composed network's accuracy
            sub_eval = [engine.evaluate(engine.test_data, module=net.to(engine.device)) for net in subnets]
            comp_loss, comp_acc = engine.evaluate(engine.test_data)
            comp_val = engine.evaluate(engine.val_data) if engine.val_data is not None else None
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        train_secs = [r["train_seconds"] for r in records]
        self.info = {
            "subnets": K, "sub_epochs": sub_epochs, "subnet_seconds": subnet_seconds,
            "subnet_train_seconds": train_secs, "compose_seconds": compose_seconds,
            "subnet_seconds_k_devices": max(train_secs) + compose_seconds,  # the phase with one device per sub-network
            "subnet_test_acc": [a for _, a in sub_eval], "subnet_test_loss": [loss for loss, _ in sub_eval],
            "test_acc_at_composition": comp_acc, "test_loss_at_composition": comp_loss,
        }
        if comp_val is not None:
            self.info.update(val_loss_at_composition=comp_val[0], val_acc_at_composition=comp_val[1])
        if dist.is_main():
            own = ", ".join(f"{s:.1f}" for s in train_secs)
            accs = ", ".join(f"{a:.4f}" for _, a in sub_eval)
            print(f"decompose: sub-network phase {subnet_seconds:.1f}s wall ({K} sub-networks, own training time "
                  f"{own}s; test acc {accs}); composed in {compose_seconds:.2f}s: test acc {comp_acc:.4f}, "
                  f"loss {comp_loss:.4f}", flush=True)

    def _folder(self, engine) -> tuple[Path, str | None]:
        """(where the sub-networks' folders go, a temporary folder to remove afterwards or None)."""
        tmp = None
        if engine.out:
            root = engine.out / "subnets"
        elif dist.world() == 1:
            root = Path(tmp := tempfile.mkdtemp(prefix="fastretrain-subnets-"))
        else:
            raise FastRetrainError("method decompose under torchrun needs --out (a folder all ranks can read)")
        if dist.is_main() and root.exists() and not engine.cfg.resume:
            shutil.rmtree(root)  # a fresh run starts its sub-networks over
        dist.barrier()
        return root, tmp

    def _jobs(self, engine, subnets: list[nn.Module], seeds: list[int], sub_epochs: int, root: Path) -> list[SubnetJob]:
        K, cfg, train = self.subnets, engine.cfg, engine.train_data
        if self.shards == "disjoint":
            perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed_from(cfg.seed, "shards")))
        spawned = self.parallel == "processes" and dist.world() == 1
        threads = self.threads or max(1, torch.get_num_threads() // (K if spawned else 1))
        no_images = train.subset(torch.arange(0))  # the sub-networks' engines evaluate nothing
        jobs = []
        for j in range(K):
            data = train
            if self.shards == "disjoint":
                data = train.subset(perm[j::K].sort().values)
            device = engine.device
            if device.type == "cuda" and dist.world() == 1:
                device = torch.device("cuda", j % torch.cuda.device_count())
            bundle = DataBundle(data, no_images, engine.data.classes, engine.data.name,
                                test_set_id=engine.data.test_set_id)
            job_cfg = dataclasses.replace(
                cfg, method="sgdm", options={}, epochs=sub_epochs, lr=self.sub_lr or cfg.lr, seed=seeds[j],
                width=(cfg.width or 1.0) / K, out=str(root / f"subnet{j}"), device=str(device), progress=False,
                save_weights=False, save_checkpoint=True,
            )
            jobs.append(SubnetJob(j, K, subnets[j], bundle, job_cfg, threads, cfg.progress))
        return jobs

    def after_eval(self, engine) -> None:
        if engine.epoch == 0 and self.info:  # the first global epoch's line carries the sub-network phase
            engine.log.update(self.info)

    def after_fit(self, engine) -> None:
        if dist.is_main() and self.info:
            sub = self.info["subnet_seconds"]
            print(f"decompose: wall time {engine.wall_seconds:.1f}s = sub-network phase {sub:.1f}s "
                  f"+ global phase {engine.wall_seconds - sub:.1f}s", flush=True)

    def state_dict(self) -> dict[str, Any]:
        return {"info": dict(self.info)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.info = dict(state.get("info", {}))


def _finished(job: SubnetJob) -> bool:
    result = Path(job.cfg.out) / "result.json"
    return result.is_file() and json.loads(result.read_text()).get("epochs") == job.cfg.epochs


register_method("decompose", Decompose, help="train K width-wise sub-networks in parallel, compose them into the "
                "global network's initialisation, then train it (needs vgg-small / resnet20 / ...)")
