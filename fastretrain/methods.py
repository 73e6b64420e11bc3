"""Method registry: a method name maps to strategy classes and the config defaults it wants.

Methods compose: `--method a,b` instantiates the strategies of both. A recipe is a method made of other
methods (e.g. `fast-retrain` = `random-freeze` + `mp-refine`). Options reach a strategy by its method
name: `-o rifle.period=2` sets the `period` field of the RIFLE strategy's dataclass.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .engine import Strategy
from .errors import FastRetrainError, unknown_name


@dataclass
class Method:
    name: str
    strategy: type[Strategy] | None = None  # None: plain training
    parts: tuple[str, ...] = ()  # other methods this recipe combines
    defaults: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields this method sets unless the user does
    help: str = ""


METHODS: dict[str, Method] = {}


def register_method(name: str, strategy=None, parts=(), defaults=None, help="") -> None:
    if strategy is not None:
        strategy.name = name
    METHODS[name] = Method(name, strategy, tuple(parts), dict(defaults or {}), help)


def method_names(spec: str) -> list[str]:
    """Split `a,b` and check every name, expanding recipes into their parts (order kept, no repeats)."""
    out: list[str] = []
    for raw in spec.split(","):
        name = raw.strip()
        if name not in METHODS:
            raise unknown_name("method", name, METHODS)
        for n in (*METHODS[name].parts, name):
            if n not in out:
                out.append(n)
    return out


def method_defaults(spec: str) -> dict[str, Any]:
    """Config defaults of the named methods; the first method named wins a conflict."""
    merged: dict[str, Any] = {}
    for name in reversed([n.strip() for n in spec.split(",")]):
        for part in method_names(name):
            merged.update(METHODS[part].defaults)
    return merged


def build_strategies(spec: str, options: dict[str, dict[str, Any]] | None = None) -> list[Strategy]:
    """Instantiate the strategies of `spec`, passing each its options (by method name)."""
    options = dict(options or {})
    names = method_names(spec)
    unused = sorted(set(options) - set(names))
    if unused:
        raise FastRetrainError(f"options given for method(s) not in --method {spec!r}: {', '.join(unused)}")
    out = []
    for name in names:
        cls = METHODS[name].strategy
        opts = options.get(name, {})
        if cls is None:
            if opts:
                raise FastRetrainError(f"method {name!r} takes no options")
            continue
        fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
        bad = sorted(set(opts) - fields)
        if bad:
            raise FastRetrainError(f"unknown option(s) for {name}: {', '.join(bad)}; it has: {', '.join(sorted(fields)) or 'none'}")
        out.append(cls(**opts))
    return out


register_method("sgdm", help="SGD with momentum, full fine-tuning (the baseline every method is compared to)")
