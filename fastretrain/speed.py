"""GPU speed options of the engine: `--compile` (torch.compile of the training forward) and `--amp` (autocast in
bfloat16, or float16 with a gradient scaler for GPUs without bfloat16).

Compile and a changing trainable set. Dynamo caches a compiled graph per code object and reuses it while its
guards hold; whether a parameter's `requires_grad` is among those guards has changed between PyTorch releases
(pytorch/pytorch#139476 is an open case where a graph traced with a layer frozen is reused after the layer is
thawed, so the layer silently never trains; re-wrapping the module with a new `torch.compile` does not help,
the cache lives on the forward's code object). `CompiledForward` therefore compiles a fresh copy of a small
trampoline function, hence a fresh code object and cache entry, for every distinct set of trainable parameters
(and module object), and reuses the entry when a set comes back. Fine-tuning methods that thaw layers (freeze-
unfreeze, fast-retrain, random-freeze) thus trace once per distinct set: random-freeze draws a new depth per
epoch, so expect a compile per depth drawn.

Mixed precision: `resolve_amp` maps the config's `amp` (None: auto, True/"on", "bf16", "fp16", False/"off") to
an autocast dtype. Auto and "on" use bfloat16 where the GPU supports it and float16 otherwise; on the CPU they
are off (as before), while an explicit "bf16"/"fp16" autocasts there too. float16 comes with a
`torch.amp.GradScaler`: the loss is scaled before backward and the gradients are unscaled before the
`before_step` hooks run, so strategies see true gradients; a step whose gradients overflow is skipped by the
scaler and the scale lowered (PyTorch's recipe, torch.amp docs "Automatic Mixed Precision examples").
"""
from __future__ import annotations

import contextlib
import types
from typing import Any

import torch
from torch import nn

from .errors import FastRetrainError

AMP_VALUES = (None, True, False, "on", "off", "auto", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("eager", "aot_eager")  # debugging backends: no code generation (tests use aot_eager on CPU)


def check_amp(value) -> None:
    if value not in AMP_VALUES:
        raise FastRetrainError(f"--amp must be on, off, bf16 or fp16; got {value!r}")


def resolve_amp(value, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the config's `amp` on `device` (None: no autocast)."""
    check_amp(value)
    if value in (False, "off"):
        return None
    if value == "bf16":
        return torch.bfloat16
    if value == "fp16":
        return torch.float16
    if device.type != "cuda":  # auto / on: the GPU only, as before
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def compile_options(value) -> dict[str, Any] | None:
    """torch.compile keyword arguments of the config's `compile` (None: off)."""
    if value in (None, False, "off"):
        return None
    if value in (True, "on", "default"):
        return {}
    if value in COMPILE_MODES:
        return {"mode": value}
    if value in COMPILE_BACKENDS:
        return {"backend": value}
    modes = ", ".join(("on",) + COMPILE_MODES[1:] + COMPILE_BACKENDS)
    raise FastRetrainError(f"--compile must be off or one of {modes}; got {value!r}")


def _trampoline(n: int):
    """A new function object with its own code object (dynamo keys its cache on code objects)."""

    def forward(module, *args):
        return module(*args)

    return types.FunctionType(forward.__code__.replace(co_name=f"forward_{n}"), forward.__globals__, f"forward_{n}")


class CompiledForward:
    """`cf(module, x)` = `module(x)` through torch.compile, compiled anew for each (module, trainable set).

    Args:
        options: torch.compile keyword arguments (mode, backend, ...).
    """

    def __init__(self, **options):
        self.options = options
        self._entries: dict[tuple, tuple[nn.Module, Any]] = {}
        self.compiles = 0  # how many (module, trainable set) entries were compiled

    @staticmethod
    def key(module: nn.Module) -> tuple:
        return (id(module), tuple(p.requires_grad for p in module.parameters()))

    def __call__(self, module: nn.Module, *args):
        k = self.key(module)
        entry = self._entries.get(k)
        if entry is None:
            # keep the module in the entry: its id cannot be reused by another object while cached
            entry = (module, torch.compile(_trampoline(self.compiles), **self.options))
            self._entries[k] = entry
            self.compiles += 1
        return entry[1](module, *args)


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for float16 autocast (None otherwise: bfloat16 has float32's range)."""
    if dtype != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


def speed_setup(cfg, device: torch.device) -> tuple[torch.dtype | None, Any, CompiledForward | None, bool]:
    """The engine's (autocast dtype or None, GradScaler or None, compiled forward or None, channels-last) for `cfg`
    on `device`: --amp, --compile and --channels-last (default: on CUDA only)."""
    dtype = resolve_amp(cfg.amp, device)
    scaler = grad_scaler(dtype, device)
    options = compile_options(cfg.compile)
    compiled = CompiledForward(**options) if options is not None else None
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    return dtype, scaler, compiled, channels_last


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The forward's autocast context in `dtype` on `device`, or a no-op for None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
