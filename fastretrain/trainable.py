"""Which parameters train and at what LR multiplier, kept by who asked: the bookkeeping behind
`Engine.set_trainable`.

Several strategies may freeze, thaw and rescale the same model (random-freeze's bottom block inside
freeze-unfreeze's frozen body). Each owner's requests are kept apart, by parameter name: a parameter trains unless
some owner holds it frozen, so one owner's thaw never undoes another's freeze; its LR multiplier is the product of
every owner's. (Lightning's `BaseFinetuning` gives one callback freeze/unfreeze; here the engine is the one owner
of what trains and strategies ask it.) `TrainableSet` is pure bookkeeping on names: the engine applies it to the
parameters. Below it, the optimizer built over the parameters that train, with its state kept by parameter name
(`build_optimizer`, `states_by_name`), and `param_names`, which turns what a strategy names into parameter names.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .errors import FastRetrainError


class TrainableSet:
    """The frozen holds and LR multipliers of every owner (a strategy's method name)."""

    def __init__(self) -> None:
        self.frozen: dict[str, set[str]] = {}  # owner -> names of the parameters it holds frozen
        self.scales: dict[str, dict[str, float]] = {}  # owner -> parameter name -> its LR multiplier

    def update(self, owner: str, freeze=(), thaw=(), lr_scale: dict[str, float] | None = None) -> None:
        """`owner` releases its hold on `thaw`, then holds `freeze` (a name in both stays held); `lr_scale` (given)
        replaces `owner`'s multipliers."""
        held = self.frozen.setdefault(owner, set())
        held.difference_update(thaw)
        held.update(freeze)
        if not held:
            del self.frozen[owner]
        if lr_scale is not None:
            self.scales[owner] = {n: float(s) for n, s in lr_scale.items()}

    def apply(self, model: nn.Module, owner: str, freeze=(), thaw=(), lr_scale: dict[str, float] | None = None) -> None:
        """`update` with what `freeze`/`thaw` name in `model` (see param_names), then set those parameters'
        `requires_grad`: a thawed one trains unless another owner holds it frozen."""
        freeze, thaw = param_names(model, freeze), param_names(model, thaw)
        self.update(owner, freeze, thaw, lr_scale)
        params = dict(model.named_parameters())
        for n in thaw:
            params[n].requires_grad_(not self.is_frozen(n))
        for n in freeze:
            params[n].requires_grad_(False)

    def is_frozen(self, name: str) -> bool:
        """Whether some owner holds `name` frozen."""
        return any(name in held for held in self.frozen.values())

    def lr_scale(self) -> dict[str, float]:
        """Parameter name -> the product of every owner's multiplier for it (names no owner scales: absent)."""
        names = {n for scales in self.scales.values() for n in scales}
        return {n: math.prod(s.get(n, 1.0) for s in self.scales.values()) for n in sorted(names)}

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": {o: sorted(h) for o, h in self.frozen.items()},
                "scales": {o: dict(s) for o, s in self.scales.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frozen = {o: set(h) for o, h in state.get("frozen", {}).items()}
        self.scales = {o: dict(s) for o, s in state.get("scales", {}).items()}


def param_names(model: nn.Module, items) -> list[str]:
    """The names in `model` of `items`: parameter names, Parameters or modules (each module's parameters)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    known = set(by_id.values())
    out: list[str] = []
    for item in items:
        if isinstance(item, nn.Module):
            out += [by_id[id(p)] for p in item.parameters()]
        elif isinstance(item, str) or id(item) in by_id:
            name = item if isinstance(item, str) else by_id[id(item)]
            if name not in known:
                raise FastRetrainError(f"{type(model).__name__} has no parameter {name!r}")
            out.append(name)
        else:
            raise FastRetrainError(f"not a parameter of {type(model).__name__}: {type(item).__name__}")
    return out


def states_by_name(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, dict]:
    """The optimizer's per-parameter state (the same dicts, not copies) by the parameters' names in `model`."""
    if optimizer is None:
        return {}
    return {n: optimizer.state[p] for n, p in model.named_parameters() if p in optimizer.state}


def build_optimizer(cfg, model: nn.Module, lr_scale: dict[str, float], stash: dict[str, dict]) -> torch.optim.Optimizer:
    """`cfg.optimizer` (sgd with momentum, adam, adamw) over the parameters of `model` that require grad, one group
    per LR multiplier (`lr_scale`, name -> factor; each group carries its "lr_scale"), each parameter's state taken
    from `stash` (name -> state) where it has one."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise FastRetrainError("no trainable parameters left (every parameter has requires_grad=False)")
    groups: dict[float, list] = {}
    for n, p in named:
        groups.setdefault(float(lr_scale.get(n, 1.0)), []).append(p)
    pgs = [{"params": ps, "lr_scale": s, "lr": cfg.lr * s} for s, ps in groups.items()]
    lr, wd = cfg.lr, cfg.weight_decay
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(pgs, lr=lr, momentum=cfg.momentum, weight_decay=wd)
    elif cfg.optimizer == "adam":  # weight decay as an L2 term in the gradient, as torch.optim.Adam does
        optimizer = torch.optim.Adam(pgs, lr=lr, weight_decay=wd)
    else:
        optimizer = torch.optim.AdamW(pgs, lr=lr, weight_decay=wd)
    for n, p in named:
        if n in stash:
            optimizer.state[p] = stash[n]
    return optimizer
