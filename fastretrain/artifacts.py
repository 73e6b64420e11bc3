"""The run folder as a self-contained model bundle: what it holds, and reading it back.

`model.json`, written when a run starts, holds what it takes to use the weights without the training
config or data: the class names, the model name and its constructor arguments, and the preprocessing (input
size, the resize-and-crop rule, mean/std). That preprocessing is the engine's evaluation transform
(`data.decode_image` to the stored square, then `data.prepare_images(train=False)`), which
`fastretrain.load_model` applies again. Beside it the bundle holds `samples.safetensors` (a few test images
as stored, so that `fastretrain export` checks parity on real images anywhere), `metrics.csv` (the epoch
metrics of metrics.jsonl as a table), a TensorBoard log in `tensorboard/` when `tensorboard` is installed,
and at the end `test_report/`: per-class metrics and the confusion matrix of the best epoch's weights
(chosen on validation) on the test split (see evaluation.py).

What the bundle holds and how it is read are here; the run folder's `RunFolder` strategy (run_folder.py) writes it,
with every other file of the run folder, when `build_engine` sets its `bundle`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .checkpointing import CHECKPOINT
from .data import CROP_PCT, store_size
from .errors import FastRetrainError
from .models import find_pretrained
from .models import model_kwargs as kwargs_of  # model_spec's argument has the function's name
from .version import __version__

MODEL_JSON = "model.json"
SAMPLES = "samples.safetensors"
REPORT_DIR = "test_report"
FORMAT = "fastretrain-model/1"


def starting_weights(cfg) -> str:
    """What a run starts from, in words (the first line a run prints)."""
    out = Path(cfg.out) if cfg.out else None
    if cfg.resume and out is not None and (out / CHECKPOINT).is_file():
        return f"the checkpoint in {out} (--resume)"
    if cfg.weights:
        return f"the weight file {cfg.weights} (--weights; a head of another size is replaced)"
    if cfg.use_pretrained():
        return f"{find_pretrained(cfg.model, cfg.pretrained_file).text}, with a new head"
    why = "--no-pretrained" if cfg.pretrained is False else f"no ImageNet weights ship for {cfg.model}"
    return f"random initialisation ({why})"


def model_spec(
    cfg, classes: list[str], norm, started_from: str = "", model_kwargs: dict | None = None
) -> dict[str, Any]:
    """The contents of model.json for a run of `cfg` on data with `classes`, normalised with `norm` = (mean, std)."""
    if model_kwargs is None:
        model_kwargs = kwargs_of(cfg)
    mean, std = norm
    s = store_size(cfg.image_size)
    return {
        "format": FORMAT,
        "model": cfg.model,
        "model_kwargs": dict(model_kwargs),
        "num_classes": len(classes),
        "classes": list(classes),
        "preprocessing": {
            "image_size": cfg.image_size,
            "store_size": s,
            "crop_pct": CROP_PCT,
            "resize": f"RGB; short side to {s} px (bicubic, antialiased), then the centre {s}x{s} square",
            "crop": f"the central {cfg.image_size}x{cfg.image_size} pixels of that square",
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "input": f"float32 (batch, 3, {cfg.image_size}, {cfg.image_size}), RGB, (pixel / 255 - mean) / std",
        },
        "weights": {"best": "model_best.safetensors", "final": "model_final.safetensors"},
        "started_from": started_from,
        "data": cfg.data,
        "method": cfg.method,
        "fastretrain": __version__,
        "torch": torch.__version__,
    }


def read_spec(run: str | Path) -> dict[str, Any]:
    """model.json of a run folder, checked."""
    run = Path(run)
    path = run / MODEL_JSON
    if not path.is_file():
        if not run.is_dir():
            raise FastRetrainError(f"run folder not found: {run}")
        raise FastRetrainError(f"no {MODEL_JSON} in {run}: not a run folder, or one written before model bundles "
                               "existed (`fastretrain eval` still reads it from its config and data)")  # fmt: skip
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FastRetrainError(f"cannot parse {path}: {e}") from e
    if spec.get("format") != FORMAT:
        raise FastRetrainError(f"{path} has format {spec.get('format')!r}; this fastretrain reads {FORMAT!r}")
    return spec
