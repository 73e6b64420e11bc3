"""Kernel rescaling (de Gusmão et al., "Fast Training of Convolutional Neural Networks via Kernel
Rescaling", arXiv 1610.03623): train first on images downscaled by s with the large conv kernels
downscaled by s too (phase 1, about s² cheaper per image), then rescale the kernels up, recompute the
batch-norm statistics at full resolution, and continue at full resolution (phase 2).

The numerics (kernel resampling, conv geometry) are in `fastretrain.kernels`; this module decides when to
switch and keeps the engine consistent:
- phase 1: `engine.image_size` = round(image_size / s) (batches are cut from the stored images with
  `roi_align`, which averages several samples per output pixel when shrinking: antialiased); every conv
  with a kernel side ≥ `min_kernel` gets its kernel area-resampled down (for a pretrained model: from
  the pretrained kernel).
- the switch (at the start of the first phase-2 epoch, counted as training time): kernels resampled up
  (bilinear, gain preserved), `engine.image_size` back to the configured size, batch-norm running
  statistics recomputed from scratch on `bn_images` training images at full size (train mode, no grad,
  cumulative average: momentum=None), optimizer rebuilt.
- when: *default* automatic — after an epoch whose monitored loss did not improve by `min_delta`
  (relative) for `patience` epochs, and at the latest after floor(max_fraction · epochs) epochs. The
  monitored loss (`monitor`): `val-loss`, the validation loss the engine measures after every epoch (off
  the clock, as for every method; at the low resolution during phase 1) — the default (`auto`) when the
  run has a validation split; `train-loss`, this epoch's training loss (free; measured on augmented
  batches while the weights move) — the `auto` choice without validation; or `train-slice`, the
  eval-mode loss on a fixed slice of `monitor_images` training images (one forward pass over the slice
  per phase-1 epoch, counted as training time). The test split is never read. `switch_epoch=N` fixes
  phase 1 to N epochs instead (0: no phase 1).
- optimizer state of a resized kernel (SGD momentum, AdamW moments) is dropped at each resize: the
  kernel restarts its momentum from its first new gradient. (The buffer has the old shape; resampling it
  with the kernel's map would be defensible for SGD, but the per-tap gradient scale also changes with the
  resolution, so there is no exact transfer. The effect is a few steps on a few layers.)
- resume: the phase is in `state_dict`. `before_fit` (which the engine runs before it restores a
  checkpoint) always starts by downscaling; each rescaled conv then adopts the kernel size of the weights
  loaded into it (a load_state_dict pre-hook), so a checkpoint saved in either phase loads, and
  `load_state_dict` sets the input size to the saved phase's.
- DDP: every decision uses all-reduced numbers (training loss, slice loss), the BN statistics are computed
  on the same images on every rank, and the optimizer rebuild re-wraps the model, since the parameter
  shapes changed.
- evaluation in phase 1 runs at the low resolution (it is the model as it trains; metrics.jsonl marks
  each epoch's `kernel_rescale_phase`). Phase-1 epochs are excluded from the best-epoch choice
  (`engine.best_eligible = False`), and so is a model offered before epoch 1 (mp-refine's ridge head, fitted
  with the small kernels), so `model_best.safetensors` and the summary's best epoch are always
  full-resolution weights with full-size kernels; a phase-1 checkpoint holds the small kernels (resume
  handles them). If a run ends in phase 1 (fixed `switch_epoch` ≥ epochs, or StopFit), `after_fit`
  switches so the final weights are full size (their full-resolution accuracy is then not measured), no
  epoch is eligible, and no `model_best.safetensors` is written (the summary's best_epoch is None).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..data import ImageTensors
from ..engine import Strategy
from ..errors import FastRetrainError
from ..kernels import ConvGeometry, downscale_kernels, follow_loaded_shapes, large_convs, upscale_kernels
from ..methods import check_options, register_method
from ..models import reestimated_batchnorm


MONITORS = ("auto", "val-loss", "train-loss", "train-slice")


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches) -> int:
    """Reset every batch-norm layer's running statistics and re-estimate them as the plain average over
    `batches` (train-mode forward, no grad, momentum=None). Returns the number of images seen."""
    was = model.training
    model.train()
    seen = 0
    try:
        with reestimated_batchnorm(model) as bns:
            if not bns:
                return 0
            for x, _ in batches:
                model(x)
                seen += len(x)
    finally:
        model.train(was)
    return seen


@dataclass
class KernelRescale(Strategy):
    order = -50  # switch the kernels before other strategies look at parameters in the same hook

    scale: float = 2.0  # phase-1 input size = image_size / scale
    min_kernel: int = 5  # convs with a kernel side >= this are rescaled (3×3 and 1×1 stay)
    switch_epoch: int | None = None  # fixed number of phase-1 epochs; None: automatic
    max_fraction: float = 0.4  # automatic switch: at most this fraction of the epochs in phase 1
    monitor: str = "auto"  # automatic switch watches: val-loss, train-loss, train-slice; auto: val-loss if any
    monitor_images: int = 512  # train-slice: training images evaluated after each phase-1 epoch
    patience: int = 1  # epochs without improvement before the switch
    min_delta: float = 0.01  # relative loss decrease that counts as an improvement
    bn_images: int = 256  # training images for the batch-norm statistics at the switch (0: keep stats)
    down_mode: str = "area"  # kernel resampling when going down: area or bilinear
    up_mode: str = "bilinear"  # kernel resampling when going up: bilinear or area

    def __post_init__(self):
        modes = ("area", "bilinear")
        check_options("kernel-rescale", [
            (self.scale > 1, f"scale must be > 1, got {self.scale}"),
            (self.min_kernel >= 2, f"min_kernel must be >= 2, got {self.min_kernel}"),
            (0 <= self.max_fraction < 1, f"max_fraction must be in [0, 1), got {self.max_fraction}"),
            (self.switch_epoch is None or self.switch_epoch >= 0,
             f"switch_epoch must be >= 0, got {self.switch_epoch}"),
            (self.monitor in MONITORS, f"monitor must be {', '.join(MONITORS)}; got {self.monitor!r}"),
            (self.down_mode in modes and self.up_mode in modes, "down_mode and up_mode must be area or bilinear"),
        ])
        self.phase = 1
        self.pending = False  # switch at the start of the next epoch
        self.best = float("inf")
        self.bad_epochs = 0
        self.phase1_epochs: int | None = None  # epochs trained in phase 1, once switched
        self.geometry: dict[str, ConvGeometry] = {}
        self._engine = None
        self._handles: list = []
        self._slice: ImageTensors | None = None
        self._slice_loss: float | None = None

    # ------------------------------------------------------------------ setup
    def _check(self, engine) -> None:
        """The checks that need the run (its validation split, its image size); the options alone are checked
        when the strategy is built."""
        if self.monitor == "val-loss" and engine.val_data is None:
            raise FastRetrainError("kernel-rescale.monitor=val-loss needs a validation split (--val-fraction > 0)")
        if round(engine.cfg.image_size / self.scale) < 8:
            raise FastRetrainError(f"image size {engine.cfg.image_size} / scale {self.scale} is below 8 px")

    @property
    def max_phase1_epochs(self) -> int:
        cfg = self._engine.cfg
        if self.switch_epoch is not None:
            return self.switch_epoch
        return int(self.max_fraction * cfg.epochs)

    def low_size(self, engine) -> int:
        return round(engine.cfg.image_size / self.scale)

    def actual_scale(self, engine) -> float:
        """Full size / low size: the factor the images really shrink by, used for the kernels too."""
        return engine.cfg.image_size / self.low_size(engine)

    def before_fit(self, engine) -> None:
        self._engine = engine
        self._check(engine)
        if self.max_phase1_epochs == 0:
            self.phase = 2
            return
        s = self.actual_scale(engine)
        engine.forget_optimizer_state([f"{n}.weight" for n, _ in large_convs(engine.model, self.min_kernel)])
        self.geometry = downscale_kernels(engine.model, s, self.min_kernel, self.down_mode)
        self._handles = follow_loaded_shapes(engine.model, self.geometry)
        engine.rebuild_optimizer()
        engine.image_size = self.low_size(engine)
        engine.best_eligible = False  # a model offered before epoch 1 (mp-refine's head) has the small kernels too

    # ------------------------------------------------------------------ phase 1: when to switch
    def _monitor_slice(self, engine) -> ImageTensors:
        if self._slice is None:
            data = engine.train_data
            g = torch.Generator().manual_seed(engine.cfg.seed * 7919 + 17)  # the same slice every epoch
            idx = torch.randperm(len(data), generator=g)[: min(self.monitor_images, len(data))].sort().values
            self._slice = data.subset(idx)  # a view: disk-backed data is not read here
        return self._slice

    def after_epoch(self, engine) -> None:
        if self.phase == 1 and self.switch_epoch is None and self.monitor == "train-slice":
            self._slice_loss, _ = engine.evaluate(self._monitor_slice(engine))  # the method's cost: timed

    def after_eval(self, engine) -> None:
        engine.log["kernel_rescale_phase"] = self.phase
        if self.phase != 1:
            return
        engine.best_eligible = False  # low-resolution weights with small kernels are never "best"
        done = engine.epoch + 1
        if self.switch_epoch is not None:
            self.pending = done >= self.switch_epoch
            return
        watch = self.monitor
        if watch == "auto":  # the engine logs val_loss exactly when the run has a validation split
            watch = "val-loss" if "val_loss" in engine.log else "train-loss"
        value = {"val-loss": engine.log.get("val_loss"), "train-loss": engine.log["train_loss"]}
        value = value.get(watch, self._slice_loss)
        engine.log["kernel_rescale_monitor"] = value
        if value < self.best * (1 - self.min_delta):
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        self.best = min(self.best, value)
        self.pending = self.bad_epochs >= self.patience or done >= self.max_phase1_epochs

    def before_epoch(self, engine) -> None:
        if self.phase == 1 and self.pending:
            t = time.perf_counter()
            self.switch(engine)
            engine.log["kernel_rescale_switch_seconds"] = time.perf_counter() - t

    # ------------------------------------------------------------------ the switch
    def switch(self, engine) -> None:
        """Phase 1 -> 2: kernels up, inputs at full size, batch-norm statistics recomputed, optimizer rebuilt."""
        engine.forget_optimizer_state([f"{n}.weight" for n in self.geometry])  # before the Parameters are replaced
        upscale_kernels(engine.model, self.geometry, self.actual_scale(engine), self.up_mode)
        engine.rebuild_optimizer()
        engine.image_size = engine.cfg.image_size
        if self.bn_images > 0:
            data = engine.train_data
            idx = torch.randperm(len(data), generator=engine.rng("kernel-rescale/bn"))[: min(self.bn_images, len(data))]
            subset = data.subset(idx.sort().values)
            # every rank sees the same images, so the statistics agree without communication
            with engine.autocast():
                recompute_batchnorm(engine.model, engine.batches(subset, train=False, shard=False))
        self.phase, self.pending = 2, False
        self.phase1_epochs = engine.epoch

    def after_fit(self, engine) -> None:
        if self.phase == 1:
            self.switch(engine)  # leave full-size weights behind
            self.phase1_epochs = engine.epoch + 1
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------------ resume
    def state_dict(self):
        return {"phase": self.phase, "pending": self.pending, "best": self.best, "bad_epochs": self.bad_epochs,
                "phase1_epochs": self.phase1_epochs}  # fmt: skip

    def load_state_dict(self, state) -> None:
        if not state:
            return
        self.phase, self.pending = int(state["phase"]), bool(state["pending"])
        self.best, self.bad_epochs, self.phase1_epochs = float(state["best"]), int(state["bad_epochs"]), state["phase1_epochs"]
        engine = self._engine
        if engine is None or not self.geometry:
            return
        # the engine loaded the model weights first; the pre-hooks gave each conv the checkpoint's kernel size
        modules = dict(engine.model.named_modules())
        want = {n: (g.kernel if self.phase == 2 else g.small_kernel) for n, g in self.geometry.items()}
        wrong = [n for n, k in want.items() if tuple(modules[n].weight.shape[-2:]) != k]
        if wrong:
            raise FastRetrainError(f"kernel-rescale: checkpoint of phase {self.phase} has kernels of another size for {', '.join(wrong[:3])}")
        engine.image_size = engine.cfg.image_size if self.phase == 2 else self.low_size(engine)


register_method("kernel-rescale", KernelRescale,
                help="train at image_size/2 with large kernels downscaled, then rescale kernels and finish at full size")  # fmt: skip
