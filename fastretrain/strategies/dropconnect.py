"""DropConnect on the final FC layer (Wan et al., ICML 2013): one of the regularisers RIFLE
(Li et al. 2020) is compared against. At each training step every weight of the classifier is kept
with probability 1−p and the kept weights are scaled by 1/(1−p), so the expected layer is the
unmasked one; in eval mode the layer is used as it is. One mask per step, shared by the batch (the
usual efficient form; the paper's per-sample masks cost a GEMM per sample). The bias is not masked.

Implemented as a forward hook on the classifier that recomputes its output with the masked weight
(the FC layer is tiny next to the backbone), so parameter names and saved weights are unchanged. The
mask is drawn from `engine.rng("dropconnect", per_rank=True)`: reproducible and resumable.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..engine import Strategy
from ..errors import FastRetrainError
from ..methods import check_options, register_method
from ..models import classifier


def dropconnect_mask(shape, p: float, generator: torch.Generator) -> torch.Tensor:
    """Float mask of `shape`: 0 with probability p, else 1/(1−p) (so its mean is 1)."""
    keep = torch.rand(shape, generator=generator) >= p
    return keep.float() / (1.0 - p)


@dataclass
class DropConnect(Strategy):
    p: float = 0.5  # probability of dropping each weight of the FC layer at a training step

    def __post_init__(self) -> None:
        check_options("dropconnect", [(0 <= self.p < 1, f"p must be in [0, 1), got {self.p}")])

    def before_fit(self, engine) -> None:
        head = classifier(engine.model)
        if not isinstance(head, nn.Linear):
            raise FastRetrainError(f"dropconnect needs an nn.Linear classifier, {type(engine.model).__name__} has {type(head).__name__}")
        self._engine = engine
        # a closure, not the bound method: RIFLE deep-copies the head with its hooks, and copying a bound method
        # would copy this strategy and its engine
        self._handle = head.register_forward_hook(lambda module, args, out: self._hook(module, args, out))

    def _hook(self, module: nn.Linear, args, out):
        if not module.training or self.p == 0:
            return None  # identity in eval mode: the plain layer's output
        gen = self._engine.rng("dropconnect", per_rank=True)
        mask = dropconnect_mask(module.weight.shape, self.p, gen).to(module.weight.device, module.weight.dtype)
        return F.linear(args[0], module.weight * mask, module.bias)

    def after_fit(self, engine) -> None:
        self._handle.remove()


register_method("dropconnect", DropConnect, help="DropConnect (p 0.5) on the final FC layer's weights at train time (RIFLE's compared trick)")
