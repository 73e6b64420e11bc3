"""A run folder is one run: it never mixes two runs' files, and what reads it can tell.

A run draws a random id when it starts and writes it into every file it makes: `config.json` (written first),
each line of `metrics.jsonl` (and `metrics.csv`), `summary.json`, `model.json`, the safetensors metadata of
`model_best`, `model_final` and `samples.safetensors` (with the epoch of the weights), the checkpoint and
`test_report/metrics.json`. A new run refuses a folder that holds another run's files (`check_out_folder`, before
data and model load) unless told: `--resume` continues that run from its checkpoint, `--overwrite` replaces it and
removes its files first (`start_run_folder`; only the files a run writes, never anything else in the folder).
`predict`, `eval` and `export` (all through `predict.load_model`) call `check_run_folder`, which refuses a folder
whose files disagree on the run id, or whose run never finished an epoch (an epoch-0 line, a closed-form head
offered before training, is not a finished epoch). A folder in which no file carries an id was written before
run ids existed and is read as it is.
"""
from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path
from typing import Any

from .errors import FastRetrainError
from .run_folder import CHECKPOINT

CONFIG_JSON = "config.json"  # written when a run starts: its id is the run's
# the files and folders a run writes into its folder (run_folder.py; decompose's subnets/, bench's cell records)
RUN_FILES = (
    CONFIG_JSON, "metrics.jsonl", "metrics.csv", "summary.json", "model.json", "samples.safetensors",
    "model_best.safetensors", "model_final.safetensors", CHECKPOINT, "environment.json", "failed.json",
    "tensorboard", "test_report", "subnets",
)
# what commands write beside them: eval reports, exported models; and the temporary files of atomic writes
RUN_PATTERNS = ("eval_*", "model_*.onnx", "model_*.torchscript.pt", ".*.tmp")
WEIGHT_FILES = ("model_best.safetensors", "model_final.safetensors", "samples.safetensors")


def new_run_id() -> str:
    """A random id for a new run (16 hex digits)."""
    return secrets.token_hex(8)


def run_files(folder: Path) -> list[Path]:
    """The files and folders of a run in `folder` (none when it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [folder / name for name in RUN_FILES if (folder / name).exists()]
    for pattern in RUN_PATTERNS:
        found += [p for p in sorted(folder.glob(pattern)) if p not in found]
    return found


def metrics_lines(folder: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl in `folder` (a line cut short by a kill is left out)."""
    path = Path(folder) / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            lines.append(rec)
    return lines


def finished_epochs(folder: Path, run_id: str | None = None) -> list[int]:
    """The epochs (>= 1) metrics.jsonl in `folder` records as finished (of run `run_id` when given)."""
    return [r["epoch"] for r in metrics_lines(folder)
            if (r.get("epoch") or 0) >= 1 and (run_id is None or r.get("run_id") == run_id)]  # fmt: skip


def read_run_id(folder: Path) -> str | None:
    """The run id in folder/config.json (None: none there, a folder written before run ids)."""
    path = Path(folder) / CONFIG_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("run_id")
    except (json.JSONDecodeError, AttributeError):
        return None


def check_out_folder(cfg) -> None:
    """Refuse to start a run in `cfg.out` when it holds another run's files and neither --resume nor --overwrite
    says what to do with them (one line naming the folder and both flags)."""
    if not cfg.out:
        return
    if cfg.resume and cfg.overwrite:
        raise FastRetrainError("give --resume (continue the run in --out) or --overwrite (replace it), not both")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FastRetrainError(f"--out {out} is a file, not a folder")
    if cfg.overwrite or not run_files(out):
        return
    if cfg.resume:
        if (out / CHECKPOINT).is_file() or not finished_epochs(out):
            return  # continued from its checkpoint, or (no epoch finished) started over under --resume
        raise FastRetrainError(f"--resume: {out} holds a run with finished epochs but no checkpoint to continue "
                               f"from; --overwrite replaces it (its files are removed first)")  # fmt: skip
    unfinished = "" if finished_epochs(out) else " (it never finished an epoch)"
    raise FastRetrainError(f"{out} holds another run's files{unfinished}: --resume continues that run, --overwrite "
                           "replaces it (its files are removed first)")  # fmt: skip


