"""The training engine: one epoch/batch loop with named events that strategies hook.

Events, in order (fastai's names): before_fit, then per epoch before_epoch, per batch before_batch,
after_loss, before_step, after_step; after_epoch (after the training pass, before evaluation; work done
here counts as training time), after_eval; finally after_fit. A strategy overrides the hooks it needs,
receives the engine in each, and may raise SkipBatch or StopFit. Strategies run sorted by `order`.

Evaluation and selection (METHODS.md §6): after every epoch, off the clock, the engine evaluates the
validation split (`engine.val_data`, None when there is none) and the test split (`engine.test_data`) and
logs val_loss/val_acc and test_loss/test_acc. The best epoch (and `model_best.safetensors`) is the one with
the highest val_acc; a tie on val_acc goes to the lower val_loss, and a tie on both to the earlier epoch.
Without a validation split the best epoch is the last one. Nothing the engine chooses reads test; a
strategy that chooses or stops (a switch, early stopping) must read `engine.log["val_loss"]`/["val_acc"]
or evaluate `engine.val_data` itself. A strategy may set `engine.best_eligible = False` in after_eval to
keep this epoch out of the best-epoch choice (kernel-rescale does so in its low-resolution phase).

What strategies may change, and how:
- which parameters train: set `requires_grad`, then `engine.rebuild_optimizer()` (momentum buffers are
  kept by parameter name, also for parameters that leave the optimizer and come back later);
  per-parameter LR multipliers live in `engine.lr_scale` (name -> float).
- the batch: `engine.x`, `engine.y` in before_batch (e.g. new labels).
- weights: write into modules under `torch.no_grad()`.
- input resolution: `engine.image_size`.
- extra passes over data: iterate `engine.batches(data, train=False)`; exclude evaluation-only work
  from the clock with `with engine.untimed():`.
- what the training forward runs and on which data: `engine.set_net(module)`, `engine.train_data`,
  and what evaluation runs on: `engine.val_data`, `engine.test_data` (e.g. cached features).
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from . import distributed as dist
from .checkpoint import atomic_json, atomic_torch_save, load_checkpoint, save_weights
from .config import TrainConfig
from .data import DataBundle
from .errors import FastRetrainError, NonFiniteLossError
from .models import normalization
from .schedules import parse_schedule

EVENTS = ("before_fit", "before_epoch", "before_batch", "after_loss", "before_step", "after_step",
          "after_epoch", "after_eval", "after_fit")  # fmt: skip
CHECKPOINT = "checkpoint.pt"


class SkipBatch(Exception):
    """Raise in a batch hook to skip the rest of this batch (no step)."""


class StopFit(Exception):
    """Raise in any hook to end training after the current epoch's bookkeeping."""


