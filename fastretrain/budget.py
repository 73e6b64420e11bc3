"""The time-budget planner (`cfg.budget`, docs/budget.md): how many epochs, how long each, and when to stop.

The LR schedule's progress is elapsed training time over the budget (the engine's `_set_lr`), so it ends when the
budget does. The epochs are planned from the measured step cost after the first steps and again after every
epoch (`cfg.epochs` is only the first plan); when fewer than 4 epochs fit, an epoch is shortened to a quarter of
the steps that fit (`engine.max_batches`), so validation scores at least 4 models; a step that would end past the
budget (with the strategies' `engine.epoch_end_reserve`) is not started. Under DDP the ranks plan from averaged
timings and stop together. The engine keeps the clock (`engine.elapsed()`); these functions read it and the
engine's public surface, and change only `engine.max_batches` and the planned epochs (`engine.set_epochs`).
"""
from __future__ import annotations

import math

import torch

from . import distributed as dist


def agreed(device: torch.device, *values: float) -> list[float]:
    """`values` averaged over ranks (identical on every rank, so every rank plans and stops alike)."""
    if dist.world() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    return (dist.all_reduce_sum(t) / dist.world()).tolist()


def stop_before_step(engine, loop0: float) -> tuple[bool, float]:
    """Before batch `engine.iter`: plan after the first steps; (whether the next step would end past the budget,
    with the strategies' after_epoch reserve; the training time the ranks agreed on). `loop0` is the elapsed time
    when this epoch's steps started; the step cost is this epoch's mean so far."""
    steps = engine.iter
    now, step = agreed(engine.device, engine.elapsed(), (engine.elapsed() - loop0) / max(steps, 1))
    if steps == 0:  # the first epoch always trains; a later one starts only if time is left after its setup
        return bool(engine.history) and now + engine.epoch_end_reserve >= engine.budget, now
    if engine.epoch == engine.start_epoch and steps == min(4, engine.num_batches() - 1):
        plan(engine, now, step, first=True)
    return now + step + engine.epoch_end_reserve > engine.budget, now


def plan(engine, now: float, step: float, first: bool = False, epoch_cost: float | None = None) -> None:
    """Set the planned epochs (and, when fewer than 4 would be scored, shorter epochs) from measured costs."""
    left = max(engine.budget - now, 0.0)
    nb = engine.num_batches()
    if first:
        done = engine.iter  # steps of this (first) epoch done
        fit = done + left / max(step, 1e-9)  # steps that fit in the whole run from here on
        evaluations = len(engine.history)  # models scored so far (a head offered as epoch 0 counts)
        if fit < 4 * nb and engine.val_data is not None:  # fewer than 4 epochs fit: shorter ones, >= 4 scores
            engine.max_batches = max(1, math.ceil(fit / max(4 - evaluations, 1)))
        per = min(nb, engine.max_batches or nb)
        epochs = engine.epoch + max(1, math.ceil(fit / per))
    else:
        epochs = engine.epoch + 1 + math.ceil(left / max(epoch_cost, 1e-9))
    if epochs != engine.cfg.epochs:
        engine.set_epochs(max(epochs, engine.epoch + 1))


def continues(engine) -> bool:
    """After an epoch under a budget: re-plan from that epoch's cost; whether another epoch starts (at least a
    few steps' worth of time is left)."""
    last = engine.history[-1]
    nb = engine.num_batches()
    step = last["epoch_seconds"] / max(1, min(nb, engine.max_batches or nb))
    now, cost, step = agreed(engine.device, engine.wall_seconds, last["epoch_seconds"], step)
    if engine.budget - now < 2 * step:
        return False
    plan(engine, now, step, epoch_cost=cost)
    return True