def start_run_folder(cfg, progress: bool = True) -> str | None:
    """On the main process, as a run starts in `cfg.out`: the run's id, after making the folder hold only this run.

    --resume: the folder's run goes on under its id, from its checkpoint, or from the start when no epoch of it had
    finished (its files are rewritten as it runs; decompose's finished sub-networks are kept); a folder written before
    run ids continues without one. Otherwise (a new run, or --overwrite) the earlier run's files are removed first and
    a new id is drawn. The caller writes the id into config.json.
    """
    out = Path(cfg.out)
    if cfg.resume and ((out / CHECKPOINT).is_file() or read_run_id(out)):
        return read_run_id(out)
    old = run_files(out)
    for path in old:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if old and progress:
        print(f"note: removed the earlier run's {len(old)} file(s) and folder(s) in {out} "
              f"({'--overwrite' if cfg.overwrite else '--resume of a run written before run ids'})")  # fmt: skip
    return new_run_id()


def _weights_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise FastRetrainError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def _json_id(path: Path) -> str | None:
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FastRetrainError(f"cannot parse {path}: {e}") from e
    return d.get("run_id") if isinstance(d, dict) else None


def run_ids(folder: Path) -> dict[str, Any]:
    """File name -> the run id it carries (None: the file carries none), for the files of `folder` that name one.
    metrics.jsonl maps to the ids of its lines, a sorted list (None first)."""
    folder = Path(folder)
    ids: dict[str, Any] = {}
    for name in (CONFIG_JSON, "model.json", "summary.json"):
        if (folder / name).is_file():
            ids[name] = _json_id(folder / name)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            ids[name] = _weights_metadata(folder / name).get("run_id")
    if (folder / "metrics.jsonl").is_file():
        found = {r.get("run_id") for r in metrics_lines(folder)}
        ids["metrics.jsonl"] = sorted(found, key=lambda v: (v is not None, v or ""))
    return ids


def trained(folder: Path, run_id: str) -> bool:
    """Whether run `run_id` finished an epoch, by any file of `folder` that says so: a metrics.jsonl line of an epoch
    >= 1, summary.json (written at the end), or weights saved at an epoch >= 1 (a model bundle copied without its
    metrics). An epoch-0 line or weights of epoch 0 (a closed-form head offered before training) do not count."""
    folder = Path(folder)
    if finished_epochs(folder, run_id):
        return True
    if (folder / "summary.json").is_file() and (json.loads((folder / "summary.json").read_text()).get("epochs") or 0):
        return True
    weights = [folder / name for name in WEIGHT_FILES[:2] if (folder / name).is_file()]
    return any(int(_weights_metadata(w).get("epoch") or 0) >= 1 for w in weights)


def check_run_folder(folder: Path) -> str | None:
    """Refuse (FastRetrainError, one line) a run folder whose files disagree on the run id, or whose run never
    finished an epoch; return the run id (None: a folder written before run ids, read as it is)."""
    folder = Path(folder)
    ids = run_ids(folder)
    seen = [(name, v) for name, vs in ids.items() for v in (vs if isinstance(vs, list) else [vs])]
    if all(v is None for _, v in seen):
        return None  # written before run ids: nothing to compare
    run_id = ids.get(CONFIG_JSON) or ids.get("model.json") or next(v for _, v in seen if v is not None)
    odd = [f"{name} ({'no run id' if v is None else 'run ' + v})" for name, v in seen if v != run_id]
    if odd:
        raise FastRetrainError(f"{folder} mixes files of different runs: run {run_id}, but {', '.join(odd)}; "
                               "train into a new folder, or again with --overwrite")  # fmt: skip
    if not trained(folder, run_id):
        raise FastRetrainError(f"{folder}: its run ({run_id}) never finished an epoch (interrupted?), so it holds no "
                               "trained model; continue it with `fastretrain train ... --resume`, or train again")
    return run_id
