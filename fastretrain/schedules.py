"""Learning-rate schedules as pure functions of training progress.

Each schedule maps `t`, the fraction of the run done (0 at the first step, 1 at the end), to a
multiplier of the base learning rate. A spec string names one:

- ``constant``
- ``cosine`` — half cosine from 1 to 0.
- ``onecycle`` — linear warm-up over the first 25% to 1, then cosine to ~0 (as fastai's fit_one_cycle).
- ``step:3,6`` — ×0.1 at each listed epoch.
- ``piecewise:1x3,0.1x3,0.01x2`` — multiplier × epochs, stretched to the run's epoch count.
- ``cyclic:P`` — cosine with warm restarts every P epochs (SGDR with a fixed period).
"""
from __future__ import annotations

import math

from .errors import FastRetrainError

SCHEDULES = ("constant", "cosine", "onecycle", "step", "piecewise", "cyclic")


def cosine(t: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def onecycle(t: float, pct_start: float = 0.25) -> float:
    if t < pct_start:
        return 0.04 + 0.96 * t / pct_start  # from lr/25, as torch's OneCycleLR
    return cosine((t - pct_start) / (1 - pct_start)) * (1 - 1e-4) + 1e-4


def piecewise(t: float, pieces: list[tuple[float, float]]) -> float:
    """pieces: (multiplier, length) with lengths in any unit; stretched to cover t in [0, 1]."""
    total = sum(length for _, length in pieces)
    edge = 0.0
    for mult, length in pieces:
        edge += length / total
        if t < edge - 1e-12:
            return mult
    return pieces[-1][0]


def cyclic(epoch_float: float, period: float) -> float:
    return cosine((epoch_float % period) / period)


def parse_schedule(spec: str, epochs: int):
    """Return f(epoch_float) -> multiplier for a spec string (see module doc)."""
    name, _, arg = spec.partition(":")
    try:
        if name == "constant":
            return lambda e: 1.0
        if name == "cosine":
            return lambda e: cosine(e / epochs)
        if name == "onecycle":
            return lambda e: onecycle(e / epochs)
        if name == "step":
            marks = [float(m) for m in arg.split(",") if m]
            return lambda e: 0.1 ** sum(e >= m for m in marks)
        if name == "piecewise":
            pieces = [tuple(float(v) for v in p.split("x")) for p in arg.split(",")]
            if not pieces or any(len(p) != 2 for p in pieces):
                raise ValueError
            return lambda e: piecewise(e / epochs, pieces)
        if name == "cyclic":
            period = float(arg) if arg else max(epochs / 4, 1)
            return lambda e: cyclic(e, period)
    except ValueError:
        pass
    else:
        raise FastRetrainError(f"unknown LR schedule {spec!r}; choose from {', '.join(SCHEDULES)}")
    raise FastRetrainError(f"malformed LR schedule {spec!r} (see `fastretrain train --help`)")
