"""The run folder's one owner: every file a training run writes into `engine.out`, with the run's summary.

`RunFolder` is a built-in strategy (the engine installs it, docs/strategies.md "Built-in strategies": swap or drop it
by its name, "run-folder"). On the main process only, and only with a folder (`out=None`: nothing on disk):
- before_fit: the folder; with `bundle` (build_engine's runs) model.json, samples.safetensors and the TensorBoard log;
- after_setup: `--resume` continues checkpoint.pt (on every rank; checkpointing.py holds what it contains), else a
  fresh metrics.jsonl;
- after_eval (bundle): metrics.csv and the TensorBoard scalars, with this epoch's line;
- after_log, for every epoch (and a model offered as epoch 0): a line of metrics.jsonl, model_best.safetensors
  when validation prefers that epoch (`cfg.save_weights`), and checkpoint.pt after an epoch (`cfg.save_checkpoint`);
- after_fit (bundle): metrics.csv again and test_report/ (the best epoch's weights on test, evaluation.py);
- after_summary: model_final.safetensors and summary.json.
Every record carries the run's id (integrity.py), the weights in their metadata. The bundle's files (model.json,
samples, metrics.csv, TensorBoard, test_report/) are written only when the run saves weights (`cfg.save_weights`).
config.json is written here too (`write_config`, called by run.py before the engine starts). What model.json
holds and how a bundle is read: artifacts.py. Besides these, benchmark cells add environment.json (bench.py) and
decompose its sub-networks' folders under subnets/.
"""
from __future__ import annotations

import copy
import csv
import importlib.util
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpointing
from . import distributed as dist
from .artifacts import MODEL_JSON, REPORT_DIR, SAMPLES, model_spec
from .checkpoint import atomic_json, atomic_torch_save, load_checkpoint, save_weights
from .checkpointing import CHECKPOINT
from .data import FeatureTensors
from .errors import FastRetrainWarning
from .evaluation import classification_report, collect_logits, report_text, write_report
from .events import Strategy
from .load import load_snapshot, run_load_warning
from .models import normalization

METRICS = "metrics.jsonl"
NUM_SAMPLES = 8  # test images kept in the bundle for export's parity check (1.5 MB at 224 px)


def stamped(record: dict[str, Any], run_id: str | None) -> dict[str, Any]:
    """`record` with the run's id, as every file of the run folder carries it (unchanged without an id)."""
    return {**record, "run_id": run_id} if run_id else record


def _writes(engine) -> bool:
    return bool(engine.out) and dist.is_main()


def _weights_metadata(engine, epoch: int) -> dict[str, str] | None:
    return {"run_id": engine.run_id, "epoch": str(epoch)} if engine.run_id else None


def write_config(out: Path, cfg, run_id: str | None) -> None:
    """config.json, as a run starts (run.py, on the main process): the resolved config with the run's id."""
    atomic_json({**cfg.to_dict(), **({"run_id": run_id} if run_id else {})}, out / "config.json")


