"""`train()`: the whole run — device, seeds, data, model, strategies, engine — from one TrainConfig."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from . import distributed as dist
from . import run_folder
from .artifacts import starting_weights
from .config import TrainConfig
from .data import DataBundle, class_count_lines, load_data
from .distributed import resolve_device
from .engine import Engine, Strategy
from .errors import FastRetrainError
from .integrity import check_out_folder, start_run_folder
from .methods import METHODS, build_strategies, method_names, recipe_fields
from .models import create_model, model_kwargs
from .run_folder import RunFolder
from .training_aids import aid_strategies


def make_config(**kwargs) -> TrainConfig:
    """A TrainConfig from keyword arguments (None: not given); `recipe=NAME` fills the fields not given."""
    return resolve_config(**kwargs)[0]


def resolve_config(**kwargs) -> tuple[TrainConfig, list[str]]:
    """(config, one line per setting the recipe changed or would have changed) from keyword arguments.

    Explicit arguments beat the recipe; the lines say which default the recipe replaced and which given
    value it left alone. No recipe: no lines (methods change no settings themselves).
    """
    given = {k: v for k, v in kwargs.items() if v is not None}
    name = given.get("recipe")
    preset = recipe_fields(name, given.get("method", TrainConfig.method))
    merged = {**preset, **given}
    lines = []
    for key, value in preset.items():
        if key == "options":
            mine = given.get("options") or {}
            both = {*preset["options"], *mine}
            merged["options"] = {m: {**preset["options"].get(m, {}), **mine.get(m, {})} for m in both}
            for m, opts in preset["options"].items():
                for f, v in opts.items():
                    lines += _change(name, f"-o {m}.{f}", v, mine.get(m, {}).get(f), _option_default(m, f))
        else:
            lines += _change(name, "--" + key.replace("_", "-"), value, given.get(key), _field_default(key))
    cfg = TrainConfig.from_dict(merged)
    cfg.validate()
    return cfg, lines


def _change(recipe: str, flag: str, value, given, default) -> list[str]:
    if given is not None:
        return [] if given == value else [f"recipe {recipe}: {flag} {given} as given (the recipe has {value})"]
    return [] if value == default else [f"recipe {recipe}: {flag} {value} (default {default})"]


def _field_default(name: str):
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


def _option_default(method: str, name: str):
    cls = METHODS[method].strategy
    if not dataclasses.is_dataclass(cls):
        return None
    return next((f.default for f in dataclasses.fields(cls) if f.name == name), None)


def check_backbone(cfg: TrainConfig, strategies: list[Strategy]) -> None:
    """Refuse a method that trains on a frozen backbone (`freezes_backbone`: linear-probe, freeze-unfreeze) when
    the backbone would be randomly initialised (no pretrained weights, no --weights): the user almost certainly
    forgot the weights. `-o METHOD.random_backbone=True` runs it anyway."""
    frozen = [s for s in strategies if getattr(s, "freezes_backbone", False)]
    frozen = [s for s in frozen if not getattr(s, "random_backbone", False)]
    if not frozen or cfg.weights or cfg.use_pretrained():
        return
    name = getattr(frozen[0], "name", type(frozen[0]).__name__)
    why = "--no-pretrained" if cfg.pretrained is False else "no pretrained weights for it on this machine"
    raise FastRetrainError(f"{name} trains on a frozen backbone, and {cfg.model}'s would be randomly initialised "
                           f"({why}): give --pretrained-file FILE or --weights FILE, or -o {name}.random_backbone=True "
                           "to run it anyway")


def train(cfg: TrainConfig | None = None, *, bundle=None, module=None, strategies=None, builtins=None,
          **kwargs) -> dict[str, Any]:
    """Run one training job and return its summary (also written to OUT/summary.json).

    Args:
        cfg: the configuration; or give its fields as keyword arguments (`train(epochs=3, ...)`).
        bundle, module, strategies, builtins: objects to use, as in `build_engine`.
    """
    return build_engine(cfg or make_config(**kwargs), bundle, module, strategies, builtins).fit()


def build_engine(
    cfg: TrainConfig,
    bundle: DataBundle | None = None,
    module: torch.nn.Module | None = None,
    strategies: list[Strategy] | None = None,
    builtins: dict[str, Strategy | None] | None = None,
) -> Engine:
    """Set up device, process group, data, model and strategies; return the engine, ready to `fit()`.

    Args:
        bundle, module: a DataBundle and a model to use instead of loading `cfg.data` / creating `cfg.model`.
            A given bundle is used as it is: its `val` (None: no validation split) and `test`, whatever
            `cfg.val_fraction`, `cfg.test_fraction` and `cfg.max_train` say.
        strategies: extra strategy objects, added to those of `cfg.method`.
        builtins: built-in strategies to swap (name -> strategy) or drop (name -> None), as in `Engine`; the run
            folder's ("run-folder") here also writes the model bundle (model.json, samples, metrics.csv, ...).
    """
    cfg.validate()
    recipe_fields(cfg.recipe, cfg.method)  # an unknown recipe name fails before data and model load
    all_strategies = build_strategies(cfg.method, cfg.options) + list(strategies or [])  # bad options fail here too
    all_strategies += aid_strategies(cfg, method_names(cfg.method))  # --patience, --ema, --mixup, --cutmix
    if module is None:
        check_backbone(cfg, all_strategies)
    check_out_folder(cfg)  # another run's files in --out: refused before data and model load
    device = resolve_device(cfg.device)
    dist.init_from_env(device)
    if cfg.progress and dist.is_main():
        print(f"starting from: {starting_weights(cfg) if module is None else 'the model given to build_engine'}")
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    data = bundle
    if data is None:
        data = load_data(cfg.data, cfg.image_size, cfg.test_fraction, cfg.split_seed, cfg.skip_bad_images,
                         cfg.data_root, cfg.max_train, val_fraction=cfg.val_fraction)  # fmt: skip
    if cfg.progress and dist.is_main():
        print(f"data: {data.name}, {data.num_classes} classes; " + "\n".join(class_count_lines(data)))
    model = module
    if model is None:
        torch.manual_seed(cfg.seed)  # the new head's initialisation
        model = create_model(cfg.model, data.num_classes, pretrained=cfg.use_pretrained(), weights=cfg.weights,
                             pretrained_file=cfg.pretrained_file, **model_kwargs(cfg))
    out = Path(cfg.out) if cfg.out else None
    run_id = None
    if out and dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        run_id = start_run_folder(cfg, cfg.progress)  # --overwrite: the earlier run's files go first
        run_folder.write_config(out, cfg, run_id)
    files = RunFolder(bundle=True, custom_model=module is not None,
                      started_from=starting_weights(cfg) if module is None else "")
    return Engine(model, data, cfg, all_strategies, device=device, out_dir=out, run_id=run_id,
                  builtins={"run-folder": files, **(builtins or {})})
