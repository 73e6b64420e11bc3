"""Random layer freezing (stage 1 of fast retraining; Zhang, Yang et al., IEEE T-Cybernetics 2024;
docs/fast_retrain.md), with a bottom-block policy that makes freezing cut the backward pass (issue 13).

Every epoch e has a trainable ratio r(e) (default `[1, 1, .75, .75, .5, .5, .25, .25]`, stretched
piecewise-constantly over the run's epochs). At the start of the epoch k ≈ N_conv·(1 − r) of the model's
N_conv conv layers (depthwise included) are frozen for that epoch, drawn from the run's seeded generator
(`engine.rng("random-freeze")`, so a run is reproducible and a resumed run redraws the same set):

- policy `"bottom"` (default): the first k convs in execution order, a contiguous bottom block. Its depth
  is drawn per epoch, k = round(N_conv·(1 − r)) + u with u uniform on {−w, …, w}, w = round(depth_jitter ·
  N_conv) narrowed so that k stays in [0, N_conv]: the expected trainable fraction is exactly the schedule's.
- policy `"uniform"` (the authors'): round(N_conv·(1 − r)) convs drawn uniformly without replacement.

Frozen means held frozen through `engine.set_trainable` (requires_grad off), which rebuilds the optimizer without
them (no weight decay, no momentum step; their momentum buffers are kept by name for when they thaw) and the DDP
wrapper; another method's thaw (freeze-unfreeze's) does not release this method's hold.

Where the saving comes from: a frozen conv's weight-gradient GEMM disappears, and everything that runs
before the lowest trainable conv (in execution order, traced once) needs no backward pass at all. So every
parameter in that prefix is frozen too (the stem, batch-norm affine parameters, anything else: one
trainable parameter down there and autograd walks to the input), counted in the log as
`frozen_prefix_params`, and the prefix runs with autograd switched off (a forward pre-hook on the model
turns grad mode off, one on the lowest trainable conv turns it back on, a forward hook restores it), so no
graph is recorded and no activations are kept for it. Running statistics still update in train mode.
Every BN layer above the prefix and the FC head always train. With `bn_stats="frozen"` every BN layer
normalises with its pretrained running statistics throughout (eval mode, set before every batch; its affine
parameters still train where they are not frozen). Why it exists: on Fashion-MNIST at 96 px (Lite0),
re-estimating the statistics on the target images alone turns a 0.841 ridge head into a 0.325 one, which is
most of what epoch 1 of SGD does to the ridge head; why it is off: at LR 0.01 training with frozen statistics
collapsed to chance in a pilot (benchmarks/results/fast_retrain/pilots/). With the uniform draw the prefix is
usually empty (the first k convs are all frozen with probability ≈ (1 − r)^k): the saving is then only
the frozen layers' weight gradients (measured: benchmarks/results/fast_retrain/step_cost).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..engine import Strategy
from ..errors import FastRetrainError
from ..methods import check_options, register_method
from ..models import conv_layers

DEFAULT_RATIOS = [1.0, 1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25]
POLICIES = ("bottom", "uniform")
BN_STATS = ("train", "frozen")


def ratio_for_epoch(ratios, epoch: int, epochs: int) -> float:
    """Trainable ratio of 0-based `epoch`: a list stretched piecewise-constantly over `epochs`, or a
    callable f(epoch, epochs)."""
    if callable(ratios):
        r = float(ratios(epoch, epochs))
    else:
        ratios = list(ratios)
        r = float(ratios[min(epoch * len(ratios) // max(epochs, 1), len(ratios) - 1)])
    if not 0.0 <= r <= 1.0:
        raise FastRetrainError(f"random-freeze: trainable ratio must be in [0, 1], got {r} for epoch {epoch + 1}")
    return r


def num_frozen(n_conv: int, ratio: float) -> int:
    """round(n_conv · (1 − ratio)), halves rounded up."""
    return int(math.floor(n_conv * (1.0 - ratio) + 0.5 + 1e-9))


def draw_frozen(n_conv: int, ratio: float, generator: torch.Generator) -> list[int]:
    """Indices (sorted) of the convs to freeze: uniform without replacement."""
    k = num_frozen(n_conv, ratio)
    return sorted(torch.randperm(n_conv, generator=generator)[:k].tolist())


def draw_depth(n_conv: int, ratio: float, generator: torch.Generator, jitter: float) -> int:
    """Depth k of the frozen bottom block: round(n_conv·(1 − ratio)) + u, u uniform on {−w, …, w}.

    w = round(jitter · n_conv), narrowed to keep k in [0, n_conv], so E[k] is exactly the rounded count.
    """
    k = num_frozen(n_conv, ratio)
    w = min(int(round(jitter * n_conv)), k, n_conv - k)
    return k + (int(torch.randint(-w, w + 1, (1,), generator=generator)) if w else 0)


@torch.no_grad()
def execution_order(model: nn.Module, image_size: int, device) -> list[str]:
    """Names of the modules that own parameters, in the order a forward pass first calls them.

    Traced with one 2-image forward in eval mode (running statistics untouched). Modules never called
    are appended in registration order.
    """
    owners = {m: n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    order: list[str] = []

    def record(mod, args):
        if owners[mod] not in order:
            order.append(owners[mod])

    handles = [m.register_forward_pre_hook(record) for m in owners]
    was = model.training
    model.eval()
    try:
        model(torch.zeros(2, 3, image_size, image_size, device=device))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return order + [n for n in owners.values() if n not in order]


class _NoGradPrefix:
    """Runs every module before `boundary` with autograd off, inside each forward of `root`."""

    def __init__(self, root: nn.Module, boundary: nn.Module):
        self.saved: bool | None = None  # grad mode at the start of the current forward; None outside one
        self.handles = [
            root.register_forward_pre_hook(self._start),
            boundary.register_forward_pre_hook(self._resume),
            root.register_forward_hook(self._end),
        ]

    def _start(self, module, args):
        self.saved = torch.is_grad_enabled()
        torch.set_grad_enabled(False)

    def _resume(self, module, args):
        if self.saved is not None:
            torch.set_grad_enabled(self.saved)
            self.saved = None

    def _end(self, module, args, output):
        self._resume(module, args)

    def close(self) -> None:
        self._resume(None, None)  # a forward that raised leaves grad mode switched off: restore it
        for h in self.handles:
            h.remove()
        self.handles = []


def _own_params(module_name: str, module: nn.Module) -> list[str]:
    """Names (in the model) of the module's own parameters."""
    return [f"{module_name}.{pn}" if module_name else pn for pn, _ in module.named_parameters(recurse=False)]


