"""CNNs with a width multiplier, built to be decomposed along their width (see `fastretrain.compose`).

Registered models (all take `width`, a multiplier of every hidden width, default 1):

- `vgg-small`: 6 conv-BN-ReLU layers (32, 32, 64, 64, 128, 128 channels; 2×2 max-pool after each pair),
  global average pool, a hidden FC layer (256) with BN and ReLU, then the classifier.
- `resnet20`, `resnet32`: CIFAR ResNets (He et al. 2016, §4.2) — 3×3 stem of 16 channels, three
  stages of 3 (resp. 5) basic blocks with 16, 32, 64 channels. The shortcut of a block that changes
  width or stride is a 1×1 conv + BN ("option B"), which decomposes block-diagonally.
- `resnet18-cifar`: basic-block ResNet-18 layout (2, 2, 2, 2 blocks; 64, 128, 256, 512 channels) with a
  3×3 stem and no max-pool, for 32-px inputs.

Every model keeps its constructor arguments in `self.config`; `WIDTH_KEYS` names those that are channel
counts, so `scaled_config` can divide them by K to build the sub-networks of a decomposition.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import FastRetrainError
from .models import BasicBlock, Classifier, register_model


class CompositionError(FastRetrainError):
    """The network cannot be decomposed / composed (width not divisible by K, unsupported layer, mismatch)."""


def scale_width(base: int, width: float) -> int:
    """Channels of a layer whose base width is `base`, at multiplier `width` (at least 1)."""
    if width <= 0:
        raise FastRetrainError(f"width multiplier must be > 0, got {width}")
    return max(1, int(round(base * width)))


class WidthNet(Classifier):
    """Base of the models here: `config` (constructor kwargs) and the keys of it that are widths."""

    WIDTH_KEYS: tuple[str, ...] = ()
    config: dict[str, Any]

    def scaled_config(self, divisor: int) -> dict[str, Any]:
        """This model's config with every width divided by `divisor` (which must divide each exactly)."""
        out = dict(self.config)
        for key in self.WIDTH_KEYS:
            value = self.config[key]
            widths = list(value) if isinstance(value, (tuple, list)) else [value]
            bad = [w for w in widths if w % divisor]
            if bad:
                raise CompositionError(
                    f"{type(self).__name__}: width(s) {bad} of `{key}` = {value} are not divisible by K={divisor}; "
                    f"choose a width multiplier that makes every hidden width a multiple of {divisor}"
                )
            scaled = [w // divisor for w in widths]
            out[key] = tuple(scaled) if isinstance(value, (tuple, list)) else scaled[0]
        return out


class VGGSmall(WidthNet):
    """Plain VGG-style CNN: conv-BN-ReLU pairs with max-pools, then pool, hidden FC (BN, ReLU), classifier.

    Args:
        channels: output channels of the conv layers; a 2×2 max-pool follows every second one.
        hidden: width of the hidden FC layer.
    """

    WIDTH_KEYS = ("channels", "hidden")

    def __init__(self, num_classes: int = 10, channels=(32, 32, 64, 64, 128, 128), hidden: int = 256):
        super().__init__()
        self.config = {"channels": tuple(channels), "hidden": hidden}
        layers: list[nn.Module] = []
        cin = 3
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(cin, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            cin = c
        self.features = nn.Sequential(*layers)
        self.hidden = nn.Sequential(nn.Linear(cin, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
        self.num_features = hidden
        self.fc = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, H, W)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.hidden(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))  # (B, hidden)
        return x if pre_logits else self.fc(x)


class CifarResNet(WidthNet):
    """ResNet of basic blocks with a 3×3 stem and no max-pool (for 32-px images).

    Args:
        blocks: basic blocks per stage; every stage after the first halves the resolution.
        channels: channels of each stage.
        stem: channels of the stem conv.
    """

    WIDTH_KEYS = ("channels", "stem")

    def __init__(self, num_classes: int = 10, blocks=(3, 3, 3), channels=(16, 32, 64), stem: int = 16):
        super().__init__()
        if len(blocks) != len(channels):
            raise FastRetrainError(f"blocks {blocks} and channels {channels} must have the same length")
        self.config = {"blocks": tuple(blocks), "channels": tuple(channels), "stem": stem}
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True))
        stages, cin = [], stem
        for i, (n, c) in enumerate(zip(blocks, channels)):
            stages.append(nn.Sequential(*[BasicBlock(cin if j == 0 else c, c, 2 if (i > 0 and j == 0) else 1) for j in range(n)]))
            cin = c
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.fc = nn.Linear(cin, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))  # (B, C, H/2^(S-1), W/2^(S-1))


def _widths(base, width: float):
    return tuple(scale_width(b, width) for b in base) if isinstance(base, tuple) else scale_width(base, width)


@register_model("vgg-small")
def vgg_small(num_classes: int = 10, width: float = 1.0) -> VGGSmall:
    return VGGSmall(num_classes, _widths((32, 32, 64, 64, 128, 128), width), _widths(256, width))


@register_model("resnet20")
def resnet20(num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    return CifarResNet(num_classes, (3, 3, 3), _widths((16, 32, 64), width), _widths(16, width))


@register_model("resnet32")
def resnet32(num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    return CifarResNet(num_classes, (5, 5, 5), _widths((16, 32, 64), width), _widths(16, width))


@register_model("resnet18-cifar")
def resnet18_cifar(num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    return CifarResNet(num_classes, (2, 2, 2, 2), _widths((64, 128, 256, 512), width), _widths(64, width))
