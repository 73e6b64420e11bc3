"""The training engine: the epoch/batch loop, calling the strategies' hooks at named events.

The events, `Strategy`, `SkipBatch` / `StopFit`, and what a strategy may read or change (the engine's public
surface, set in `Engine.__init__`): events.py, re-exported here. Guides: docs/engine.md, docs/strategies.md.

Evaluation and selection (the comparison protocol, docs/BENCHMARKS.md "How methods are compared"): after
every epoch, off the clock, the engine evaluates the validation split (`engine.val_data`, None when there is
none) and the test split (`engine.test_data`) and logs val_loss/val_acc and test_loss/test_acc. The best
epoch (and `model_best.safetensors`) is the one with the highest val_acc; a tie on val_acc goes to the lower
val_loss, and a tie on both to the earlier epoch. Without a validation split the best epoch is the last one.
Nothing the engine chooses reads test; a strategy that chooses or stops (a switch, early stopping) must read
`engine.log["val_loss"]`/["val_acc"] or evaluate `engine.val_data` itself. A strategy may set
`engine.best_eligible = False` in after_eval to keep this epoch out of the best-epoch choice (kernel-rescale
does so in its low-resolution phase), or in before_fit/before_epoch to keep a model offered before epoch 1
(`offer_model`) out of it. With `engine.val_data` and `engine.test_data` both None, nothing is
evaluated (decompose's sub-networks).

What the loop calls but is not the loop:
- the built-in strategies (`builtins`: swap or drop them by name, docs/strategies.md): "run-folder" writes every
  file of the run folder and resumes a checkpoint (run_folder.py; what a checkpoint holds: checkpointing.py),
  "progress" shows the epoch's bar and prints its line (progress.py); the run's summary: run_folder.summary;
- the time budget's planner (epochs, shortened epochs, the stop before a step that would overrun): budget.py (the
  engine keeps the clock, `elapsed()`, and anneals the LR over the budget);
- the optimizer (one group per LR multiplier, state kept by parameter name) and who holds what frozen: trainable.py;
- mixed precision (autocast dtype, GradScaler) and `--compile`: speed.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from . import budget
from . import distributed as dist
from . import passes
from . import run_folder
from .clock import Span
from .config import TrainConfig, parse_duration
from .data import DataBundle, class_weights
from .errors import FastRetrainError
from .events import EVENTS, SkipBatch, StopFit, Strategy, check_hooks, seed_everything, seed_from  # noqa: F401
from .load import load_snapshot
from .models import normalization
from .progress import Progress
from .run_folder import CHECKPOINT, RunFolder  # noqa: F401 (CHECKPOINT re-exported)
from .schedules import parse_schedule
from .speed import autocast, speed_setup
from .trainable import TrainableSet, build_optimizer, param_names, states_by_name


def default_builtins() -> dict[str, Strategy]:
    """The built-in strategies every engine installs, by name: the progress bar, then the run folder's files."""
    return {"progress": Progress(), "run-folder": RunFolder()}


