"""DisturbLabel (Xie et al., CVPR 2016): regularise on the loss layer by replacing, at every step,
each training label with a class drawn uniformly from all c classes with probability α (so a label
actually changes with probability α(c−1)/c). One of the regularisers RIFLE (Li et al. 2020) is
compared against. Draws come from `engine.rng("disturblabel", per_rank=True)`: reproducible and
resumable. Training accuracy in the metrics is then measured against the disturbed labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine import Strategy
from ..methods import check_options, register_method


def disturb_labels(y: torch.Tensor, num_classes: int, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(new labels, replaced mask): each label independently replaced, with probability alpha, by a
    uniform draw from range(num_classes). y: (B,) int64 on any device; draws are made on the CPU."""
    n = y.shape[0]
    replaced = torch.rand(n, generator=generator) < alpha  # (B,) bool
    new = torch.randint(0, num_classes, (n,), generator=generator)  # (B,)
    replaced, new = replaced.to(y.device), new.to(y.device, y.dtype)
    return torch.where(replaced, new, y), replaced


@dataclass
class DisturbLabel(Strategy):
    alpha: float = 0.1  # probability that a label is replaced by a uniformly random class, per sample per step

    def __post_init__(self) -> None:
        check_options("disturblabel", [(0 <= self.alpha <= 1, f"alpha must be in [0, 1], got {self.alpha}")])

    def before_batch(self, engine) -> None:
        gen = engine.rng("disturblabel", per_rank=True)
        engine.y, replaced = disturb_labels(engine.y, engine.data.num_classes, self.alpha, gen)
        engine.log["disturbed_labels"] = engine.log.get("disturbed_labels", 0) + int(replaced.sum())


register_method("disturblabel", DisturbLabel, help="replace each training label by a uniform random class with prob 0.1 (DisturbLabel, RIFLE's compared trick)")