@dataclass
class RandomFreeze(Strategy):
    order = -10  # decides the trainable set before strategies that read it
    # trainable ratio per epoch, stretched over the run (or a callable f(epoch, epochs))
    ratios: tuple[float, ...] | list[float] | Callable[[int, int], float] = tuple(DEFAULT_RATIOS)
    policy: str = "bottom"  # "bottom": a contiguous bottom block of drawn depth; "uniform": the authors' draw
    depth_jitter: float = 0.1  # bottom policy: the depth varies by up to ± this fraction of the convs
    no_grad_prefix: bool = True  # run layers below the lowest trainable conv without autograd
    bn_eval_frozen: bool = False  # keep the BN right after each frozen conv in eval mode (running stats fixed)
    bn_stats: str = "train"  # "frozen": every BN layer normalises with its pretrained running statistics

    def __post_init__(self):
        if isinstance(self.ratios, (int, float)):  # -o random-freeze.ratios=0.5
            self.ratios = (float(self.ratios),)
        ratios_ok = callable(self.ratios) or (len(self.ratios) > 0 and all(0.0 <= float(r) <= 1.0 for r in self.ratios))
        check_options("random-freeze", [
            (self.policy in POLICIES, f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}"),
            (0.0 <= self.depth_jitter <= 0.5, f"depth_jitter must be in [0, 0.5], got {self.depth_jitter}"),
            (ratios_ok, f"ratios must be trainable ratios in [0, 1], got {self.ratios!r}"),
            (self.bn_stats in BN_STATS, f"bn_stats must be one of {', '.join(BN_STATS)}, got {self.bn_stats!r}"),
        ])
        self.frozen: list[str] = []  # conv names frozen this epoch (kept for resume/inspection)
        self.touched: list[str] = []  # names of the parameters this strategy holds frozen this epoch
        self._convs: list[tuple[str, nn.Conv2d]] = []
        self._order: list[str] = []
        self._prefix: _NoGradPrefix | None = None
        self._bn_eval: list[nn.Module] = []
        self._bn_all: list[nn.Module] = []

    def before_fit(self, engine) -> None:
        self._convs = conv_layers(engine.model)
        if not self._convs:
            raise FastRetrainError("random-freeze: the model has no nn.Conv2d layers to freeze")
        self._order = execution_order(engine.model, engine.image_size, engine.device)
        names = {n for n, _ in self._convs}
        self._bottom_up = [n for n in self._order if n in names]  # convs in execution order
        if self.bn_stats == "frozen":
            self._bn_all = [m for m in engine.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def before_epoch(self, engine) -> None:
        if not self._convs:
            self.before_fit(engine)
        model = engine.model
        self._release_hooks(model)
        ratio = ratio_for_epoch(self.ratios, engine.epoch, engine.cfg.epochs)
        n, gen = len(self._convs), engine.rng("random-freeze")
        if self.policy == "bottom":
            self.frozen = self._bottom_up[: draw_depth(n, ratio, gen, self.depth_jitter)]
        else:
            self.frozen = [self._convs[i][0] for i in draw_frozen(n, ratio, gen)]
        frozen = set(self.frozen)
        names = [n for name, conv in self._convs if name in frozen for n in _own_params(name, conv)]
        prefix = self._freeze_prefix(model, frozen) if self.no_grad_prefix else []
        engine.set_trainable(self, freeze=names + prefix, thaw=self.touched)  # last epoch's block thaws
        self.touched = names + prefix
        prefix_params = len(prefix)
        if self.bn_eval_frozen:
            self._set_bn_eval(model, frozen)
        engine.log.update(trainable_ratio=ratio, frozen_layers=len(self.frozen),
                          trainable_conv_fraction=1 - len(frozen) / n, frozen_prefix_params=prefix_params)

    def _release_hooks(self, model: nn.Module) -> None:
        """Undo the previous epoch's no-grad prefix and eval-mode BN layers (the frozen parameters thaw with the next
        set_trainable)."""
        if self._prefix is not None:
            self._prefix.close()
            self._prefix = None
        for m in self._bn_eval:
            m.train(model.training)
        self._bn_eval = []

    def _freeze_prefix(self, model: nn.Module, frozen: set[str]) -> list[str]:
        """Switch autograd off below the lowest trainable conv; return the names of the parameters that run there
        (outside the frozen convs), to be frozen too."""
        conv_names = {n for n, _ in self._convs}
        modules = dict(model.named_modules())
        first = next((i for i, n in enumerate(self._order) if n in conv_names and n not in frozen), None)
        if first is None:  # every conv frozen: the prefix ends at the first module of the head
            first = next((i for i, n in enumerate(self._order) if isinstance(modules[n], nn.Linear)), None)
        if not first:  # the first module already trains: no prefix
            return []
        self._prefix = _NoGradPrefix(model, modules[self._order[first]])
        return [n for name in self._order[:first] if name not in frozen for n in _own_params(name, modules[name])]

    def _set_bn_eval(self, model: nn.Module, frozen: set[str]) -> None:
        """The normalisation layer called right after each frozen conv goes to eval mode for the epoch."""
        modules = dict(model.named_modules())
        for a, b in zip(self._order, self._order[1:]):
            if a in frozen and isinstance(modules[b], nn.modules.batchnorm._BatchNorm):
                modules[b].eval()
                self._bn_eval.append(modules[b])

    def before_batch(self, engine) -> None:
        if self._prefix is not None and self._prefix.saved is not None:  # an earlier forward raised midway
            self._prefix._resume(None, None)
        for m in (*self._bn_all, *self._bn_eval):  # every batch: an evaluation in between sets train mode back
            m.eval()

    def after_fit(self, engine) -> None:
        self._release_hooks(engine.model)  # leave the model as it came: all trainable, no hooks
        engine.set_trainable(self, thaw=self.touched)
        self.touched = []

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": list(self.frozen), "touched": list(self.touched)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # the engine restores requires_grad from the checkpoint; remember what to thaw at the next epoch
        self.frozen = list(state.get("frozen", []))
        self.touched = list(state.get("touched", []))


HELP = ("each epoch freeze a bottom block of conv layers of drawn depth (policy=bottom; policy=uniform: the "
        "authors' uniform draw) so the trainable ratio follows 1,1,.75,.75,.5,.5,.25,.25; everything below the "
        "lowest trainable conv is frozen and runs without autograd")
register_method("random-freeze", RandomFreeze, help=HELP)
