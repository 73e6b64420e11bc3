"""The parts of a built model that strategies work on: its conv layers, the classifier and the trailing FC head,
the batch-norm layers (and re-estimating their statistics), and the features entering a layer (`FeatureTap`).
Creating models and finding their weights is models.py.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .errors import FastRetrainError


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers of `model` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextmanager
def reestimated_batchnorm(model: nn.Module) -> Iterator[list[nn.modules.batchnorm._BatchNorm]]:
    """Inside the block every batch-norm layer of `model` with running statistics starts from reset statistics,
    runs in train mode and averages the batch statistics of the forwards in the block (momentum None); on exit
    each layer's momentum and mode are restored and the new statistics kept. Yields those layers."""
    bns = batch_norms(model)
    saved = [(m, m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the mean over all batches
        m.train()
    try:
        yield bns
    finally:
        for m, momentum, mode in saved:
            m.momentum = momentum
            m.train(mode)


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every nn.Conv2d (depthwise included), in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def classifier(model: nn.Module) -> nn.Linear:
    """The final fully connected layer."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise FastRetrainError(f"{type(model).__name__} has no nn.Linear classifier")
    return linears[-1]


def classifier_name(model: nn.Module) -> str:
    head = classifier(model)
    return next(n for n, m in model.named_modules() if m is head)


def final_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The trailing run of nn.Linear layers after the last conv (the FC head), first to last."""
    last_conv = -1
    mods = list(model.named_modules())
    for i, (_, m) in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            last_conv = i
    fcs = [(n, m) for n, m in mods[last_conv + 1 :] if isinstance(m, nn.Linear)]
    return fcs or [(classifier_name(model), classifier(model))]


class FeatureTap:
    """Captures the input of a module (e.g. the pooled features entering the classifier) on each forward."""

    def __init__(self, module: nn.Module, detach: bool = True):
        self.value: torch.Tensor | None = None
        self.detach = detach
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.value = args[0].detach() if self.detach else args[0]

    def close(self) -> None:
        self._handle.remove()


@torch.no_grad()
def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, d) features entering the classifier, for a batch of prepared images."""
    tap = FeatureTap(classifier(model))
    try:
        model(x)
    finally:
        tap.close()
    return tap.value.flatten(1)
