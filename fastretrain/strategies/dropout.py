"""Dropout before the final FC layer (Srivastava et al. 2014): one of the regularisers RIFLE
(Li et al. 2020) is compared against. The pooled features entering the classifier are dropped with
probability p and the rest scaled by 1/(1−p), in train mode only.

Implemented as a forward pre-hook on the classifier, so the model's parameter names and saved
weights are unchanged. Randomness comes from torch's global generator, which the engine re-seeds at
every epoch (reproducible and resumable).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch.nn import functional as F

from ..engine import Strategy
from ..methods import check_options, register_method
from ..models import classifier


@dataclass
class Dropout(Strategy):
    p: float = 0.5  # probability of zeroing a feature entering the FC layer

    def __post_init__(self) -> None:
        check_options("dropout", [(0 <= self.p < 1, f"p must be in [0, 1), got {self.p}")])

    def before_fit(self, engine) -> None:
        p = self.p

        def drop(module, args):
            return (F.dropout(args[0], p, module.training), *args[1:])

        self._handle = classifier(engine.model).register_forward_pre_hook(drop)

    def after_fit(self, engine) -> None:
        self._handle.remove()


register_method("dropout", Dropout, help="dropout (p 0.5) on the features entering the final FC layer (RIFLE's compared trick)")