class Strategy:
    """Base class of everything that changes training. Override hooks; keep state in `state_dict`."""

    order: int = 0  # lower runs first
    name: str = ""  # the method name it is registered under

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _seed_from(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


class Engine:
    """Trains `model` on `data` under `cfg`, with `strategies` hooked into the loop.

    Args:
        out_dir: where metrics, weights and the checkpoint go (None: keep nothing on disk).
    """

    def __init__(self, model: nn.Module, data: DataBundle, cfg: TrainConfig, strategies=(), device="cpu", out_dir=None):
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.data = data
        self.train_data, self.val_data, self.test_data = data.train, data.val, data.test
        self.strategies = sorted(strategies, key=lambda s: s.order)  # stable: equal orders keep their given order
        self.out = Path(out_dir) if out_dir else None
        cuda = self.device.type == "cuda"
        self.amp = cuda if cfg.amp is None else cfg.amp
        self.channels_last = cuda if cfg.channels_last is None else cfg.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.image_size = cfg.image_size
        self.norm = normalization(model)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.schedule = parse_schedule(cfg.schedule, cfg.epochs)
        self.lr_scale: dict[str, float] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self._opt_stash: dict[str, dict] = {}  # optimizer state by parameter name, kept across rebuilds
        self._net: nn.Module = self.model  # what the training forward runs (unwrapped)
        self.net: nn.Module = self.model  # the same, DDP-wrapped when distributed
        self.epoch = self.start_epoch = self.iter = 0
        self.history: list[dict[str, Any]] = []
        self.log: dict[str, Any] = {}
        self.wall_seconds = 0.0
        # the best epoch so far: 1-based epoch, its (val_acc, -val_loss) key (None without validation)
        self.best_epoch: int | None = None
        self.best_key: tuple[float, float] | None = None
        self.best_eligible = True  # set False in after_eval to keep this epoch out of the best-epoch choice
        self._untimed = 0.0
        self._rngs: dict[str, torch.Generator] = {}
        self.lr = cfg.lr
        self.rebuild_optimizer()

    # ---------------------------------------------------------------- strategy-facing helpers
    def rng(self, tag: str, per_rank: bool = False) -> torch.Generator:
        """A CPU generator for this epoch and tag, derived from the run seed: reproducible and resumable."""
        key = f"{tag}/{dist.rank() if per_rank else 0}"
        if key not in self._rngs:
            self._rngs[key] = torch.Generator().manual_seed(_seed_from(self.cfg.seed, self.epoch, key))
        return self._rngs[key]

    def set_net(self, module: nn.Module) -> None:
        """Make the training forward run `module` (DDP-wrapped when distributed)."""
        self._net = module
        self.net = module
        if dist.world() > 1 and any(p.requires_grad for p in module.parameters()):
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(module, device_ids=ids)

    def rebuild_optimizer(self) -> None:
        """Build the optimizer over parameters that require grad; keep optimizer state by name.

        Called after any change of `requires_grad` or `lr_scale`. Under DDP the wrapper is rebuilt too,
        since DDP fixes its set of parameters when constructed.
        """
        if self.optimizer is not None:
            for n, p in self.model.named_parameters():
                if p in self.optimizer.state:
                    self._opt_stash[n] = self.optimizer.state[p]
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not named:
            raise FastRetrainError("no trainable parameters left (every parameter has requires_grad=False)")
        groups: dict[float, list] = {}
        for n, p in named:
            groups.setdefault(float(self.lr_scale.get(n, 1.0)), []).append(p)
        pgs = [{"params": ps, "lr_scale": s, "lr": self.cfg.lr * s} for s, ps in groups.items()]
        if self.cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(pgs, lr=self.cfg.lr, momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay)
        elif self.cfg.optimizer == "adam":  # weight decay as an L2 term in the gradient, as torch.optim.Adam does
            self.optimizer = torch.optim.Adam(pgs, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(pgs, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        for n, p in named:
            if n in self._opt_stash:
                self.optimizer.state[p] = self._opt_stash[n]
        self.set_net(self._net)

    def optimizer_state_by_name(self) -> dict[str, dict]:
        state = dict(self._opt_stash)
        if self.optimizer is not None:
            for n, p in self.model.named_parameters():
                if p in self.optimizer.state:
                    state[n] = self.optimizer.state[p]
        return state

    def batches(self, data=None, train: bool = False, shard: bool = True, batch_size: int | None = None):
        """Yield prepared (x, y) batches of `data` (default: training data) on the device.

        train=True: this epoch's shuffled shard (DistributedSampler), random crop + flip, a trailing
        batch of one dropped (batch norm). train=False: in order, eval transform; `shard=False` gives
        every rank all of the data.
        """
        data = self.train_data if data is None else data
        n = len(data)
        if train:
            sampler = DistributedSampler(data, num_replicas=dist.world(), rank=dist.rank(), shuffle=True, seed=self.cfg.seed)
            sampler.set_epoch(self.epoch)
            idx = torch.tensor(list(sampler))
        else:
            idx = torch.arange(n)
            if shard and dist.world() > 1:
                idx = idx[dist.rank() :: dist.world()]
        bs = batch_size or (self.cfg.batch_size if train else 2 * self.cfg.batch_size)
        chunks = list(idx.split(bs))
        if train and len(chunks) > 1 and len(chunks[-1]) == 1:
            chunks.pop()
        gen = self.rng("augment", per_rank=True) if train else None
        for chunk in chunks:
            x, y = data.prepare(chunk, train, self.image_size, self.norm, gen, self.device)
            if self.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def num_batches(self) -> int:
        """Training batches per epoch on this rank."""
        per_rank = math.ceil(len(self.train_data) / dist.world())
        n = math.ceil(per_rank / self.cfg.batch_size)
        return n - 1 if n > 1 and per_rank % self.cfg.batch_size == 1 else n

    @contextlib.contextmanager
    def untimed(self):
        """Exclude the enclosed work (e.g. an extra evaluation) from the training clock."""
        self.sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self._untimed += time.perf_counter() - t

    def autocast(self):
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def evaluate(self, data=None) -> tuple[float, float]:
        """(mean loss, accuracy) of the current net in eval mode on `data`.

        Pass the data explicitly: `engine.val_data` for anything that chooses, `engine.test_data` to report.
        (No argument: the test data, kept for reporting code written before the validation split.)
        """
        data = self.test_data if data is None else data
        net, was = self._net, self._net.training
        net.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, correct, count
        for x, y in self.batches(data, train=False):
            with self.autocast():
                logits = net(x).float()
            sums += torch.stack([nn.functional.cross_entropy(logits, y, reduction="sum").double(),
                                 (logits.argmax(1) == y).sum().double(), torch.tensor(len(y), device=self.device).double()])  # fmt: skip
        net.train(was)
        loss, correct, count = dist.all_reduce_sum(sums).tolist()
        return loss / max(count, 1), correct / max(count, 1)

    # ---------------------------------------------------------------- the loop
    def _call(self, event: str) -> None:
        for s in self.strategies:
            hook = getattr(s, event, None)
            if hook is not None:
                hook(self)

    @torch.no_grad()
    def _sync_buffers(self) -> None:
        """Average floating-point buffers (BN running stats) over ranks so every replica evaluates alike."""
        if dist.world() > 1:
            for b in self.model.buffers():
                if b.is_floating_point():
                    b.copy_(dist.all_reduce_sum(b.clone()) / dist.world())

    def sync(self) -> None:
        """Wait for the device (CUDA) so that wall-clock timings are right."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _seed_epoch(self) -> None:
        self._rngs = {}
        s = _seed_from(self.cfg.seed, self.epoch, "global")
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s % 2**32)

    def _check_finite(self, force: bool = False) -> None:
        # a host sync per batch is free on CPU; on GPU check every 20 batches
        if not (force or self.device.type == "cpu" or self.iter % 20 == 0):
            return
        bad = torch.tensor(0.0 if torch.isfinite(self.loss.detach()).all() else 1.0, device=self.device)
        if dist.all_reduce_sum(bad).item() > 0:
            where = f" (last good checkpoint: {self.out / CHECKPOINT})" if self.out and self.epoch > 0 else ""
            raise NonFiniteLossError(
                f"training loss is {float(self.loss.detach()):.4g} at epoch {self.epoch + 1}, batch {self.iter + 1}; "
                f"stopped (try a lower --lr){where}"
            )

    def _set_lr(self) -> None:
        t = self.epoch + self.iter / max(self.num_batches(), 1)
        self.lr = self.cfg.lr * self.schedule(t)
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr * g["lr_scale"]

    def _train_epoch(self) -> None:
        self.log = {"epoch": self.epoch + 1}
        self._untimed = 0.0
        self._seed_epoch()
        self.model.train()
        self.sync()
        t0 = time.perf_counter()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, correct, count
        bar = tqdm(total=self.num_batches(), desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", unit="batch",
                   leave=False, dynamic_ncols=True, disable=not (self.cfg.progress and dist.is_main() and sys.stderr.isatty()))  # fmt: skip
        stop = False
        try:
            self._call("before_epoch")
            for self.iter, (self.x, self.y) in enumerate(self.batches(train=True)):
                try:
                    self._train_batch()
                except SkipBatch:
                    continue
                finally:
                    bar.update(1)
                b = len(self.y)
                sums += torch.stack([self.loss.detach().double() * b, (self.logits.argmax(1) == self.y).sum().double(),
                                     torch.tensor(b, device=self.device, dtype=torch.float64)])  # fmt: skip
                if self.iter % 10 == 0 and not bar.disable:
                    loss, correct, count = sums.tolist()
                    bar.set_postfix(loss=f"{loss / count:.3f}", acc=f"{correct / count:.3f}",
                                    img_s=f"{count * dist.world() / (time.perf_counter() - t0):.0f}")  # fmt: skip
            if self.device.type != "cpu" and hasattr(self, "loss"):
                self._check_finite(force=True)
            self._sync_buffers()
            self._call("after_epoch")
        except StopFit:
            stop = True
        finally:
            bar.close()
        self.sync()
        seconds = time.perf_counter() - t0 - self._untimed
        loss, correct, count = dist.all_reduce_sum(sums).tolist()
        self._trained_images = count
        self.wall_seconds += seconds
        self.log.update(train_loss=loss / max(count, 1), train_acc=correct / max(count, 1), epoch_seconds=seconds,
                        wall_seconds=self.wall_seconds, images_per_second=count / seconds, lr=self.lr)  # fmt: skip
        if stop:
            raise StopFit

    def _train_batch(self) -> None:
        self._call("before_batch")
        self._set_lr()
        with self.autocast():
            self.logits = self.net(self.x)
            self.loss = self.loss_fn(self.logits.float(), self.y)
        self._call("after_loss")
        self._check_finite()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss.backward()
        self._call("before_step")
        self.optimizer.step()
        self._call("after_step")

    def _end_epoch(self) -> None:
        """Evaluate validation and test (off the clock), log, pick the best epoch by validation, save."""
        if self.val_data is not None:
            val_loss, val_acc = self.evaluate(self.val_data)
            self.log.update(val_loss=val_loss, val_acc=val_acc)
        test_loss, test_acc = self.evaluate(self.test_data)
        self.log.update(test_loss=test_loss, test_acc=test_acc)
        self.best_eligible, stop = True, False
        try:
            self._call("after_eval")
        except StopFit:  # the epoch is recorded and saved first
            stop = True
        self.history.append(dict(self.log))
        improved = self._is_best()
        if dist.is_main():
            if self.cfg.progress:
                val = f"val_acc {self.log['val_acc']:.4f}  " if "val_acc" in self.log else ""
                tqdm.write(f"epoch {self.epoch + 1}/{self.cfg.epochs}  train_loss {self.log['train_loss']:.4f}  "
                           f"train_acc {self.log['train_acc']:.4f}  {val}test_acc {test_acc:.4f}  "
                           f"{self.log['epoch_seconds']:.1f}s  {self.log['images_per_second']:.0f} img/s")  # fmt: skip
            if self.out:
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(self.log) + "\n")
                if improved and self.cfg.save_weights:
                    save_weights(self.model, self.out / "model_best.safetensors")
                if self.cfg.save_checkpoint:
                    atomic_torch_save(self._checkpoint(), self.out / CHECKPOINT)
        if stop:
            raise StopFit

    def _is_best(self) -> bool:
        """Whether this epoch becomes the best: by (val_acc, -val_loss), strictly better; else the latest."""
        if not self.best_eligible:
            return False
        key = (self.log["val_acc"], -self.log["val_loss"]) if "val_acc" in self.log else None
        if key is not None and self.best_key is not None and not key > self.best_key:
            return False
        self.best_epoch, self.best_key = self.epoch + 1, key
        return True

    def fit(self) -> dict[str, Any]:
        """Train for cfg.epochs (continuing a checkpoint when cfg.resume); return the summary."""
        if self.out and dist.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        self._call("before_fit")  # setup work (e.g. feature caching) is training time too
        self.wall_seconds += time.perf_counter() - t0
        if self.cfg.resume and self.out and (self.out / CHECKPOINT).is_file():
            self._restore(load_checkpoint(self.out / CHECKPOINT))
        elif self.out and dist.is_main():
            if self.cfg.resume:
                print(f"note: no checkpoint in {self.out}; starting from scratch")
            (self.out / "metrics.jsonl").write_text("")
        try:
            for self.epoch in range(self.start_epoch, self.cfg.epochs):
                try:
                    self._train_epoch()
                except StopFit:
                    if self._trained_images:  # some training happened this epoch: evaluate and save it
                        self._end_epoch()
                    break
                self._end_epoch()
        except StopFit:  # raised in after_eval
            pass
        self._call("after_fit")
        return self._finish()

    def _finish(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        best = self.history[self.best_epoch - 1] if self.best_epoch else {}
        summary = {
            "method": self.cfg.method, "recipe": self.cfg.recipe, "model": self.cfg.model, "data": self.data.name,
            "test_set_id": self.data.test_set_id, "epochs": len(self.history),
            # chosen on validation (the last eligible epoch without it); test_acc is measured at that epoch
            "best_epoch": self.best_epoch, "best_val_acc": best.get("val_acc"), "test_acc": best.get("test_acc"),
            "final_val_acc": last.get("val_acc"), "final_test_acc": last.get("test_acc"),
            "wall_seconds": self.wall_seconds,
            "images_per_second": (float(np.mean([h["images_per_second"] for h in self.history])) if self.history else None),
            "train_images": len(self.data.train), "val_images": len(self.data.val) if self.data.val is not None else 0,
            "test_images": len(self.data.test), "num_classes": self.data.num_classes, "split_seed": self.cfg.split_seed,
            "device": str(self.device), "world_size": dist.world(), "torch": torch.__version__, "seed": self.cfg.seed,
        }  # fmt: skip
        if self.out and dist.is_main():
            if self.cfg.save_weights:
                save_weights(self.model, self.out / "model_final.safetensors")
            atomic_json(summary, self.out / "summary.json")
        return summary

    # ---------------------------------------------------------------- checkpoints
    def _strategy_key(self, i: int, s: Strategy) -> str:
        return f"{i}:{type(s).__name__}"

    def _checkpoint(self) -> dict[str, Any]:
        return {
            "format": 1,
            "epoch": self.epoch + 1,  # epochs completed
            "config": self.cfg.to_dict(),
            "num_classes": self.data.num_classes,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "trainable": [n for n, p in self.model.named_parameters() if p.requires_grad],
            "lr_scale": dict(self.lr_scale),
            "optimizer": {n: {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in st.items()}
                          for n, st in self.optimizer_state_by_name().items()},  # fmt: skip
            "strategies": {self._strategy_key(i, s): s.state_dict() for i, s in enumerate(self.strategies)},
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_key": list(self.best_key) if self.best_key is not None else None,
            "wall_seconds": self.wall_seconds,
        }

    def _restore(self, ck: dict[str, Any]) -> None:
        where = self.out / CHECKPOINT
        if ck.get("num_classes") != self.data.num_classes:
            raise FastRetrainError(f"cannot resume {where}: it has {ck.get('num_classes')} classes, the data has {self.data.num_classes}")
        for key in ("model", "method"):
            if ck["config"].get(key) != getattr(self.cfg, key):
                raise FastRetrainError(f"cannot resume {where}: it was run with {key}={ck['config'].get(key)!r}, not {getattr(self.cfg, key)!r}")
        try:
            self.model.load_state_dict(ck["model"])
        except RuntimeError as e:
            raise FastRetrainError(f"incompatible checkpoint {where}: {str(e).splitlines()[0]}") from e
        keep = set(ck["trainable"])
        for n, p in self.model.named_parameters():
            p.requires_grad_(n in keep)
        self.lr_scale = dict(ck["lr_scale"])
        for i, s in enumerate(self.strategies):
            s.load_state_dict(ck["strategies"].get(self._strategy_key(i, s), {}))
        self._opt_stash = {n: {k: (v.to(self.device) if torch.is_tensor(v) and v.ndim > 0 else v) for k, v in st.items()}
                           for n, st in ck["optimizer"].items()}  # fmt: skip
        self.optimizer = None
        self.rebuild_optimizer()
        self.start_epoch, self.history = ck["epoch"], list(ck["history"])
        self.best_epoch, self.wall_seconds = ck.get("best_epoch"), ck["wall_seconds"]
        self.best_key = tuple(ck["best_key"]) if ck.get("best_key") is not None else None
        if dist.is_main():
            (self.out / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in self.history))
            print(f"resumed {where} after epoch {self.start_epoch}")
