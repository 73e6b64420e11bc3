"""`--method auto`: the best model in the time you have, from the ingredients the project has (issue 23;
docs/budget.md).

1. Before epoch 1 it fits the closed-form ridge head on the pretrained features (mp-refine's head, seconds) and
   offers it to the engine as epoch 0: from then on the run delivers at least the head (validation chooses).
2. From the time left (`--budget` minus the time used; without a budget, the run's epochs) and the measured cost
   of the head's feature pass, it estimates what a full-depth training epoch costs (a no-grad forward pass is
   FORWARD_PER_STEP of a training step, ../shared/METHODS.md §7) and picks the deepest trainable depth that still
   gives at least MIN_EPOCHS epochs, from the step costs of bottom-block freezing measured there:
   - fast-retrain's own schedule (trainable ratio 1, 1, .75, .75, .5, .5, .25, .25; mean cost ~0.71 of a
     full-depth epoch) with refinement after epochs 1-2;
   - else the bottom half frozen from epoch 1 (ratio 0.5, cost ~0.53) with refinement after epoch 1;
   - else the bottom three quarters frozen (ratio 0.25, cost ~0.41) when at least one such epoch fits;
   - else no fine-tuning at all: the head is the model.
   Without a budget the full schedule is taken.
3. It stops and returns the head when validation shows fine-tuning is not paying: at the end of any epoch once
   half of the run (budget time, or epochs) has passed, if no fine-tuned epoch has beaten the head's validation
   accuracy, fine-tuning stops (the head stays the validation-best model). A head that is already perfect on
   validation cannot be beaten there: then nothing is fine-tuned.
Each decision is printed as one line. Every threshold above is fixed from step costs and the need to score
validation several times; none was tuned on test data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import budget
from .. import distributed as dist
from ..engine import StopFit, Strategy
from ..methods import check_options, register_method
from .mp_refine import MPRefine
from .random_freeze import DEFAULT_RATIOS, RandomFreeze

FORWARD_PER_STEP = 0.27  # a no-grad forward pass over the training set costs ~0.27 of a training epoch (§7)
# (trainable ratios, their mean step cost relative to full depth (§7: bottom block frozen with everything below
# it), refinements until epoch): the deepest choice that gives MIN_EPOCHS epochs wins
PLANS = (("fast-retrain schedule", tuple(DEFAULT_RATIOS), 0.71, 2),
         ("bottom half frozen", (0.5,), 0.53, 1),
         ("bottom three quarters frozen", (0.25,), 0.41, 1))
MIN_EPOCHS = 4


def choose(left: float | None, full_epoch: float) -> tuple[str, tuple, int] | None:
    """The plan for `left` seconds (None: no budget) at `full_epoch` seconds per full-depth epoch; None: the head
    alone (not even one epoch of the cheapest depth fits)."""
    if left is None:
        return PLANS[0][0], PLANS[0][1], PLANS[0][3]
    for name, ratios, cost, until in PLANS:
        if left / (cost * full_epoch) >= MIN_EPOCHS:
            return name, ratios, until
    name, ratios, cost, until = PLANS[-1]
    return (name, ratios, until) if left / (cost * full_epoch) >= 1 else None


@dataclass
class Auto(Strategy):
    order = -20  # its parts run inside its hooks, in fast-retrain's order (freezing, then the refinement)
    conflicts = {
        "random-freeze": "auto runs its own random-freeze, with the depth it chooses",
        "mp-refine": "auto runs its own mp-refine (its ridge head and refinements)",
        "freeze-unfreeze": "auto chooses which layers train",
        "kernel-rescale": "auto delivers its ridge head from before epoch 1, which has kernel-rescale's small kernels",
    }
    judge_after: float = 0.5  # judge whether fine-tuning pays once this fraction of the run has passed

    def __post_init__(self):
        check_options("auto", [(0 < self.judge_after <= 1, f"judge_after must be in (0, 1], got {self.judge_after}")])
        self.plan: dict[str, Any] | None = None  # what was chosen (kept for resume)
        self.head_val: float | None = None
        self._refine: MPRefine | None = None
        self._freeze: RandomFreeze | None = None

    def _say(self, text: str) -> None:
        if dist.is_main():
            print(f"auto: {text}", flush=True)

    def _parts(self, until: int, ratios) -> None:
        self._refine = self._refine or MPRefine(init_head=True, until=until)
        self._refine.until = until
        self._freeze = RandomFreeze(ratios=tuple(ratios))

    # ------------------------------------------------------------------ events
    def before_fit(self, engine) -> None:
        if self.plan is None:
            self._refine = MPRefine(init_head=True)
            self._refine.before_fit(engine)

    def before_epoch(self, engine) -> None:
        if engine.epoch == 0 and self.plan is None:
            self._refine.before_epoch(engine)  # fits the head and offers it as epoch 0
            self._decide(engine)
        elif self._refine is not None:
            self._refine.before_epoch(engine)
        if self._freeze is not None:
            self._freeze.before_epoch(engine)

    def _decide(self, engine) -> None:
        head = engine.history[-1] if engine.history and engine.history[-1]["epoch"] == 0 else {}
        seconds = engine.log.get("init_head_seconds", 0.0)
        self.head_val = head.get("val_acc")
        val = f", validation {self.head_val:.4f}" if self.head_val is not None else ""
        self._say(f"ridge head fitted in {seconds:.1f} s{val}: it is the delivered model from now on")
        if self.head_val is not None and self.head_val >= 1.0:
            self.plan = {"name": "head only", "why": "perfect on validation"}
            self._say("the head is perfect on validation, which fine-tuning cannot beat there: no fine-tuning")
            raise StopFit
        seconds, now = budget.agreed(engine.device, seconds, engine.elapsed())  # every rank decides alike
        full_epoch = seconds / FORWARD_PER_STEP
        left = None if engine.budget is None else engine.budget - now
        chosen = choose(left, full_epoch)
        if chosen is None:
            self.plan = {"name": "head only", "why": "no epoch fits"}
            self._say(f"{left:.0f} s left and a full-depth epoch costs ~{full_epoch:.0f} s (from the head's pass): "
                      "not even one epoch fits; returning the head")
            raise StopFit
        name, ratios, until = chosen
        self.plan = {"name": name, "ratios": list(ratios), "until": until}
        where = f"{left:.0f} s left" if left is not None else f"{engine.cfg.epochs} epochs"
        self._say(f"{where}, a full-depth epoch ~{full_epoch:.0f} s (the head's pass / {FORWARD_PER_STEP}): "
                  f"fine-tune with {name} (trainable ratios {list(ratios)}), refinement after epochs 1-{until}")
        self._parts(until, ratios)
        self._freeze.before_fit(engine)

    def before_batch(self, engine) -> None:
        if self._freeze is not None:
            self._freeze.before_batch(engine)

    def after_loss(self, engine) -> None:
        if self._refine is not None:
            self._refine.after_loss(engine)

    def after_epoch(self, engine) -> None:
        if self._refine is not None and self._freeze is not None:
            self._refine.after_epoch(engine)

    def after_eval(self, engine) -> None:
        if self.head_val is None or "val_acc" not in engine.log:
            return
        passed = (budget.agreed(engine.device, engine.elapsed())[0] / engine.budget if engine.budget
                  else (engine.epoch + 1) / engine.cfg.epochs)  # the ranks' agreed clock: all stop or none
        tuned = [h["val_acc"] for h in engine.history if h["epoch"] > 0] + [engine.log["val_acc"]]
        if passed >= self.judge_after and max(tuned) < self.head_val:
            self.plan = {**(self.plan or {}), "stopped_after": engine.epoch + 1}
            self._say(f"after {len(tuned)} epoch(s) fine-tuning scores {max(tuned):.4f} on validation, below the "
                      f"head's {self.head_val:.4f}: stopping, returning the head")
            raise StopFit

    def after_fit(self, engine) -> None:
        for part in (self._freeze, self._refine):
            if part is not None:
                part.after_fit(engine)

    def state_dict(self) -> dict[str, Any]:
        return {"plan": self.plan, "head_val": self.head_val,
                "refine": self._refine.state_dict() if self._refine else None,
                "freeze": self._freeze.state_dict() if self._freeze else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plan, self.head_val = state.get("plan"), state.get("head_val")
        if self.plan and "ratios" in self.plan:
            self._parts(self.plan["until"], self.plan["ratios"])
            self._refine.load_state_dict(state.get("refine") or {})
            self._freeze.load_state_dict(state.get("freeze") or {})


register_method("auto", Auto, help="the best model in the time you have: ridge head first (delivered from then on), "
                "then fine-tuning whose depth and refinement fit --budget; stops and returns the head when "
                "validation shows fine-tuning is not paying (docs/budget.md)")
