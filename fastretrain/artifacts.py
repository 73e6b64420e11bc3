"""The run folder as a self-contained model bundle, and the files a run writes besides the engine's.

`model.json`, written when a run starts, holds what it takes to use the weights without the training
config or data: the class names, the model name and its constructor arguments, and the preprocessing (input
size, the resize-and-crop rule, mean/std). That preprocessing is the engine's evaluation transform
(`data.decode_image` to the stored square, then `data.prepare_images(train=False)`), which
`fastretrain.load_model` applies again. Beside it the run writes `samples.safetensors` (a few test images
as stored, so that `fastretrain export` checks parity on real images anywhere), `metrics.csv` (the epoch
metrics of metrics.jsonl as a table), a TensorBoard log in `tensorboard/` when `tensorboard` is installed,
and at the end `test_report/`: per-class metrics and the confusion matrix of the best epoch's weights
(chosen on validation) on the test split (see evaluation.py).

`RunFiles` is the built-in strategy that writes them; `build_engine` adds it to every run. The files every training
run writes (metrics.jsonl, model_best/model_final, checkpoint.pt, summary.json) are run_folder.py's.
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import distributed as dist
from .checkpoint import atomic_json
from .data import CROP_PCT, FeatureTensors, store_size
from .engine import Strategy
from .errors import FastRetrainError
from .evaluation import classification_report, collect_logits, report_text, write_report
from .models import find_pretrained, normalization
from .models import model_kwargs as kwargs_of  # model_spec's argument has the function's name
from .run_folder import CHECKPOINT
from .version import __version__

MODEL_JSON = "model.json"
SAMPLES = "samples.safetensors"
REPORT_DIR = "test_report"
FORMAT = "fastretrain-model/1"
NUM_SAMPLES = 8  # test images kept in the bundle for export's parity check (1.5 MB at 224 px)


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


def write_samples(images, path: Path, n: int = NUM_SAMPLES, metadata: dict[str, str] | None = None) -> None:
    """Keep `n` images spread evenly over ImageTensors `images` (uint8, as stored) and their labels."""
    from safetensors.torch import save_file

    idx = torch.linspace(0, len(images) - 1, min(n, len(images))).round().long().unique()
    # the central squares (what decode_image gives): stores keep photos aspect-preserved, padded (see cache.py)
    tensors = {"images": images.central(idx).cpu().contiguous(), "labels": images.y[idx].cpu().contiguous()}
    save_file(tensors, str(path), metadata=metadata)


def write_metrics_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The epoch metrics as CSV: one row per epoch, one column per key any epoch logged (blank where absent)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, columns, restval="")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _tensorboard(log_dir: Path):
    """A SummaryWriter when `tensorboard` is installed (an optional dependency), else None."""
    if importlib.util.find_spec("tensorboard") is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir))


@dataclass
class RunFiles(Strategy):
    """Writes model.json, samples, metrics.csv, the TensorBoard log and the end-of-run test report.

    Runs last (after every method's hooks), on the main process only, and only for runs that save weights
    into an output folder. Its work is not training: before_fit writes a few kB (and the samples), the rest
    happens after evaluation or after training, off the clock.
    """

    order = 10_000
    custom_model: bool = False  # the model came from `build_engine(module=...)`: model.json cannot rebuild it
    started_from: str = ""

    def _active(self, engine) -> bool:
        # --no-save-weights (benchmark cells): no bundle, and the folder keeps only the engine's metrics
        return engine.out is not None and engine.cfg.save_weights and dist.is_main()

    def before_fit(self, engine) -> None:
        self._tb = None
        if not self._active(engine):
            return
        spec = model_spec(engine.cfg, engine.data.classes, normalization(engine.model), self.started_from)
        spec["data"] = engine.data.name  # also when the data came in as a DataBundle
        if self.custom_model:
            spec["custom_model"] = True  # load_model refuses it with a clear message
        atomic_json(engine.stamped(spec), engine.out / MODEL_JSON)
        if not isinstance(engine.data.test, FeatureTensors):  # images only: export checks parity on them
            write_samples(engine.data.test, engine.out / SAMPLES, metadata=engine.stamped({}) or None)
        self._tb = _tensorboard(engine.out / "tensorboard")

    def after_eval(self, engine) -> None:
        if not self._active(engine):
            return
        rows = engine.history + [engine.log]  # this epoch is not in history yet
        write_metrics_csv([engine.stamped(r) for r in rows], engine.out / "metrics.csv")
        if self._tb is not None:
            for key, value in engine.log.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, engine.epoch + 1)
            self._tb.flush()

    def after_fit(self, engine) -> None:
        if not self._active(engine):
            return
        if engine.history:
            write_metrics_csv([engine.stamped(r) for r in engine.history], engine.out / "metrics.csv")
        if self._tb is not None:
            self._tb.close()
        best = engine.out / "model_best.safetensors"
        if engine.best_epoch is not None and best.is_file():
            test_report(engine, best)


@torch.no_grad()
def test_report(engine, weights: Path) -> dict[str, Any]:
    """Per-class metrics and confusion matrix of `weights` (the best epoch's) on the test split, in RUN/test_report/."""
    from safetensors.torch import load_file

    model = copy.deepcopy(engine.model)  # the run's own model stays as it is (model_final is saved after this)
    model.load_state_dict(load_file(str(weights), device=str(engine.device)))
    test = engine.data.test  # the images, also when a method evaluated on cached features
    logits = collect_logits(model, test, engine.cfg.image_size, engine.norm, engine.device, 2 * engine.cfg.batch_size)
    report = classification_report(logits, test.y.cpu(), engine.data.classes)
    extra = engine.stamped({"split": "test", "weights": weights.name, "best_epoch": engine.best_epoch,
                            "test_set_id": engine.data.test_set_id, "data": engine.data.name})  # fmt: skip
    title = f"{engine.cfg.model} on {engine.data.name} (test, best epoch {engine.best_epoch})"
    out = write_report(report, engine.out / REPORT_DIR, title, extra)
    if engine.cfg.progress:
        print(f"\ntest split, weights of the best epoch ({engine.best_epoch}):\n{report_text(report)}\n"
              f"per-class metrics and confusion matrix: {out}/")  # fmt: skip
    return report
