"""Stochastic depth / drop-path (Huang et al., ECCV 2016): during training, the residual branch of
each block is dropped for a whole sample with probability p_i (the kept branches are scaled by
1/(1−p_i)); in eval mode every branch is used. One of the regularisers RIFLE (Li et al. 2020) is
compared against.

The model already exists when strategies start, so instead of timm's `drop_path_rate` constructor
argument this sets the same thing afterwards, with timm's rule: block i of n (in module order) gets
p_i = rate·i/n. It works on every model whose residual blocks have a `drop_path` attribute (timm's
EfficientNet/MobileNet/ResNet/ConvNeXt/ViT families: an nn.Identity, None or DropPath there is
replaced by a `timm.layers.DropPath`) and on torchvision's `StochasticDepth` modules (their `p` is
set). Any other model is refused with an error naming it. DropPath draws from torch's global
generator, which the engine re-seeds every epoch (reproducible and resumable).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..engine import Strategy
from ..errors import FastRetrainError
from ..methods import check_options, register_method


def set_drop_path(model: nn.Module, rate: float) -> list[tuple[str, float]]:
    """Give every residual block of `model` drop-path probability rate·i/n; return (block, p) pairs."""
    from timm.layers import DropPath
    from torchvision.ops import StochasticDepth

    blocks = [(n, m) for n, m in model.named_modules()
              if isinstance(getattr(m, "drop_path", 0), (nn.Identity, DropPath, type(None))) or isinstance(m, StochasticDepth)]  # fmt: skip
    if not blocks:
        raise FastRetrainError(
            f"stochastic-depth: model {type(model).__name__} has no residual blocks with a drop-path slot "
            "(a `drop_path` attribute as in timm models, or torchvision StochasticDepth modules); use a timm or "
            "torchvision model such as tf_efficientnet_lite0 or tv:efficientnet_b0"
        )
    out = []
    for i, (name, m) in enumerate(blocks):
        p = rate * i / len(blocks)
        if isinstance(m, StochasticDepth):
            m.p = p
        elif isinstance(m.drop_path, DropPath):
            m.drop_path.drop_prob = p
        else:
            m.drop_path = DropPath(p) if p > 0 else m.drop_path
        out.append((name, p))
    return out


@dataclass
class StochasticDepth(Strategy):
    rate: float = 0.2  # drop-path probability of the last residual block (block i of n: rate·i/n)
    conflicts = {"decompose": "decompose's width-parametrised models have no drop-path slots"}

    def __post_init__(self) -> None:
        check_options("stochastic-depth", [(0 <= self.rate < 1, f"rate must be in [0, 1), got {self.rate}")])

    def before_fit(self, engine) -> None:
        self.blocks = set_drop_path(engine.model, self.rate)


register_method("stochastic-depth", StochasticDepth, help="drop-path on residual blocks, rate up to 0.2 (timm rule; RIFLE's compared trick)")
