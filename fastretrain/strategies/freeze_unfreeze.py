"""Freeze-then-unfreeze: fastai's `Learner.fine_tune` (fastai 2.x, fastai/callback/schedule.py; docs/fast_retrain.md).

fastai runs, for `fine_tune(epochs, base_lr=2e-3, freeze_epochs=1, lr_mult=100)`:

    freeze()                                   # body frozen except its normalisation layers (train_bn=True)
    fit_one_cycle(freeze_epochs, slice(base_lr), pct_start=0.99)    # head at base_lr, body groups at base_lr/10
    base_lr /= 2
    unfreeze()
    fit_one_cycle(epochs, slice(base_lr/lr_mult, base_lr), pct_start=0.3, div=5)  # LR spread over layer groups

Here, within one run of `cfg.epochs` epochs (the first `freeze_epochs` of them frozen), as per-parameter LR
multipliers of the run's own schedule (through `engine.set_trainable`, so they multiply another method's and its
thaw leaves another method's frozen parameters frozen: with random-freeze the drawn block stays frozen):
- layer groups: the body (every parameter outside the classifier) split into `groups − 1` contiguous parts of
  equal parameter-tensor count in registration order, plus the head. `groups=2` (default) is fastai's
  `default_split` (body, head), which its `vision_learner` uses for timm models such as EfficientNet-Lite;
  fastai's ResNet splitter makes 3.
- frozen epochs: the head trains at ×1; of the body only the normalisation layers train (`train_bn`), at ×1/10.
- after: everything trains; group g of G (0 = first layers) at `unfrozen_lr` · lr_mult^−(G−1−g)/(G−1) (fastai's
  `even_mults(base/lr_mult, base, G)`, with `unfrozen_lr` = 0.5 its `base_lr /= 2`).
Adam, base LR 2e-3 and the one-cycle schedule are the `fastai` recipe (`--recipe fastai`), not this method's:
under another recipe it trains with that recipe's optimiser and schedule. Where this still differs from
fastai is listed in docs/fast_retrain.md ("freeze-unfreeze and fastai's fine_tune").
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..engine import Strategy
from ..methods import check_options, register_method
from ..models import classifier

# what fastai's `freeze(train_bn=True)` keeps training (fastai.torch_core.norm_types)
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm)


def group_scales(n_body: int, groups: int, lr_mult: float, unfrozen_lr: float) -> tuple[list[float], float]:
    """(LR multiplier of each of `n_body` body parameters in order, the head's) after unfreezing."""
    body_groups = groups - 1
    per_group = [unfrozen_lr * lr_mult ** -((groups - 1 - g) / (groups - 1)) for g in range(body_groups)]
    return [per_group[i * body_groups // n_body] for i in range(n_body)], unfrozen_lr


@dataclass
class FreezeUnfreeze(Strategy):
    freeze_epochs: int = 1  # epochs with only the head (and the body's normalisation layers) training
    lr_mult: float = 100.0  # head LR / first group's LR after unfreezing
    groups: int = 2  # layer groups including the head (fastai: 2 for timm models, 3 for ResNets)
    train_bn: bool = True  # the body's normalisation layers train while it is frozen (fastai's default)
    frozen_body_lr: float = 0.1  # LR multiplier of those normalisation layers (fastai's slice(base_lr): 1/10)
    unfrozen_lr: float = 0.5  # LR multiplier of every group after unfreezing (fastai: base_lr /= 2)
    random_backbone: bool = False  # run even on a randomly initialised backbone (no pretrained weights, no --weights)

    @property
    def freezes_backbone(self) -> bool:
        """The head trains alone on a frozen body first (run.py refuses that on a random body unless asked)."""
        return self.freeze_epochs > 0

    def __post_init__(self):
        checks = [
            (isinstance(self.random_backbone, bool), f"random_backbone must be True or False: {self.random_backbone}"),
            (self.freeze_epochs >= 0, f"freeze_epochs must be >= 0, got {self.freeze_epochs}"),
            (self.lr_mult >= 1, f"lr_mult must be >= 1, got {self.lr_mult}"),
            (self.groups >= 2, f"groups must be >= 2 (body and head), got {self.groups}"),
            (self.frozen_body_lr > 0 and self.unfrozen_lr > 0, "frozen_body_lr and unfrozen_lr must be > 0"),
        ]
        check_options("freeze-unfreeze", checks)

    def before_epoch(self, engine) -> None:
        model = engine.model
        head = {id(p) for p in classifier(model).parameters()}
        norm = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
        params = list(model.named_parameters())
        body = [n for n, p in params if id(p) not in head]
        if engine.epoch < self.freeze_epochs:
            trains = {n for n, p in params if id(p) in head or (self.train_bn and id(p) in norm)}
            scales = {n: self.frozen_body_lr for n, p in params if id(p) in norm and id(p) not in head}
            engine.set_trainable(self, freeze=[n for n, _ in params if n not in trains], thaw=sorted(trains),
                                 lr_scale=scales)
        else:  # everything this method froze trains again (what another method holds frozen stays so)
            scales, head_scale = group_scales(len(body), self.groups, self.lr_mult, self.unfrozen_lr)
            lr_scale = {**dict(zip(body, scales)), **{n: head_scale for n, p in params if id(p) in head}}
            engine.set_trainable(self, thaw=[n for n, _ in params], lr_scale=lr_scale)

    def after_fit(self, engine) -> None:
        engine.set_trainable(self, thaw=list(engine.model.parameters()))  # leave the model as it came: all trainable


HELP = ("fastai fine_tune: head (and BN) only for 1 epoch, then all layers with LR spread /100 across layer groups "
        "and halved (use with --recipe fastai: Adam, LR 2e-3, one-cycle)")
register_method("freeze-unfreeze", FreezeUnfreeze, help=HELP)
