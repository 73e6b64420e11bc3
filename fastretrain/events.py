"""The strategy protocol: the engine's events, the base class `Strategy`, and the two exceptions that steer the loop.

Events, in order (fastai's names): before_fit, then per epoch before_epoch, per batch before_batch, after_loss,
before_step, after_step; after_epoch (after the training pass, before evaluation; work done here counts as training
time), after_eval; finally after_fit. Four more, `RECORD_EVENTS`, are where what the loop did is recorded (the
built-in strategies, progress.py and run_folder.py, write and show there; any strategy may use them): after_setup
(once, after before_fit, off the clock: a checkpoint is resumed here), after_batch (after every training batch,
skipped ones too; `engine.sums` holds the epoch's running sums), after_log (an epoch's log, or an offered model's,
is final: `engine.history[-1]`, `engine.improved`) and after_summary (after after_fit: `engine.summary`). A strategy
overrides the hooks it needs, receives the engine in each, and may raise SkipBatch or StopFit (StopFit is caught in
one place, the engine's `_stopped`: in the epoch's hooks and after_eval/after_log). Strategies run sorted by
`order`. A public method named `before_*` or `after_*` that is not one of these events (a misspelt hook) is refused
when the engine is built (`check_hooks`). The engine (engine.py) imports these names and re-exports them. Guide:
docs/strategies.md.

Everything a strategy may read or change is an attribute set in `Engine.__init__` (documented there) or a
public method; nothing else of the engine is meant for strategies. What they may change, and how:
- which parameters train, and their LR multipliers: `engine.set_trainable(self, freeze=..., thaw=..., lr_scale=...)`
  (trainable.py): each strategy's holds are kept apart, so a thaw releases only the caller's own freezes, and LR
  multipliers are merged as the product of every strategy's (`engine.lr_scale`, name -> float, is that product);
  the optimizer is rebuilt, keeping momentum buffers by parameter name (also for parameters that leave it and
  come back later). `engine.forget_optimizer_state(params)` drops the state of re-initialised or replaced
  parameters. (Setting `requires_grad` by hand and calling `engine.rebuild_optimizer()` still works, outside
  this bookkeeping.)
- the batch: `engine.x`, `engine.y` in before_batch (e.g. new labels); `engine.loss` in after_loss.
- whether a batch ends in an optimizer step: `engine.accumulating = True` (in before_batch, or after_loss) keeps its
  gradients for the next batch to add to: no zero_grad, no step, no before_step/after_step. `--accumulate N`
  (`cfg.accumulate`) sets it on all but the last batch of every N (the epoch's last group may be shorter), scales each
  batch's loss by 1/(group size) for the backward (`engine.loss` stays the batch's own), runs the accumulating batches
  under DDP's `no_sync()`, and takes the LR schedule's progress at the group's first batch, so N batches of B follow
  the schedule of one batch of N·B (under a budget the progress is time, as always). A SkipBatch on a group's last
  batch carries the group's gradients into the next group; an epoch's unfinished group (a budget stop) is dropped.
- weights: write into modules under `torch.no_grad()`.
- input resolution: `engine.image_size`; the LR schedule: `engine.schedule`; the run's length (in
  before_fit): `engine.set_epochs(n)`.
- extra passes over data: iterate `engine.batches(data, train=False)`; exclude evaluation-only work
  from the clock with `with engine.untimed():` (in any hook, before_fit included).
- what the training forward runs and on which data: `engine.set_net(module)`, `engine.train_data`,
  and what evaluation runs on: `engine.val_data`, `engine.test_data` (e.g. cached features).
- a model before epoch 1 (a closed-form head): `engine.offer_model(info)` scores the current weights on
  validation (off the clock) and logs them as epoch 0, eligible as the best epoch like any other.
- time: `engine.elapsed()` is the training time so far; under a budget, `engine.epoch_end_reserve` is the
  time a strategy expects its after_epoch work to take this epoch (the budget stop keeps it free).
"""
from __future__ import annotations

import difflib
import random
import zlib
from typing import Any

import numpy as np
import torch

from .errors import FastRetrainError

EVENTS = (
    "before_fit", "before_epoch", "before_batch", "after_loss", "before_step", "after_step", "after_epoch",
    "after_eval", "after_fit",
)
RECORD_EVENTS = ("after_setup", "after_batch", "after_log", "after_summary")


class SkipBatch(Exception):
    """Raise in a batch hook to skip the rest of this batch (no step)."""


class StopFit(Exception):
    """Raise in any hook to end training after the current epoch's bookkeeping."""


class Strategy:
    """Base class of everything that changes training. Override hooks; keep state in `state_dict`."""

    order: int = 0  # lower runs first
    name: str = ""  # the method name it is registered under
    # methods this one cannot run with, and why (method name -> reason): `--method` with both is refused in one line
    # when the strategies are built (methods.check_conflicts); declared on either side
    conflicts: dict[str, str] = {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def seed_from(*parts) -> int:
    """A 32-bit seed derived from `parts` (e.g. the run seed, an epoch, a tag): the same parts, the same seed."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def check_hooks(strategy) -> None:
    """Refuse a strategy with a public `before_*` / `after_*` method that is not an event (a misspelt hook
    would otherwise never run), naming the closest event."""
    events = EVENTS + RECORD_EVENTS
    for name in dir(type(strategy)):
        if name.startswith(("before_", "after_")) and name not in events and callable(getattr(strategy, name, None)):
            close = difflib.get_close_matches(name, events, n=1, cutoff=0)
            raise FastRetrainError(f"{type(strategy).__name__}.{name} is not an engine event (did you mean "
                                   f"{close[0]}?); events: {', '.join(events)}")


def seed_everything(seed: int) -> None:
    """Seed torch's, Python's and NumPy's global generators (the engine does so at every epoch)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
