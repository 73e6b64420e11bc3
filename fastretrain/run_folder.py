"""The training run's files in its folder (`engine.out`): metrics.jsonl, model_best / model_final, checkpoint.pt and
summary.json, with the run's summary itself.

Written on the main process only, and only with a folder (`out=None`: nothing on disk). After every epoch (and a
model offered as epoch 0): a line of metrics.jsonl, model_best.safetensors when validation prefers that epoch
(`cfg.save_weights`), and checkpoint.pt (`cfg.save_checkpoint`, checkpointing.py holds what it contains). At the
end: model_final.safetensors and summary.json. Every record carries the run's id (integrity.py), the weights in
their metadata. The bundle's files beside them (model.json, samples, metrics.csv, TensorBoard, test_report/) are
artifacts.py's `RunFiles`; config.json is written here too (`write_config`, called by run.py before the engine
starts), environment.json by the benchmark cells (bench.py).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpointing
from . import distributed as dist
from .checkpoint import atomic_json, atomic_torch_save, load_checkpoint, save_weights
from .errors import FastRetrainWarning
from .load import load_snapshot, run_load_warning

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


def stamped(record: dict[str, Any], run_id: str | None) -> dict[str, Any]:
    """`record` with the run's id, as every file of the run folder carries it (unchanged without an id)."""
    return {**record, "run_id": run_id} if run_id else record


def _writes(engine) -> bool:
    return bool(engine.out) and dist.is_main()


def _weights_metadata(engine, epoch: int) -> dict[str, str] | None:
    return {"run_id": engine.run_id, "epoch": str(epoch)} if engine.run_id else None


def _write_metrics(engine) -> None:
    lines = "".join(json.dumps(engine.stamped(h)) + "\n" for h in engine.history)
    (engine.out / METRICS).write_text(lines)


def write_config(out: Path, cfg, run_id: str | None) -> None:
    """config.json, as a run starts (run.py, on the main process): the resolved config with the run's id."""
    atomic_json({**cfg.to_dict(), **({"run_id": run_id} if run_id else {})}, out / "config.json")


def prepare(engine) -> None:
    """Before before_fit: make the folder."""
    if _writes(engine):
        engine.out.mkdir(parents=True, exist_ok=True)


def start(engine) -> None:
    """After before_fit: continue the checkpoint (cfg.resume, every rank), or start metrics.jsonl afresh."""
    path = engine.out / CHECKPOINT if engine.out else None
    if engine.cfg.resume and path is not None and path.is_file():
        checkpointing.restore(engine, load_checkpoint(path), path)
        if dist.is_main():
            _write_metrics(engine)  # the history up to the checkpoint, without any later epoch's lines
            print(f"resumed {path} after epoch {engine.start_epoch}")
    elif _writes(engine):
        if engine.cfg.resume:
            print(f"note: no checkpoint in {engine.out}; starting from scratch")
        (engine.out / METRICS).write_text("")


def record(engine, log: dict[str, Any], improved: bool, checkpoint: bool = False) -> None:
    """Append `log` to metrics.jsonl; save model_best when `improved`, and the checkpoint after an epoch."""
    if not _writes(engine):
        return
    with open(engine.out / METRICS, "a") as f:
        f.write(json.dumps(engine.stamped(log)) + "\n")
    if improved and engine.cfg.save_weights:
        save_weights(engine.model, engine.out / "model_best.safetensors", _weights_metadata(engine, log["epoch"]))
    if checkpoint and engine.cfg.save_checkpoint:
        atomic_torch_save(checkpointing.state(engine), engine.out / CHECKPOINT)


def summary(engine, load_start: dict[str, Any] | None) -> dict[str, Any]:
    """The run's summary (what fit returns), after scoring the final epoch on test where it was not yet; written
    as summary.json with model_final beside it."""
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
    if _writes(engine):
        if cfg.save_weights:
            save_weights(engine.model, engine.out / "model_final.safetensors", _weights_metadata(engine, len(epochs)))
        atomic_json(out, engine.out / "summary.json")
    return out

