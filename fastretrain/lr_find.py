"""`fastretrain lr-find`: the learning-rate range test (Smith, "Cyclical Learning Rates for Training Neural Networks",
WACV 2017, §3.3; as fastai's `Learner.lr_find`).

Training runs, through the engine and with the run's method, data, model and settings, for at most `steps` steps
while the LR grows exponentially from `start_lr` to `end_lr`; the loss of every step is smoothed (an exponential
moving average, bias-corrected, with fastai's β = 0.98 from 100 steps on and 1 - 2/steps below) and the sweep
stops early once the smoothed loss exceeds 4x its minimum or is not finite (the loss diverged). The model's weights
(and which of them train) are then put back as they were. It suggests the LR of the steepest descent of the
smoothed loss (before its minimum), and reports the LR at the minimum divided by 10 (fastai's two classic rules);
both skip the first tenth of the sweep (the average has seen few losses there) and the point that diverged, and lie
in the swept range. The plot shows the raw and smoothed loss against the LR, log scale, with both marked.

What the sweep does not use of the config: the LR and schedule (it sets them), the epochs and --budget (its length
is `steps`), --patience and --ema (no evaluation happens) and the run folder (it writes only the plot).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .engine import StopFit, Strategy
from .errors import FastRetrainError
from .run import build_engine

BETA = 0.98  # smoothing of the loss (fastai's, for its 100 steps); shorter sweeps smooth less (`beta_for`)
DIVERGED = 4.0  # the sweep stops once the smoothed loss exceeds this many times its minimum (fastai's)
MAX_STEPS = 500  # a few hundred steps at most
# config fields the sweep replaces or does not use (named in one note when given on the command line)
UNUSED = ("lr", "schedule", "epochs", "budget", "patience", "ema", "out", "resume", "save_checkpoint", "save_weights",
          "test_eval", "overwrite")


def sweep_lr(step: int, steps: int, start_lr: float, end_lr: float) -> float:
    """The LR of 0-based `step` of an exponential sweep from start_lr (step 0) to end_lr (step steps - 1)."""
    return start_lr * (end_lr / start_lr) ** (step / max(steps - 1, 1))


def beta_for(steps: int) -> float:
    """The smoothing of a sweep of `steps` steps: fastai's 0.98 from 100 steps on; below, 1 - 2/steps, so that the
    average spans about half the sweep at most (0.98 would average a 20-step sweep into one flat line)."""
    return min(BETA, 1 - 2 / steps)


def smooth(losses: list[float], beta: float = BETA) -> list[float]:
    """Bias-corrected exponential moving average of `losses` (fastai's `SmoothenValue`)."""
    out, avg = [], 0.0
    for i, v in enumerate(losses):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest(lrs: list[float], smoothed: list[float], skip: int = 0) -> dict[str, float | None]:
    """{'steep': LR of the steepest descent of the smoothed loss before its minimum (None when the loss never
    fell), 'min_div10': the LR at the minimum / 10, clipped to the swept range, 'suggested': steep, else min_div10}.
    The first `skip` points (where the average has seen few losses; fastai skips a tenth) are not candidates."""
    lr, s = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    i_min = skip + int(np.argmin(s[skip:]))
    min_div10 = float(np.clip(lr[i_min] / 10, lr[0], lr[-1]))
    steep = None
    if i_min > skip:  # the loss fell somewhere: the steepest point of the way down
        slope = np.gradient(s[skip:], np.log(lr[skip:]))[: i_min - skip]  # d loss / d log LR (central differences)
        if slope.min() < 0:
            steep = float(lr[skip + int(np.argmin(slope))])
    return {"steep": steep, "min_div10": min_div10, "suggested": steep if steep is not None else min_div10}


@dataclass
class LRSweep(Strategy):
    """The range test as a strategy: the engine's LR schedule becomes the exponential sweep, every step's loss is
    recorded, and training stops after `steps` steps or once the smoothed loss diverges. Nothing is evaluated."""

    order = 9_500  # last: its schedule replaces any method's, and it records the loss after every after_loss
    start_lr: float = 1e-7
    end_lr: float = 10.0
    steps: int = 100

    def __post_init__(self) -> None:
        checks = [
            (self.start_lr > 0, f"--start-lr must be > 0, got {self.start_lr}"),
            (self.end_lr > self.start_lr, f"--end-lr must be above --start-lr ({self.start_lr}), got {self.end_lr}"),
            (5 <= self.steps <= MAX_STEPS, f"--steps must be in [5, {MAX_STEPS}], got {self.steps}"),
        ]
        for ok, message in checks:
            if not ok:
                raise FastRetrainError(message)
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.stopped = "steps"  # why the sweep ended: steps, diverged, or not finite

    def before_fit(self, engine) -> None:
        engine.val_data = engine.test_data = None  # the sweep scores nothing
        per_epoch = engine.num_batches()
        engine.set_epochs(math.ceil(self.steps / per_epoch))
        base = engine.cfg.lr  # the engine's LR is cfg.lr times the schedule's multiplier at epoch progress t

        def schedule(t: float) -> float:
            return sweep_lr(round(t * per_epoch), self.steps, self.start_lr, self.end_lr) / base

        engine.schedule = schedule

    def after_loss(self, engine) -> None:
        loss = float(engine.loss.detach())
        self.lrs.append(engine.lr)
        self.losses.append(loss)
        if not math.isfinite(loss):
            self.stopped = "not finite"
            raise StopFit
        self.smoothed = smooth(self.losses, beta_for(self.steps))
        if self.smoothed[-1] > DIVERGED * min(self.smoothed):
            self.stopped = "diverged"
            raise StopFit
        if len(self.losses) >= self.steps:
            raise StopFit  # this step's loss is recorded; its update is not needed


def lr_find(cfg: TrainConfig, bundle=None, module: torch.nn.Module | None = None, strategies=None,
            start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100, plot: str | Path | None = "lr_find.png",
            ) -> dict[str, Any]:  # fmt: skip
    """Run the LR range test for the training `cfg` describes; return the sweep and the suggestion.

    Args:
        bundle, module, strategies: as for `build_engine` (a given module's weights are restored afterwards).
        plot: where to write the PNG (None: no plot).
    Returns: {'lrs', 'losses', 'smoothed', 'beta', 'steep', 'min_div10', 'suggested', 'stopped', 'steps', 'plot'}.
    """
    sweep = LRSweep(start_lr, end_lr, steps)  # bad sweep options fail before data and model load
    cfg = dataclasses.replace(cfg, out=None, resume=False, budget=None, patience=None, ema=None, progress=False,
                              save_checkpoint=False, save_weights=False)
    engine = build_engine(cfg, bundle, module, list(strategies or []) + [sweep])
    model = engine.model
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    try:
        engine.fit()
    finally:  # the weights come back also when the sweep fails
        with torch.no_grad():
            model.load_state_dict(weights)
        for n, p in model.named_parameters():
            p.requires_grad_(trainable[n])
        model.train(was_training)
    if len(sweep.losses) < 5:
        raise FastRetrainError(f"lr-find: only {len(sweep.losses)} training steps ran (the method ended training "
                               "early, or the data gives too few batches); nothing to suggest")
    # the last point of a diverged or non-finite sweep is past the edge: it stays in the record, not in the choice
    keep = len(sweep.losses) - (sweep.stopped != "steps")
    beta = beta_for(steps)
    smoothed = smooth(sweep.losses[:keep], beta)
    result = {"lrs": sweep.lrs, "losses": sweep.losses, "smoothed": smoothed, "stopped": sweep.stopped,
              "steps": len(sweep.losses), "start_lr": start_lr, "end_lr": end_lr, "beta": beta, "plot": None,
              **suggest(sweep.lrs[:keep], smoothed, skip=keep // 10)}
    if plot is not None:
        result["plot"] = str(plot_sweep(result, Path(plot), f"{cfg.model} on {engine.data.name}, {cfg.method}"))
    return result


def plot_sweep(result: dict[str, Any], path: Path, title: str) -> Path:
    """Raw and smoothed loss against the LR (log scale), the suggestions marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    n = len(result["smoothed"])
    ax.plot(result["lrs"], result["losses"], color="0.75", lw=0.8, label="loss per step")
    smoothed = f"smoothed (EMA, beta {result['beta']:.3g})"
    ax.plot(result["lrs"][:n], result["smoothed"], color="C0", lw=1.6, label=smoothed)
    if result["steep"] is not None:
        ax.axvline(result["steep"], color="C3", ls="--", lw=1, label=f"steepest descent {result['steep']:.2g}")
    ax.axvline(result["min_div10"], color="C2", ls=":", lw=1.2, label=f"minimum / 10 {result['min_div10']:.2g}")
    ax.set_xscale("log")
    top = max(result["smoothed"][:3] + [min(result["smoothed"]) * DIVERGED * 1.05])
    finite = [v for v in result["losses"] if math.isfinite(v)]
    ax.set_ylim(min(finite + result["smoothed"]) * 0.95, top)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test: {title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def report(result: dict[str, Any]) -> str:
    """The lines `fastretrain lr-find` prints."""
    why = {"steps": "all steps ran", "diverged": f"stopped: the smoothed loss passed {DIVERGED:g}x its minimum",
           "not finite": "stopped: the loss was not finite"}[result["stopped"]]
    lines = [f"swept LR {result['start_lr']:.2g} .. {result['lrs'][-1]:.3g} over {result['steps']} steps ({why})"]
    if result["steep"] is not None:
        lines.append(f"steepest descent of the smoothed loss: {result['steep']:.3g}")
    else:
        lines.append("the smoothed loss never fell below its start: the sweep may be too short (--steps) or start "
                     "too high (--start-lr)")
    lines.append(f"minimum of the smoothed loss / 10: {result['min_div10']:.3g}")
    lines.append(f"suggested LR: {result['suggested']:.3g}  (train with --lr {result['suggested']:.2g})")
    if result["plot"]:
        lines.append(f"plot: {result['plot']}")
    return "\n".join(lines)
