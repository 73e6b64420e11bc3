"""Which parameters train and at what LR multiplier, kept by who asked: the bookkeeping behind
`Engine.set_trainable`.

Several strategies may freeze, thaw and rescale the same model (random-freeze's bottom block inside
freeze-unfreeze's frozen body). Each owner's requests are kept apart, by parameter name: a parameter trains unless
some owner holds it frozen, so one owner's thaw never undoes another's freeze; its LR multiplier is the product of
every owner's. (Lightning's `BaseFinetuning` gives one callback freeze/unfreeze; here the engine is the one owner
of what trains and strategies ask it.) Pure bookkeeping on names: the engine applies it to the parameters.
"""
from __future__ import annotations

import math
from typing import Any


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