class Engine:
    """Trains `model` on `data` under `cfg`, with `strategies` hooked into the loop.

    Args:
        out_dir: where metrics, weights and the checkpoint go (None: keep nothing on disk).
        run_id: the run's id (integrity.py), written into every file the run writes (None: none).
        builtins: changes to `default_builtins()`: name -> the strategy to install in its place (None: none); a new
            name adds one. Built-ins run among the strategies by their order; a checkpoint keeps no built-in's state.
    """

    def __init__(self, model: nn.Module, data: DataBundle, cfg: TrainConfig, strategies=(), device="cpu",
                 out_dir=None, run_id: str | None = None, builtins: dict[str, Strategy | None] | None = None):
        # the built-in strategies installed, by name (read only)
        self.builtins = {k: b for k, b in {**default_builtins(), **(builtins or {})}.items() if b is not None}
        strategies = [*strategies, *self.builtins.values()]
        for s in strategies:
            check_hooks(s)
        # The public surface: what strategies may read (and, where the module docstring says so, change).
        self.cfg = cfg  # the run's configuration (read only; set_epochs replaces it)
        self.device = torch.device(device)
        self.model = model.to(self.device)  # the whole model (what is saved and evaluated)
        self.data = data  # the DataBundle as given (names, classes, sizes for the summary)
        # what training, validation and test read (a strategy may replace them, e.g. by cached features)
        self.train_data, self.val_data, self.test_data = data.train, data.val, data.test
        self.strategies = sorted(strategies, key=lambda s: s.order)  # stable: equal orders keep their given order
        self.out = Path(out_dir) if out_dir else None  # the run folder (None: nothing written)
        self.run_id = run_id  # the run's id, in every file of the run folder (read only)
        # speed.py: the forward's autocast dtype (None: off), float16's GradScaler (else None), --compile's compiled
        # forward (else None), whether inputs and model are channels-last
        self.amp_dtype, self.scaler, self._compiled, self.channels_last = speed_setup(cfg, self.device)
        self.amp = self.amp_dtype is not None
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.image_size = cfg.image_size  # input side in pixels of the batches prepared now
        self.norm = normalization(model)  # (mean, std) the inputs are normalised with
        # --balance loss: class weights N / (C n_c) from the training labels
        weight = class_weights(data.train.y, data.num_classes).to(self.device) if cfg.balance == "loss" else None
        self.loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
        self.schedule = parse_schedule(cfg.schedule, cfg.epochs)  # progress in epochs -> LR multiplier
        self.lr_scale: dict[str, float] = {}  # parameter name -> LR multiplier (read only: set_trainable merges it)
        # who holds which parameter frozen and scales whose LR (read only: change it with set_trainable)
        self.trainable = TrainableSet()
        self.optimizer: torch.optim.Optimizer | None = None
        self._opt_stash: dict[str, dict] = {}  # optimizer state by parameter name, kept across rebuilds
        self.net: nn.Module = self.model  # the trainable module the training forward runs (set_net changes it)
        self._forward: nn.Module = self.model  # the same, DDP-wrapped when distributed
        self.epoch = self.start_epoch = self.iter = 0  # 0-based epoch and batch index
        # the current batch (inputs, labels), its logits and loss: set in before_batch / the forward
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None
        # True: this batch's gradients are kept and the next batch's are added to them; no zero_grad, no optimizer
        # step, no before_step/after_step. The engine sets it before before_batch (--accumulate); a strategy may
        # set it in before_batch (under DDP the backward then skips its all-reduce) or after_loss.
        self.accumulating = False
        self._grads_kept = False  # the previous batch accumulated: its gradients are still in .grad
        self.history: list[dict[str, Any]] = []  # one log per finished epoch
        self.improved = False  # whether the log just recorded (history[-1], in after_log) became the best epoch
        self.sums = torch.zeros(3, dtype=torch.float64)  # this epoch's (summed loss, correct, count) on this rank
        self.summary: dict[str, Any] | None = None  # the run's summary, from after_fit on (what fit returns)
        self.log: dict[str, Any] = {}  # this epoch's metrics line (strategies add keys)
        self.wall_seconds = 0.0  # training time so far (evaluations and untimed() work excluded)
        self.cpu_seconds = 0.0  # this process's CPU time over the same spans (beside wall time: load shows here)
        self.budget = parse_duration(cfg.budget)  # training seconds allowed (None: run cfg.epochs)
        self.epoch_end_reserve = 0.0  # seconds a strategy expects its after_epoch work to take this epoch
        self.max_batches: int | None = None  # under a budget that fits fewer than 4 epochs: batches per epoch
        self._span = Span()  # the clock's current span (clock.py): before_fit, or an epoch's training pass
        self._now = 0.0  # under a budget: the training time all ranks agreed on before this step
        # the best epoch so far: 1-based epoch, its (val_acc, -val_loss) key (None without validation)
        self.best_epoch: int | None = None
        self.best_key: tuple[float, float] | None = None
        self.best_eligible = True  # set False in after_eval to keep this epoch out of the best-epoch choice
        self._rngs: dict[str, torch.Generator] = {}
        self.lr = cfg.lr  # the scheduled LR of the current step (before lr_scale)
        self.rebuild_optimizer()

    # ---------------------------------------------------------------- strategy-facing helpers
    def rng(self, tag: str, per_rank: bool = False) -> torch.Generator:
        """A CPU generator for this epoch and tag, derived from the run seed: reproducible and resumable."""
        key = f"{tag}/{dist.rank() if per_rank else 0}"
        if key not in self._rngs:
            self._rngs[key] = torch.Generator().manual_seed(seed_from(self.cfg.seed, self.epoch, key))
        return self._rngs[key]

    def set_net(self, module: nn.Module) -> None:
        """Make the training forward (and evaluation) run `module` (DDP-wrapped for training when distributed)."""
        self.net = self._forward = module
        if dist.world() > 1 and any(p.requires_grad for p in module.parameters()):
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._forward = DDP(module, device_ids=ids)

    def elapsed(self) -> float:
        """Training time so far, the current epoch's part included (evaluations and untimed() work excluded)."""
        return self._span.wall(self.wall_seconds)

    def offer_model(self, info: dict[str, Any] | None = None) -> bool:
        """Offer the current weights, before epoch 1, as a model the run can return (epoch 0): scored on validation
        (and test) off the clock, logged as epoch 0 with `info`, and saved as model_best when validation prefers it.
        Returns whether it became the best so far."""
        now, cpu = self.elapsed(), self._span.cpu(self.cpu_seconds)
        log = {"epoch": 0, **(info or {}), "wall_seconds": now, "cpu_seconds": cpu}
        with self.untimed():
            if self.val_data is not None:
                log["val_loss"], log["val_acc"] = self.evaluate(self.val_data)
            improved = self._is_best(log, 0)
            if self.test_data is not None and (improved or self.cfg.test_eval == "every"):
                log["test_loss"], log["test_acc"] = self.evaluate(self.test_data)
            self.history.append(log)
            self.improved = improved
            self._call("after_log")
        return improved

    def set_epochs(self, epochs: int) -> None:
        """Train for `epochs` epochs instead of cfg.epochs (call it in before_fit): the config and the LR
        schedule follow (decompose gives part of the run's epochs to its sub-networks)."""
        self.cfg = dataclasses.replace(self.cfg, epochs=epochs)
        self.schedule = parse_schedule(self.cfg.schedule, epochs)

    def set_trainable(self, owner, freeze=(), thaw=(), lr_scale: dict[str, float] | None = None) -> None:
        """Change, on behalf of `owner` (a strategy, or a name), which parameters train and their LR multipliers;
        then rebuild the optimizer.

        Args:
            freeze, thaw: parameter names, Parameters or modules (all their parameters). `owner` first releases its
                hold on `thaw` (a parameter trains again unless another owner holds it), then holds `freeze`.
            lr_scale: `owner`'s LR multipliers (name -> factor), replacing its earlier ones (None: keep them). A
                parameter's multiplier is the product of every owner's.
        """
        key = owner if isinstance(owner, str) else (getattr(owner, "name", "") or type(owner).__name__)
        self.trainable.apply(self.model, key, freeze, thaw, lr_scale)
        if lr_scale is not None:
            self.lr_scale = self.trainable.lr_scale()
        self.rebuild_optimizer()

    def forget_optimizer_state(self, params) -> None:
        """Drop the optimizer state (momentum, Adam's moments) of `params` (names, Parameters or modules): they
        restart from their next gradient. Call it after re-initialising them, or before replacing the Parameters."""
        names = set(param_names(self.model, params))
        # the state dicts are the optimizer's and the by-name stash's alike: emptied in place, gone from both
        for n, state in self.optimizer_state_by_name().items():
            if n in names:
                state.clear()

    def rebuild_optimizer(self) -> None:
        """Build the optimizer over parameters that require grad; keep optimizer state by name.

        Called after any change of `requires_grad` or `lr_scale` (set_trainable calls it). Parameters an owner holds
        frozen (set_trainable) stay frozen, also when a strategy replaced the Parameter objects. Under DDP the
        wrapper is rebuilt too, since DDP fixes its set of parameters when constructed.
        """
        for n, p in self.model.named_parameters():
            if p.requires_grad and self.trainable.is_frozen(n):
                p.requires_grad_(False)
        self._opt_stash.update(states_by_name(self.model, self.optimizer))
        self.optimizer = build_optimizer(self.cfg, self.model, self.lr_scale, self._opt_stash)
        self.set_net(self.net)

    def load_optimizer_state(self, by_name: dict[str, dict]) -> None:
        """Replace the optimizer state by `by_name` (parameter name -> state, as optimizer_state_by_name gives) and
        rebuild the optimizer (a resumed checkpoint)."""
        self._opt_stash, self.optimizer = dict(by_name), None
        self.rebuild_optimizer()

    def optimizer_state_by_name(self) -> dict[str, dict]:
        """Every parameter's optimizer state by name, also of parameters that do not train now."""
        return {**self._opt_stash, **states_by_name(self.model, self.optimizer)}

    def batches(self, data=None, train: bool = False, shard: bool = True, batch_size: int | None = None):
        """Yield prepared (x, y) batches of `data` (default: training data) on the device (passes.py). train=True:
        this epoch's shuffled shard (DistributedSampler), random crop + flip, a trailing batch of one dropped (batch
        norm); train=False: in order, eval transform; `shard=False` gives every rank all of the data."""
        return passes.batches(self, data, train, shard, batch_size)

    def num_batches(self) -> int:
        """Training batches per epoch on this rank."""
        return passes.num_batches(len(self.train_data), self.cfg.batch_size)

    def untimed(self):
        """Exclude the enclosed work (e.g. an extra evaluation) from the training clock (a context manager)."""
        return self._span.untimed(self.sync)

    def autocast(self):
        """The forward's autocast context (--amp: bf16, or fp16 with the engine's GradScaler), else a no-op."""
        return autocast(self.device, self.amp_dtype)

    def evaluate(self, data=None, module: nn.Module | None = None) -> tuple[float, float]:
        """(mean loss, accuracy) of the current net (or `module`, on the engine's device) in eval mode on `data`:
        `engine.val_data` for anything that chooses, `engine.test_data` to report (None: the test data)."""
        data = self.test_data if data is None else data
        return passes.evaluate(self, data, self.net if module is None else module)

    # ---------------------------------------------------------------- the loop
    def _call(self, event: str) -> None:  # each strategy's hook for `event`, in order
        for s in self.strategies:
            hook = getattr(s, event, None)
            if hook is not None:
                hook(self)

    def sync(self) -> None:
        """Wait for the device (CUDA) so that wall-clock timings are right."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _set_lr(self) -> None:
        if self.budget is not None:  # annealed to the budget: progress is training time over the budget
            t = min(self._now / self.budget, 1.0) * self.cfg.epochs  # the ranks' agreed clock (budget.py)
        else:  # with --accumulate N: the progress at the start of the step's N batches, as with N x the batch
            t = self.epoch + (self.iter - self.iter % self.cfg.accumulate) / max(self.num_batches(), 1)
        self.lr = self.cfg.lr * self.schedule(t)
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr * g["lr_scale"]

    def _stopped(self, work, *args) -> bool:
        """Run `work(*args)`; whether it asked to stop: it returned True, or a hook raised StopFit (the one place
        StopFit is caught; the run ends after this epoch's bookkeeping)."""
        try:
            return bool(work(*args))
        except StopFit:
            return True

    def _train_epoch(self) -> tuple[bool, float]:
        """One epoch's training pass, timed; (whether to stop after it, images trained on over all ranks)."""
        self.log = {"epoch": self.epoch + 1}
        self.epoch_end_reserve = 0.0
        self._grads_kept = False  # gradients never carry over from an epoch's unfinished group
        self._rngs = {}
        seed_everything(seed_from(self.cfg.seed, self.epoch, "global"))
        self.model.train()
        self.sync()
        self._span.start()
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, correct, count
        stop = self._stopped(self._train_pass)
        self.sync()
        seconds, cpu = self._span.stop()
        loss, correct, count = dist.all_reduce_sum(self.sums).tolist()
        self.wall_seconds += seconds
        self.cpu_seconds += cpu
        self.log.update(train_loss=loss / max(count, 1), train_acc=correct / max(count, 1), epoch_seconds=seconds,
                        wall_seconds=self.wall_seconds, cpu_seconds=self.cpu_seconds,
                        images_per_second=count / seconds, lr=self.lr)
        return stop, count

    def _train_pass(self) -> bool:
        """before_epoch, the batches (after_batch after each), after_epoch; adds each batch's (loss, correct, count)
        to `sums`; True when the budget stops the epoch before a step."""
        stop = False
        self._call("before_epoch")
        loop0 = self.elapsed()  # the steps' own clock starts after before_epoch's work (a head, a switch)
        for self.iter, (self.x, self.y) in enumerate(self.batches(train=True)):
            if self.max_batches is not None and self.iter >= self.max_batches:  # a shortened epoch (budget)
                break
            if self.budget is not None:
                stop, self._now = budget.stop_before_step(self, loop0)
                if stop:
                    break
            try:
                self._train_batch()
                self.sums += passes.sums(self.logits, self.y, self.loss.detach().double() * len(self.y))
            except SkipBatch:
                pass
            self._call("after_batch")  # also after a skipped batch (progress counts it)
        if self.device.type != "cpu" and self.loss is not None:
            passes.check_finite(self, force=True)
        dist.average_buffers(self.model)  # BN statistics alike on every rank
        if not (stop and self.iter == 0):  # stopped before a step: no after_epoch work (a refinement) on the clock
            self._call("after_epoch")
        return stop

    def _train_batch(self) -> None:
        total = min(self.num_batches(), self.max_batches or self.num_batches())
        self.accumulating, group = passes.accumulation(self.iter, self.cfg.accumulate, total)
        self._call("before_batch")
        self._set_lr()
        # DDP: a batch that accumulates keeps its gradients local; the group's last backward all-reduces the sum
        local = self.accumulating and isinstance(self._forward, DDP)
        with self._forward.no_sync() if local else contextlib.nullcontext():
            with self.autocast():
                self.logits = self._forward(self.x) if self._compiled is None else self._compiled(self._forward, self.x)
                self.loss = self.loss_fn(self.logits.float(), self.y)
            self._call("after_loss")
            passes.check_finite(self)
            if not self._grads_kept:
                self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss if group == 1 else self.loss / group  # the group's gradient: that of its mean loss
            # float16: scaled backward (the scale changes only at a step, so a group's gradients add up alike)
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        self._grads_kept = self.accumulating
        if self.accumulating:
            return
        if self.scaler is not None:  # hooks see the unscaled gradients; an overflowing step is skipped
            self.scaler.unscale_(self.optimizer)
        self._call("before_step")
        if self.accumulating:
            raise FastRetrainError("engine.accumulating was set in before_step, after the gradients were final; set it "
                                   "in before_batch or after_loss")
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self._call("after_step")

    def _end_epoch(self) -> bool:
        """Evaluate validation and test (off the clock), log, pick the best epoch by validation, record (after_log:
        the run folder saves); whether after_eval or after_log asked to stop."""
        if self.val_data is not None:
            val_loss, val_acc = self.evaluate(self.val_data)
            self.log.update(val_loss=val_loss, val_acc=val_acc)
        every = self.cfg.test_eval == "every"
        if self.test_data is not None and every:
            test_loss, test_acc = self.evaluate(self.test_data)
            self.log.update(test_loss=test_loss, test_acc=test_acc)
        self.best_eligible = True
        stop = self._stopped(self._call, "after_eval")  # the epoch is recorded and saved first
        improved = self._is_best(self.log, self.epoch + 1)
        if self.test_data is not None and not every and improved:  # the delivered model changed: score it
            self.log["test_loss"], self.log["test_acc"] = self.evaluate(self.test_data)
        self.history.append(dict(self.log))
        self.improved = improved
        return self._stopped(self._call, "after_log") or stop

    def stamped(self, record: dict[str, Any]) -> dict[str, Any]:
        """`record` with the run's id, as every file of the run folder carries it (unchanged without an id)."""
        return run_folder.stamped(record, self.run_id)

    def _is_best(self, log: dict[str, Any], epoch: int) -> bool:
        """Whether `log` (of `epoch`, 0: a model offered before epoch 1) becomes the best: by (val_acc, -val_loss),
        strictly better; without validation, the latest eligible epoch (epoch 0 only when there is no other)."""
        if not self.best_eligible:  # kept out of the choice; its log says so (the delivered curve skips it)
            log["eligible"] = False
            return False
        key = (log["val_acc"], -log["val_loss"]) if "val_acc" in log else None
        if key is not None and self.best_key is not None and not key > self.best_key:
            return False
        self.best_epoch, self.best_key = epoch, key
        return True

    def fit(self) -> dict[str, Any]:
        """Train for cfg.epochs (continuing a checkpoint when cfg.resume); return the summary."""
        load_start = load_snapshot()  # another process's load slows the clock: noted at start and end
        self._span.start()
        self._call("before_fit")  # setup work (e.g. feature caching) is training time too, but not untimed() work
        wall, cpu = self._span.stop()
        self.wall_seconds += wall
        self.cpu_seconds += cpu
        self._call("after_setup")  # the run folder: --resume continues the checkpoint, else a fresh metrics.jsonl
        self.epoch = self.start_epoch
        while self.epoch < self.cfg.epochs:
            stop, trained = self._train_epoch()
            if stop and not trained:  # stopped before this epoch trained on anything: nothing to evaluate or save
                break
            if self._end_epoch() or stop or (self.budget is not None and not budget.continues(self)):
                break
            self.epoch += 1
        self._call("after_fit")
        self.summary = run_folder.summary(self, load_start)
        self._call("after_summary")  # the run folder: summary.json, with model_final
        return self.summary

