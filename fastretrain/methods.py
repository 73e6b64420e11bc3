"""Method registry (a method name maps to strategy classes) and named recipes (presets of optimisation settings).

Methods compose: `--method a,b` instantiates the strategies of both, unless one declares that it cannot run with
the other (its strategy's `conflicts`, method name -> why): then the pair is refused in one line naming both, before
any data or model is loaded (tests/test_method_pairs.py runs every pair). A method may be made of other
methods (e.g. `fast-retrain` = `random-freeze` + `mp-refine`). Options reach a strategy by its method
name: `-o rifle.period=2` sets the `period` field of the RIFLE strategy's dataclass. A strategy checks its
options when it is built (`check_options` in its `__post_init__`), so a bad option fails before any data or
model is loaded. The registry is filled by `load_all()` (every module of `fastretrain/strategies/`, one per
method, registers its method); the lookups here call it.

A method never changes the optimisation settings (optimizer, LR, schedule, batch size, epochs, ...): every
method of a comparison trains under the same ones (docs/BENCHMARKS.md, "How methods are compared"). A
published setting is a recipe the user asks for by name (`--recipe authors`); flags the user gives
explicitly beat the recipe.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from .engine import Strategy
from .errors import FastRetrainError, unknown_name


@dataclass
class Method:
    name: str
    strategy: type[Strategy] | None = None  # None: plain training
    parts: tuple[str, ...] = ()  # other methods this one combines
    help: str = ""


@dataclass
class Recipe:
    """A named preset: TrainConfig fields it sets unless the user gives them."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)
    help: str = ""


METHODS: dict[str, Method] = {}
RECIPES: dict[str, Recipe] = {}
# what a recipe may set: optimisation settings only (not the data, model, method or run)
RECIPE_FIELDS = (
    "optimizer", "lr", "momentum", "weight_decay", "schedule", "batch_size", "epochs", "label_smoothing", "options",
)
_loaded = False


def load_all() -> dict[str, Method]:
    """Register every built-in method (import each module of `fastretrain.strategies`); return METHODS.

    The one way the registry is filled; cheap after the first call.
    """
    global _loaded
    if not _loaded:
        from . import strategies

        for m in pkgutil.iter_modules(strategies.__path__):
            importlib.import_module(f"{strategies.__name__}.{m.name}")
        _loaded = True
    return METHODS


def register_method(name: str, strategy=None, parts=(), help="") -> None:
    if strategy is not None:
        strategy.name = name
    METHODS[name] = Method(name, strategy, tuple(parts), help)


def check_options(method: str, checks) -> None:
    """Raise `FastRetrainError("<method>.<message>")` for the first (condition, message) whose condition is false.

    Every strategy calls it from `__post_init__` with its option checks (messages start with the option's
    name: `(self.p < 1, f"p must be < 1, got {self.p}")`), so a bad `-o` option stops the run in one line
    before data and model load. Checks that need the model or the data stay in `before_fit`.
    """
    for ok, message in checks:
        if not ok:
            raise FastRetrainError(f"{method}.{message}")


def register_recipe(name: str, fields: dict[str, Any], help: str = "") -> None:
    bad = sorted(set(fields) - set(RECIPE_FIELDS))
    if bad:
        raise FastRetrainError(f"recipe {name!r} sets {', '.join(bad)}; a recipe sets only {', '.join(RECIPE_FIELDS)}")
    RECIPES[name] = Recipe(name, dict(fields), help)


def recipe_fields(name: str | None, method: str) -> dict[str, Any]:
    """The TrainConfig fields recipe `name` sets for `method` (None: none). Its per-method options apply only
    to methods in `method` (e.g. fastai's freeze_epochs reaches freeze-unfreeze when that method runs)."""
    if name is None:
        return {}
    if name not in RECIPES:
        raise unknown_name("recipe", name, RECIPES)
    fields = dict(RECIPES[name].fields)
    if "options" in fields:
        names = set(method_names(method))
        opts = {m: dict(o) for m, o in fields["options"].items() if m in names}
        fields.pop("options")
        if opts:
            fields["options"] = opts
    return fields


def method_names(spec: str) -> list[str]:
    """Split `a,b` and check every name, expanding recipes into their parts (order kept, no repeats)."""
    load_all()
    out: list[str] = []
    for raw in spec.split(","):
        name = raw.strip()
        if name not in METHODS:
            raise unknown_name("method", name, METHODS)
        for n in (*METHODS[name].parts, name):
            if n not in out:
                out.append(n)
    return out


