"""What a checkpoint holds, and how a run continues from one (`--resume`).

A checkpoint is the run's state after a finished epoch: the model's weights, which parameters train and who holds
which frozen (set_trainable), the LR multipliers, the optimizer state by parameter name, every strategy's
`state_dict()` (built-ins keep none), the epoch history and best epoch, the training clock, the budget's epoch plan and shortened epochs,
and the fp16 loss scale. No RNG state: the engine reseeds every generator from (seed, epoch, tag), so a resumed
run is bit-identical on CPU. The file itself (`CHECKPOINT`, written atomically after every epoch, read by `--resume`) is
the run folder's (run_folder.py's RunFolder); these functions read and set the engine's public surface only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import FastRetrainError

FORMAT = 1
CHECKPOINT = "checkpoint.pt"


def _strategy_key(i: int, s) -> str:
    return f"{i}:{type(s).__name__}"


def _kept(engine) -> list:
    """The strategies whose state a checkpoint holds: every one but the built-ins (engine.builtins)."""
    builtins = {id(b) for b in engine.builtins.values()}
    return [s for s in engine.strategies if id(s) not in builtins]


def map_tensors(state: dict[str, Any], fn) -> dict[str, Any]:
    """`state` with `fn` applied to its tensor values (an optimizer's per-parameter state)."""
    return {k: fn(v) if torch.is_tensor(v) else v for k, v in state.items()}


def state(engine) -> dict[str, Any]:
    """The checkpoint of `engine` after its current epoch (tensors on the CPU)."""
    return {
        "format": FORMAT,
        "run_id": engine.run_id,
        "epoch": engine.epoch + 1,  # epochs completed
        "config": engine.cfg.to_dict(),
        "num_classes": engine.data.num_classes,
        "model": {k: v.detach().cpu() for k, v in engine.model.state_dict().items()},
        "trainable": [n for n, p in engine.model.named_parameters() if p.requires_grad],
        "lr_scale": dict(engine.lr_scale),
        "trainable_by": engine.trainable.state_dict(),  # which owner holds what (set_trainable)
        "optimizer": {n: map_tensors(st, lambda v: v.cpu()) for n, st in engine.optimizer_state_by_name().items()},
        "strategies": {_strategy_key(i, s): s.state_dict() for i, s in enumerate(_kept(engine))},
        "history": engine.history,
        "best_epoch": engine.best_epoch,
        "best_key": list(engine.best_key) if engine.best_key is not None else None,
        "wall_seconds": engine.wall_seconds,
        "cpu_seconds": engine.cpu_seconds,
        "max_batches": engine.max_batches,
        "scaler": engine.scaler.state_dict() if engine.scaler is not None else None,  # --amp fp16: the loss scale
    }


def restore(engine, ck: dict[str, Any], where: Path) -> None:
    """Continue `engine` from checkpoint `ck` (read from `where`), refusing one of another run, model, method or
    number of classes."""
    if ck.get("run_id") and engine.run_id and ck["run_id"] != engine.run_id:
        raise FastRetrainError(f"cannot resume {where}: it is run {ck['run_id']}'s, the folder's config.json names "
                               f"run {engine.run_id}")
    if ck.get("num_classes") != engine.data.num_classes:
        raise FastRetrainError(f"cannot resume {where}: it has {ck.get('num_classes')} classes, "
                               f"the data has {engine.data.num_classes}")
    for key in ("model", "method"):
        then, now = ck["config"].get(key), getattr(engine.cfg, key)
        if then != now:
            raise FastRetrainError(f"cannot resume {where}: it was run with {key}={then!r}, not {now!r}")
    try:
        engine.model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise FastRetrainError(f"incompatible checkpoint {where}: {str(e).splitlines()[0]}") from e
    keep = set(ck["trainable"])
    for n, p in engine.model.named_parameters():
        p.requires_grad_(n in keep)
    engine.lr_scale = dict(ck["lr_scale"])
    if "trainable_by" in ck:  # checkpoints before set_trainable have only the trainable set itself
        engine.trainable.load_state_dict(ck["trainable_by"])
    for i, s in enumerate(_kept(engine)):
        s.load_state_dict(ck["strategies"].get(_strategy_key(i, s), {}))
    # scalar tensors (Adam's step) stay on the CPU, as torch.optim keeps them
    to_device = lambda v: v.to(engine.device) if v.ndim > 0 else v  # noqa: E731
    engine.load_optimizer_state({n: map_tensors(st, to_device) for n, st in ck["optimizer"].items()})
    engine.start_epoch, engine.history = ck["epoch"], list(ck["history"])
    engine.best_epoch, engine.wall_seconds = ck.get("best_epoch"), ck["wall_seconds"]
    engine.cpu_seconds, engine.max_batches = ck.get("cpu_seconds", 0.0), ck.get("max_batches")
    if engine.budget is not None and ck["config"].get("epochs") != engine.cfg.epochs:  # the plan it had made
        engine.set_epochs(max(ck["config"]["epochs"], engine.start_epoch + 1))
    engine.best_key = tuple(ck["best_key"]) if ck.get("best_key") is not None else None
    if engine.scaler is not None and ck.get("scaler"):
        engine.scaler.load_state_dict(ck["scaler"])
