"""`train()`: the whole run — device, seeds, data, model, strategies, engine — from one TrainConfig."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from . import distributed as dist
from . import strategies as _strategies  # noqa: F401 - registers the methods
from .config import TrainConfig
from .data import DataBundle, load_data
from .engine import Engine, Strategy
from .errors import FastRetrainError
from .methods import build_strategies, method_defaults
from .models import create_model


def make_config(**kwargs) -> TrainConfig:
    """A TrainConfig from keyword arguments, with the chosen methods' defaults for fields not given."""
    method = kwargs.get("method", TrainConfig.method)
    merged = {**method_defaults(method), **{k: v for k, v in kwargs.items() if v is not None}}
    cfg = TrainConfig.from_dict(merged)
    cfg.validate()
    return cfg


def model_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """Constructor arguments the config gives the model (the width multiplier, when set)."""
    if cfg.width is None:
        return {}
    from .models import MODELS

    if cfg.model not in MODELS:
        raise FastRetrainError(f"--width applies to this package's width-parametrised models (vgg-small, resnet20, ...), not {cfg.model!r}")
    return {"width": cfg.width}


def resolve_device(spec: str) -> torch.device:
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        return torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise FastRetrainError(f"--device {spec}: CUDA is not available on this machine")
    if spec == "cuda":
        return torch.device(f"cuda:{local}")
    if spec != "cpu" and not spec.startswith("cuda:"):
        raise FastRetrainError(f"--device must be auto, cpu, cuda or cuda:N; got {spec!r}")
    return torch.device(spec)


def train(cfg: TrainConfig | None = None, *, bundle=None, module=None, strategies=None, **kwargs) -> dict[str, Any]:
    """Run one training job and return its summary (also written to OUT/summary.json).

    Args:
        cfg: the configuration; or give its fields as keyword arguments (`train(epochs=3, ...)`).
        bundle, module, strategies: objects to use, as in `build_engine`.
    """
    return build_engine(cfg or make_config(**kwargs), bundle, module, strategies).fit()


def build_engine(
    cfg: TrainConfig,
    bundle: DataBundle | None = None,
    module: torch.nn.Module | None = None,
    strategies: list[Strategy] | None = None,
) -> Engine:
    """Set up device, process group, data, model and strategies; return the engine, ready to `fit()`.

    Args:
        bundle, module: a DataBundle and a model to use instead of loading `cfg.data` / creating `cfg.model`.
        strategies: extra strategy objects, added to those of `cfg.method`.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    dist.init_from_env(device)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    data = bundle
    if data is None:
        data = load_data(cfg.data, cfg.image_size, cfg.val_split, cfg.seed, cfg.skip_bad_images, cfg.data_root, cfg.max_train)
    all_strategies = build_strategies(cfg.method, cfg.options) + list(strategies or [])
    model = module
    if model is None:
        torch.manual_seed(cfg.seed)  # the new head's initialisation
        model = create_model(cfg.model, data.num_classes, pretrained=cfg.pretrained, weights=cfg.weights, **model_kwargs(cfg))
    out = Path(cfg.out) if cfg.out else None
    if out and dist.is_main():
        if out.exists() and (out / "metrics.jsonl").exists() and not cfg.resume and (out / "checkpoint.pt").exists():
            print(f"note: {out} holds an earlier run; starting over (use --resume to continue it)")
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.json")
    return Engine(model, data, cfg, all_strategies, device=device, out_dir=out)
