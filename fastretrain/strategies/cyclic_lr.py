"""Cyclic learning rate: cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2017) with a
fixed period aligned with RIFLE's (*default* E/4 epochs, so restarts fall exactly where RIFLE's
default resets fall). One of the tricks RIFLE (Li et al. 2020) is compared against: it also injects
"fresh" large updates periodically, but through the learning rate instead of the head.

It replaces the run's LR schedule (`engine.schedule`) with `schedules.cyclic`; per-epoch LRs are in
the metrics as usual.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..engine import Strategy
from ..methods import check_options, register_method
from ..schedules import cyclic


@dataclass
class CyclicLR(Strategy):
    period: float | None = None  # epochs per cosine cycle (default: E/4, RIFLE's default period)

    order = -10  # before anything that reads the schedule

    def __post_init__(self) -> None:
        ok = self.period is None or self.period > 0
        check_options("cyclic-lr", [(ok, f"period must be > 0 epochs, got {self.period}")])

    def before_fit(self, engine) -> None:
        period = self.period if self.period is not None else engine.cfg.epochs / 4
        self.resolved_period = period
        engine.schedule = lambda e: cyclic(e, period)


register_method("cyclic-lr", CyclicLR, help="cosine LR with warm restarts every E/4 epochs, aligned with RIFLE's period (RIFLE's compared trick)")