def build_strategies(spec: str, options: dict[str, dict[str, Any]] | None = None) -> list[Strategy]:
    """Instantiate the strategies of `spec`, passing each its options (by method name)."""
    options = dict(options or {})
    names = method_names(spec)
    unused = sorted(set(options) - set(names))
    if unused:
        unknown = [m for m in unused if m not in METHODS]
        if unknown:
            m = unknown[0]
            raise FastRetrainError(f"-o {m}.{sorted(options[m])[0]}: {unknown_name('method', m, METHODS)}")
        raise FastRetrainError(f"options given for method(s) not in --method {spec!r}: {', '.join(unused)}")
    out = []
    for name in names:
        cls = METHODS[name].strategy
        opts = options.get(name, {})
        if cls is None:
            if opts:
                hint = option_hint(name, sorted(opts)[0], names)
                raise FastRetrainError(f"{name} takes no options of its own" + (f"; {hint}" if hint else ""))
            continue
        bad = sorted(set(opts) - set(option_names(name)))
        if bad:
            known = ", ".join(option_names(name)) or "none"
            hint = option_hint(name, bad[0], names)
            raise FastRetrainError(f"unknown option(s) for {name}: {', '.join(bad)}" + (f"; {hint}" if hint else "")
                                   + f" ({name}'s options: {known})")
        out.append(cls(**opts))
    check_conflicts(spec, out)
    return out


def check_conflicts(spec: str, strategies: list[Strategy]) -> None:
    """Refuse, in one line naming both, two methods of `spec` that cannot run together: a strategy's `conflicts`
    (method name -> why) names the methods it cannot compose with; declaring it on one side is enough."""
    given = [raw.strip() for raw in spec.split(",")]
    part_of = {part: m for m in given for part in METHODS[m].parts}
    names = {s.name for s in strategies}

    def called(name: str) -> str:
        return f"{name} (part of {part_of[name]})" if name in part_of else name

    for s in strategies:
        for other, why in s.conflicts.items():
            if other not in METHODS:  # a misspelt declaration would silently never refuse
                raise FastRetrainError(f"{s.name}.conflicts names {other!r}, which is not a method")
            if other in names:
                both = f"{called(s.name)} and {called(other)}"
                raise FastRetrainError(f"--method {spec}: {both} cannot be combined: {why}")


def option_names(method: str) -> list[str]:
    """The options (-o METHOD.NAME=VALUE) of a method: its strategy's dataclass fields, sorted."""
    cls = METHODS[method].strategy
    return sorted(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else []


def option_hint(method: str, name: str, spec_names: list[str]) -> str:
    """For an option `name` that `method` lacks: where it probably belongs. In order: an option of that name of
    another method being run ("lam is an option of mp-refine: -o mp-refine.lam=..."), the closest option of
    `method` itself ("did you mean mp-refine.lam?"), an option of that name of any method, the closest option
    of the methods being run, then of any method. "" when nothing is close."""
    load_all()
    others = [m for m in spec_names if m != method]
    everyone = [m for m in METHODS if m != method and m not in others]

    def owner_of(pool: list[str]) -> str | None:
        return next((m for m in pool if name in option_names(m)), None)

    def closest(pool: list[str]) -> str | None:
        full = {o: m for m in reversed(pool) for o in option_names(m)}  # option -> its first method in pool
        close = difflib.get_close_matches(name, list(full), n=1, cutoff=0.6)
        return f"{full[close[0]]}.{close[0]}" if close else None

    if owner := owner_of(others):
        return f"{name} is an option of {owner}: -o {owner}.{name}=..."
    if mine := closest([method]):
        return f"did you mean {mine}?"
    if owner := owner_of(everyone):
        return f"{name} is an option of {owner}, which --method does not include"
    if near := closest(others) or closest(everyone):
        return f"did you mean {near}?"
    return ""


register_method("sgdm", help="SGD with momentum, full fine-tuning (the baseline every method is compared to)")


# fast-retrain's published recipe (arXiv 2008.07387, the authors' ImageNet ResNet-50 demo; docs/fast_retrain.md)
AUTHORS = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 32, "epochs": 8, "lr": 1e-3,
           "schedule": "piecewise:1x3,0.1x3,0.01x2"}
register_recipe("authors", AUTHORS, help="fast-retrain's published recipe: SGD momentum 0.9, wd 1e-4, batch 32, "
                "8 epochs, LR 1e-3 x3, 1e-4 x3, 1e-5 x2")
# fastai's `Learner.fine_tune` defaults (fastai 2.x): Adam with decoupled weight decay 0.01 (fastai's
# `Adam(decouple_wd=True)` is AdamW), base LR 2e-3, one-cycle, freeze_epochs=1 (reaches freeze-unfreeze when
# that method runs; freeze-unfreeze itself halves the LR after unfreezing and spreads it over layer groups).
# Not reproduced: fastai's betas (0.9, 0.99) and eps 1e-5.
FASTAI = {"optimizer": "adamw", "weight_decay": 0.01, "lr": 2e-3, "schedule": "onecycle",
          "options": {"freeze-unfreeze": {"freeze_epochs": 1}}}
register_recipe("fastai", FASTAI, help="fastai fine_tune defaults: Adam (decoupled wd 0.01), base LR 2e-3, "
                "one-cycle, freeze_epochs=1 with freeze-unfreeze")