def summary(engine, load_start: dict[str, Any] | None) -> dict[str, Any]:
    """The run's summary (what fit returns), after scoring the final epoch on test where it was not yet (the engine
    calls it after after_fit, also without a RunFolder; RunFolder.after_summary writes it as summary.json)."""
    epochs = [h for h in engine.history if h["epoch"] > 0]
    last = epochs[-1] if epochs else {}
    best = next((h for h in engine.history if h["epoch"] == engine.best_epoch), {})
    if last and "test_acc" not in last and engine.test_data is not None:  # test_eval=improved: score the final
        last["test_loss"], last["test_acc"] = engine.evaluate(engine.test_data)
    cfg, data = engine.cfg, engine.data
    speeds = [h["images_per_second"] for h in epochs]
    out = {
        "method": cfg.method, "recipe": cfg.recipe, "model": cfg.model, "data": data.name,
        "test_set_id": data.test_set_id, "epochs": len(epochs),
        # chosen on validation (the last eligible epoch without it); test_acc is measured at that epoch
        "best_epoch": engine.best_epoch, "best_val_acc": best.get("val_acc"), "test_acc": best.get("test_acc"),
        "final_val_acc": last.get("val_acc"), "final_test_acc": last.get("test_acc"),
        "wall_seconds": engine.wall_seconds, "cpu_seconds": engine.cpu_seconds,
        "budget_seconds": engine.budget, "images_per_second": float(np.mean(speeds)) if speeds else None,
        "train_images": len(data.train), "val_images": len(data.val) if data.val is not None else 0,
        "test_images": len(data.test), "num_classes": data.num_classes, "split_seed": cfg.split_seed,
        "device": str(engine.device), "world_size": dist.world(), "torch": torch.__version__, "seed": cfg.seed,
        "load": {"start": load_start, "end": load_snapshot()},
    }
    out = engine.stamped(out)
    warning = run_load_warning(out["load"]["start"], out["load"]["end"])
    if warning:
        out["load_warning"] = warning
        if cfg.progress and dist.is_main():
            warnings.warn(warning, FastRetrainWarning, stacklevel=2)
    return out


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
class RunFolder(Strategy):
    """Writes every file of the run folder (the module docstring lists which, and when).

    Runs last (after every method's hooks): what it records is final. Its work is not training: before_fit writes
    a few kB (and the samples), the rest happens after evaluation or after training, off the clock.
    """

    order = 10_000
    name = "run-folder"
    bundle: bool = False  # also the model bundle's files: model.json, samples, metrics.csv, TensorBoard, test_report/
    custom_model: bool = False  # the model came from `build_engine(module=...)`: model.json cannot rebuild it
    started_from: str = ""  # what the run starts from, in words (model.json's started_from)

    def _bundles(self, engine) -> bool:
        # --no-save-weights (benchmark cells): no bundle, and the folder keeps only the metrics
        return self.bundle and _writes(engine) and engine.cfg.save_weights

    def before_fit(self, engine) -> None:
        self._tb = None
        if _writes(engine):
            engine.out.mkdir(parents=True, exist_ok=True)
        if not self._bundles(engine):
            return
        spec = model_spec(engine.cfg, engine.data.classes, normalization(engine.model), self.started_from)
        spec["data"] = engine.data.name  # also when the data came in as a DataBundle
        if self.custom_model:
            spec["custom_model"] = True  # load_model refuses it with a clear message
        atomic_json(engine.stamped(spec), engine.out / MODEL_JSON)
        if not isinstance(engine.data.test, FeatureTensors):  # images only: export checks parity on them
            write_samples(engine.data.test, engine.out / SAMPLES, metadata=engine.stamped({}) or None)
        self._tb = _tensorboard(engine.out / "tensorboard")

    def after_setup(self, engine) -> None:
        """Continue the checkpoint (cfg.resume, every rank), or start metrics.jsonl afresh."""
        path = engine.out / CHECKPOINT if engine.out else None
        if engine.cfg.resume and path is not None and path.is_file():
            checkpointing.restore(engine, load_checkpoint(path), path)
            if dist.is_main():  # the history up to the checkpoint, without any later epoch's lines
                (engine.out / METRICS).write_text("".join(json.dumps(engine.stamped(h)) + "\n" for h in engine.history))
                print(f"resumed {path} after epoch {engine.start_epoch}")
        elif _writes(engine):
            if engine.cfg.resume:
                print(f"note: no checkpoint in {engine.out}; starting from scratch")
            (engine.out / METRICS).write_text("")

    def after_eval(self, engine) -> None:
        if not self._bundles(engine):
            return
        rows = engine.history + [engine.log]  # this epoch is not in history yet
        write_metrics_csv([engine.stamped(r) for r in rows], engine.out / "metrics.csv")
        if self._tb is not None:
            for key, value in engine.log.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, engine.epoch + 1)
            self._tb.flush()

    def after_log(self, engine) -> None:
        """Append the log just recorded to metrics.jsonl; model_best when it became the best, the checkpoint after
        an epoch (not after a model offered as epoch 0)."""
        if not _writes(engine):
            return
        log = engine.history[-1]
        with open(engine.out / METRICS, "a") as f:
            f.write(json.dumps(engine.stamped(log)) + "\n")
        if engine.improved and engine.cfg.save_weights:
            save_weights(engine.model, engine.out / "model_best.safetensors", _weights_metadata(engine, log["epoch"]))
        if log["epoch"] > 0 and engine.cfg.save_checkpoint:
            atomic_torch_save(checkpointing.state(engine), engine.out / CHECKPOINT)

    def after_fit(self, engine) -> None:
        if not self._bundles(engine):
            return
        if engine.history:
            write_metrics_csv([engine.stamped(r) for r in engine.history], engine.out / "metrics.csv")
        if self._tb is not None:
            self._tb.close()
        best = engine.out / "model_best.safetensors"
        if engine.best_epoch is not None and best.is_file():
            test_report(engine, best)

    def after_summary(self, engine) -> None:
        if not _writes(engine):
            return
        if engine.cfg.save_weights:
            epochs = engine.summary["epochs"]
            save_weights(engine.model, engine.out / "model_final.safetensors", _weights_metadata(engine, epochs))
        atomic_json(engine.summary, engine.out / "summary.json")


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
