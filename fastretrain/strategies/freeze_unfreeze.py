"""Freeze-then-unfreeze (what fastai's `fine_tune` does): train only the head for `freeze_epochs`,
then everything, with discriminative learning rates that grow geometrically from the first layers
(base LR / lr_mult) to the head (base LR)."""
from __future__ import annotations

from dataclasses import dataclass

from ..engine import Strategy
from ..methods import register_method
from ..models import classifier


@dataclass
class FreezeUnfreeze(Strategy):
    freeze_epochs: int = 1  # epochs with only the head training
    lr_mult: float = 100.0  # head LR / first-layer LR after unfreezing
    groups: int = 3  # backbone parameter groups, each with its own LR multiplier

    def before_epoch(self, engine) -> None:
        frozen = engine.epoch < self.freeze_epochs
        head = {id(p) for p in classifier(engine.model).parameters()}
        params = list(engine.model.named_parameters())
        if frozen:
            for _, p in params:
                p.requires_grad_(id(p) in head)
            engine.lr_scale = {}
        else:
            body = [n for n, p in params if id(p) not in head]
            for _, p in params:
                p.requires_grad_(True)
            # group g of `groups` (0 = first layers) gets lr_mult ** -((groups - g) / groups)
            engine.lr_scale = {n: self.lr_mult ** -((self.groups - i * self.groups // len(body)) / self.groups) for i, n in enumerate(body)}
        engine.rebuild_optimizer()


register_method("freeze-unfreeze", FreezeUnfreeze, help="head only for 1 epoch, then all layers with discriminative LR (fastai fine_tune)")
