"""Linear probe: a frozen backbone whose pooled features are computed once (eval transform, no
augmentation) and cached, for the training, validation and test images; only the classifier trains, on the
cache. The standard transfer baseline. It trains under the run's optimisation settings like every other method
(it used to set LR 0.01 and 10 epochs by itself)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import FeatureTensors
from ..engine import Strategy
from ..methods import check_options, register_method
from ..models import FeatureTap, classifier


@dataclass
class LinearProbe(Strategy):
    order = -100  # sets up data and net before anything else looks at them
    freezes_backbone = True  # a randomly initialised backbone is refused unless random_backbone (run.py)
    conflicts = {  # what acts on the backbone's training has nothing to act on: it is frozen and runs once, in eval
        "random-freeze": "linear-probe's backbone is frozen throughout, there is nothing left to freeze",
        "freeze-unfreeze": "linear-probe's backbone is never unfrozen",
        "stochastic-depth": "linear-probe runs the backbone once, in eval mode, where drop-path does nothing",
        "kernel-rescale": "the head would train on features of the full-size kernels that kernel-rescale resamples",
        "auto": "auto fine-tunes the backbone that linear-probe keeps frozen",
    }

    random_backbone: bool = False  # run even on a randomly initialised backbone (no pretrained weights, no --weights)

    def __post_init__(self):
        check_options("linear-probe", [(isinstance(self.random_backbone, bool),
                                        f"random_backbone must be True or False, got {self.random_backbone!r}")])

    def before_fit(self, engine) -> None:
        head = classifier(engine.model)
        mine = {id(p) for p in head.parameters()}
        engine.set_trainable(self, freeze=[p for p in engine.model.parameters() if id(p) not in mine], thaw=[head])
        self._images = (engine.train_data, engine.val_data, engine.test_data)
        engine.train_data = self._cache(engine, engine.train_data, head)  # the method's cost: training time
        with engine.untimed():  # the forward passes every other method's evaluation makes off the clock
            if engine.val_data is not None:
                engine.val_data = self._cache(engine, engine.val_data, head)
            engine.test_data = self._cache(engine, engine.test_data, head)
        engine.set_net(head)  # the optimizer is already over the head alone (set_trainable)

    @staticmethod
    @torch.no_grad()
    def _cache(engine, data, head) -> FeatureTensors:
        """Features (N, d) of every image, the backbone run once; every rank gets all of them."""
        engine.model.eval()
        tap = FeatureTap(head)
        feats = []
        for x, _ in engine.batches(data, train=False, shard=False):
            with engine.autocast():
                engine.model(x)
            feats.append(tap.value.float().flatten(1))
        tap.close()
        return FeatureTensors(torch.cat(feats), data.y.to(engine.device))

    def after_fit(self, engine) -> None:
        engine.train_data, engine.val_data, engine.test_data = self._images
        engine.set_net(engine.model)


register_method("linear-probe", LinearProbe,
                help="frozen backbone, features cached once (training, validation and test images), only the classifier trains")
