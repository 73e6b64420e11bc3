"""Comparison protocol v3 (../shared/METHODS.md §6): what a user gets in the time they have.

Pure functions over finished runs (their metrics.jsonl histories and summaries); the suite that runs the cells
and renders the report is `benchmarks/evidence_v3.py`.

- Delivered-model curve: a run's point at training time t is the test accuracy of the model it would return if
  stopped at t, i.e. its validation-best model so far (the engine's rule: highest val_acc, ties to the lower
  val_loss, then to the earlier; an epoch logged `eligible: false` is never chosen). A model offered before
  epoch 1 (epoch 0: a closed-form head) is on the curve because the engine can return it; the old
  `init_head_test_acc` field of runs written before that is not (those runs could never return the head).
- Equal budgets: budget k of a seed is k x the training time of that seed's SGDM run annealed to the full
  epochs (k = 1/4, 1/2, 1); SGDM annealed to 8k epochs defines the baseline at that budget; every other method's
  accuracy at budget B is its delivered curve at the last point of training time <= B x BUDGET_SLACK (a run that
  returns nothing by then delivers chance, 1/classes).
- Time to a fixed target: the mean over seeds of SGDM's full-budget delivered accuracy minus TARGET_BELOW_PT;
  per seed the first time the delivered curve reaches it (never: +inf), "k of n reached".
- Timing resolves only beyond the same-work control's spread: identical work (`control_work`) is timed before
  and after every cell; a comparison's spread is the largest over the smallest of those times, and a time ratio
  r counts as faster or slower only when r < 1/spread or r > spread, else it is "unresolved".
- Statistics: paired differences (seed k of a method against seed k of SGDM) in points, mean +- sample std, n;
  beside them the test set's binomial standard error. Fixed rules: "gain" when mean - std > 0; "no loss" when
  mean >= -NO_LOSS_MEAN_PT and mean - std >= -NO_LOSS_FLOOR_PT; otherwise "loss" when mean + std < 0 (beyond
  one paired std, as a gain) and "inconclusive" when not (no loss not shown, no loss shown either; counted as
  neither gain nor no loss, as "loss" is). A row with fewer than
  MIN_SEEDS paired seeds gets no verdict and is counted nowhere.
"""
from __future__ import annotations

import math
import time

import numpy as np

LEVELS = (0.25, 0.5, 1.0)  # budgets as fractions of SGDM's full-schedule training time
LEVEL_NAMES = {0.25: "1/4", 0.5: "1/2", 1.0: "1"}
BUDGET_SLACK = 1.05  # a budgeted run may end this far past its budget (the budget planner's promise)
TARGET_BELOW_PT = 0.5  # the fixed target: SGDM-8's mean delivered accuracy minus this many points
NO_LOSS_MEAN_PT = 0.3  # "no loss": paired mean >= -0.3 pt ...
NO_LOSS_FLOOR_PT = 1.0  # ... and mean minus one paired std >= -1.0 pt
MIN_SEEDS = 3  # every v3 rule is stated for >= 3 paired seeds


def delivered(history: list[dict]) -> list[tuple[float, float]]:
    """(training time, test accuracy of the model the run would return if stopped then), one point per scored model
    from the first that has a test accuracy; chronological."""
    best_key, acc, points = None, None, []
    for h in history:
        if h.get("eligible", True):
            key = (h["val_acc"], -h["val_loss"]) if "val_acc" in h else None
            if key is None or best_key is None or key > best_key:
                best_key, acc = key, h.get("test_acc", acc)
        if acc is not None:
            points.append((float(h["wall_seconds"]), float(acc)))
    return points


def acc_at(history: list[dict], seconds: float) -> float | None:
    """Delivered test accuracy at training time `seconds` (None: nothing delivered by then)."""
    got = [a for t, a in delivered(history) if t <= seconds + 1e-9]
    return got[-1] if got else None


def time_to(history: list[dict], target: float) -> float | None:
    """Training time at which the delivered curve first reaches `target` (None: never)."""
    return next((t for t, a in delivered(history) if a >= target - 1e-12), None)


def mean_curve(histories: list[list[dict]], grid) -> list[float]:
    """The seeds' mean delivered accuracy at each time of `grid` (NaN where some seed has delivered nothing yet)."""
    out = []
    for t in grid:
        vals = [acc_at(h, t) for h in histories]
        out.append(float(np.mean(vals)) if all(v is not None for v in vals) else float("nan"))
    return out


def time_ratio(t: float | None, base: float | None) -> float | None:
    """One seed's time-to-target ratio to the baseline, never being infinite time: reached where the baseline never
    did is 0, never where the baseline did is inf, neither reached gives no ratio (None)."""
    if t is None and base is None:
        return None
    return 0.0 if base is None else math.inf if t is None else t / base


def final(history: list[dict]) -> float | None:
    points = delivered(history)
    return points[-1][1] if points else None


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1; NaN for one value) of a non-empty list."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan


def binomial_se_pt(acc: float, n_test: int) -> float:
    """The test set's binomial standard error of an accuracy near `acc`, in points."""
    return 100 * math.sqrt(max(acc * (1 - acc), 0.0) / max(n_test, 1))


def verdict(diffs: list[float]) -> str | None:
    """The fixed rule on paired differences in points: 'gain', 'no loss', 'inconclusive' or 'loss'; None below
    MIN_SEEDS. 'inconclusive' and 'loss' both fail "no loss"; they differ only in what the report says."""
    if len(diffs) < MIN_SEEDS:
        return None
    m, s = mean_std(diffs)
    if m - s > 0:
        return "gain"
    if m >= -NO_LOSS_MEAN_PT and m - s >= -NO_LOSS_FLOOR_PT:
        return "no loss"
    return "loss" if m + s < 0 else "inconclusive"


def spread(control_seconds: list[float]) -> float | None:
    """The same-work control's spread: largest over smallest time (None without two measurements)."""
    xs = [x for x in control_seconds if x and x > 0]
    return max(xs) / min(xs) if len(xs) >= 2 else None


def too_few_pairs(pairs: int) -> str:
    """A time-to-target row with fewer seed pairs holding a time ratio than MIN_SEEDS: no timing verdict."""
    return f"{pairs} timed pair{'' if pairs == 1 else 's'}: needs {MIN_SEEDS}"


def resolved(ratio: float | None, spread_: float | None) -> str:
    """'faster' / 'slower' when the time ratio lies outside the control's spread, else 'unresolved'."""
    if ratio is None or spread_ is None or math.isinf(ratio) or math.isnan(ratio):
        return "unresolved" if ratio is not None and not math.isinf(ratio) else "never"
    if ratio < 1 / spread_:
        return "faster"
    if ratio > spread_:
        return "slower"
    return "unresolved"


def control_work(repeats: int = 3) -> float:
    """Seconds of a fixed CPU workload (the same in every cell: float32 matrix products on the run's threads);
    the median of `repeats` timings. Its spread across a comparison's cells is the timing noise."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(384, 768, generator=gen), torch.randn(768, 768, generator=gen)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up (a process's first products start its thread pool)
        t = time.perf_counter()
        for _ in range(60):
            a = torch.tanh(a @ b * 0.03)
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))
