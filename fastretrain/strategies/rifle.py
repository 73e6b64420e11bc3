"""RIFLE: re-initialise the final fully connected layer periodically during fine-tuning.

Li et al., "RIFLE: Backpropagation in Depth for Deep Transfer Learning through Re-Initializing the
Fully-connected LayEr" (ICML 2020, arXiv 2007.03349). A freshly initialised head produces large,
fresh errors, so each reset pushes larger gradients deep into the backbone ("backpropagation in
depth"); the last part of the run has no reset so the head converges.

Schedule: resets at training progress b_k = k·period epochs, k = 1..resets. *Default*: period =
E/4 and three resets (at E/4, E/2, 3E/4), so the last quarter of the run is the settle window. A
reset at boundary b happens right before the first training step at progress ≥ b: for an integer b
that is after epoch b and its evaluation (the logged accuracy of epoch b is the trained head's), before
epoch b+1 trains. Fractional boundaries (e.g. period 2.5) reset mid-epoch at the first batch past b.

Re-initialisation: each head module's own `reset_parameters()` (nn.Linear: Kaiming-uniform weight,
uniform bias), run on a CPU copy under a seed drawn from `engine.rng("rifle")`, then copied in place.
The draw is therefore identical on every DDP rank, on CPU and GPU, and across a resume; the
parameters stay the same objects, so the optimizer and the DDP wrapper need no rebuild.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..engine import Strategy
from ..errors import FastRetrainError
from ..methods import check_options, register_method
from ..models import classifier

SETTLE = 0.25  # fraction of the run at its end kept free of resets (the head converges there)


def reset_boundaries(epochs: int, resets: int | None = None, period: float | None = None) -> list[float]:
    """Progress points (in epochs) at which the head is re-initialised.

    Args:
        epochs: the run's length E.
        resets: how many resets; with `period` unset they are spread evenly over the first 3E/4.
        period: epochs between resets; with `resets` unset every multiple of it up to 3E/4.
    """
    if resets is not None and resets < 0:
        raise FastRetrainError(f"rifle.resets must be >= 0, got {resets}")
    if period is not None and period <= 0:
        raise FastRetrainError(f"rifle.period must be > 0 epochs, got {period}")
    last = (1 - SETTLE) * epochs  # no reset after this point
    if period is None:
        n = 3 if resets is None else resets
        if n == 0:
            return []
        period = last / n
        return [k * period for k in range(1, n + 1)]
    if resets is None:
        n = int(last / period + 1e-9)
    else:
        n = resets
        if n * period >= epochs - 1e-9:
            raise FastRetrainError(
                f"rifle: {n} resets every {period} epochs reach epoch {n * period:g}, not before the end of the "
                f"{epochs}-epoch run; lower rifle.resets or rifle.period"
            )
    return [k * period for k in range(1, n + 1)]


@torch.no_grad()
def reinit_(module: nn.Module, generator: torch.Generator, weight_only: bool = False) -> None:
    """Re-initialise `module` in place with its own initialiser(s), seeded from `generator`.

    Every submodule with `reset_parameters` (the module itself included) is reset; the fresh values
    are drawn on the CPU (device-independent) and copied into the existing parameters.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    fresh = copy.deepcopy(module).to("cpu", torch.float32)
    resettable = [m for m in fresh.modules() if callable(getattr(m, "reset_parameters", None))]
    if not resettable:
        raise FastRetrainError(f"rifle: {type(module).__name__} has no reset_parameters(); name another head module")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in resettable:
            m.reset_parameters()
    for (name, p), q in zip(module.named_parameters(), fresh.parameters()):
        if weight_only and name.rsplit(".", 1)[-1] != "weight":
            continue
        p.copy_(q)


@dataclass
class Rifle(Strategy):
    """Periodic re-initialisation of the final FC layer (RIFLE)."""

    resets: int | None = None  # number of resets (default 3, or as many as `period` fits before 3E/4)
    period: float | None = None  # epochs between resets (default: E/4, or 3E/4 / resets)
    weight_only: bool = False  # re-initialise only weights, keep biases
    modules: str | list[str] | None = None  # head module name(s), comma separated (default: the final FC layer)
    reset_optimizer_state: bool = False  # also clear the head's momentum / Adam state at each reset

    order = 50  # after strategies that change the trainable set at an epoch start

    def __post_init__(self):
        check_options("rifle", [
            (self.resets is None or self.resets >= 0, f"resets must be >= 0, got {self.resets}"),
            (self.period is None or self.period > 0, f"period must be > 0 epochs, got {self.period}"),
        ])
        self.done = 0  # resets performed so far (checkpointed)
        self.history: list[tuple[int, int]] = []  # (epoch, iter) of each reset, this process only

    def before_fit(self, engine) -> None:
        self.boundaries = reset_boundaries(engine.cfg.epochs, self.resets, self.period)
        self.heads = self._heads(engine.model)

    def _heads(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        if not self.modules:
            head = classifier(model)
            return [(next(n for n, m in model.named_modules() if m is head), head)]
        names = self.modules.split(",") if isinstance(self.modules, str) else list(self.modules)
        found = dict(model.named_modules())
        out = []
        for n in (n.strip() for n in names):
            if n not in found:
                close = [k for k in found if k.endswith(n.split(".")[-1])][:5]
                raise FastRetrainError(f"rifle.modules: {type(model).__name__} has no module {n!r}" + (f"; similar: {', '.join(close)}" if close else ""))
            out.append((n, found[n]))
        return out

    def before_batch(self, engine) -> None:
        progress = engine.epoch + engine.iter / max(engine.num_batches(), 1)  # epochs done before this step
        while self.done < len(self.boundaries) and progress >= self.boundaries[self.done] - 1e-9:
            self.reset(engine)

    def reset(self, engine) -> None:
        """Re-initialise the head modules now (one seeded draw per module)."""
        gen = engine.rng("rifle")  # identical on every rank
        for _, m in self.heads:
            reinit_(m, gen, self.weight_only)
        if self.reset_optimizer_state:
            engine.forget_optimizer_state([m for _, m in self.heads])
        self.done += 1
        self.history.append((engine.epoch, engine.iter))
        engine.log["rifle_resets"] = engine.log.get("rifle_resets", 0) + 1

    def state_dict(self):
        return {"done": self.done}

    def load_state_dict(self, state):
        self.done = int(state.get("done", 0))


register_method("rifle", Rifle, help="re-initialise the final FC layer every E/4 epochs, none in the last quarter (RIFLE)")
