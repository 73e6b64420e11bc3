"""The training aids measured once (issue 24, item 5): what lr-find, --patience, --ema, --mixup, --cutmix and --tta
cost and what they change, on one suite comparison, 3 seeds.

Comparison: suite v3's flowers5-128-lite0 (its base config and v3 settings: `test_eval=improved`, the delivered model
scored), recipe SGDM annealed to 4 epochs (v3's `sgdm-e4` cell). Per seed, back to back, one cell at a time:
  sgdm-e4     the baseline; its delivered (validation-best) weights are kept for the TTA cell
  +ema        --ema EMA_DECAY            +mixup    --mixup MIXUP_ALPHA          +cutmix   --cutmix CUTMIX_ALPHA
  +patience   --patience 1               lr-find   the LR range test on the training data (lr-find's defaults), then
                                                   the recipe trained at its suggested LR
  +tta        no training: the baseline's delivered model on the same test images, plain and with flip TTA, both
              evaluations timed
Settings fixed before any cell ran, from the data's size, not from results: 539 training images / batch 32 = 17
steps per epoch, 68 steps in 4 epochs (`--dry-run` recomputes this from the committed suite-v3 cells).
  EMA_DECAY 0.94: the average spans about 1 / (1 - 0.94) = 17 steps, one epoch, the last quarter of the run (the
      cosine schedule's low-LR tail); the starting weights (and the random head) keep 0.94^68 = 1.5 % of the final
      average. The usual 0.999 (1,000 steps) would still be 93 % the starting weights; 0.99 (100 steps) 50 %.
  MIXUP_ALPHA 0.2: Zhang et al.'s ImageNet setting (and docs/training_aids.md's example); a gentle mix for a
      4-epoch fine-tune.  CUTMIX_ALPHA 1.0: Yun et al.'s setting (and fastai's CutMix default).
  PATIENCE 1: the shortest early stop, the case where it can cut most of the 4 epochs.
Measured per cell: delivered test accuracy (the end of the delivered-model curve, `evidence.final`), training wall
and process CPU time (the engine's clock; lr-find adds its sweep, timed around `lr_find` with the data loaded), the
same-work control before and after (`evidence.control_work`). Rendered by evidence.py's rules: paired deltas vs the
same seed's baseline, verdict gain / no loss / inconclusive / loss with MIN_SEEDS = 3, a time ratio inside the control's spread is
"unresolved". A cell is finished when its environment.json (written last) is there and none of its records is
`contended` (suite v3's rule: another process had part of the cores); an interrupted or contended cell runs again
when the script is rerun. The baseline's delivered weights (delivered.safetensors) stay out of git.

Usage: python benchmarks/aids.py [--seeds 3] [--budget-minutes N]   (runs the missing cells, then renders)
       python benchmarks/aids.py --dry-run                          (the plan, what is done, the minutes it takes)
       python benchmarks/aids.py --render                           (results.md, results.json, docs/training_aids.md)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import evidence_v3 as v3  # noqa: E402  (suite v3: the comparison's base config, its settings, its cells)
from fastretrain import evidence as ev  # noqa: E402
from fastretrain.bench import cell_config, environment  # noqa: E402
from fastretrain.checkpoint import atomic_json  # noqa: E402
from fastretrain.data import load_data  # noqa: E402
from fastretrain.distributed import resolve_device  # noqa: E402
from fastretrain.engine import Strategy  # noqa: E402
from fastretrain.errors import FastRetrainError  # noqa: E402
from fastretrain.evaluation import collect_logits  # noqa: E402
from fastretrain.load import load_snapshot, run_load_warning  # noqa: E402
from fastretrain.lr_find import lr_find, plot_sweep  # noqa: E402
from fastretrain.models import create_model, model_kwargs, normalization  # noqa: E402
from fastretrain.passes import num_batches  # noqa: E402
from fastretrain.run import build_engine, make_config, train  # noqa: E402

ROOT = HERE / "results" / "aids"
DOC = HERE.parent / "docs" / "training_aids.md"
BEGIN, END = "<!-- aids:begin -->", "<!-- aids:end -->"
CID, BASE = v3.COMPARISONS[0][:2]  # flowers5-128-lite0: Lite0, 128 px, 600 images (539 train + 61 val), 864 test
EPOCHS = 4  # SGDM annealed to 4 epochs: v3's sgdm-e4
SUITE_T4 = HERE / "results" / "suite-v3" / CID / v3.sgdm_label(0.5)  # the committed cells the estimate reads
EMA_DECAY = 0.94  # spans ~17 steps = one epoch of 17 (see the header)
MIXUP_ALPHA = 0.2  # Zhang et al. (ImageNet)
CUTMIX_ALPHA = 1.0  # Yun et al.; fastai's default
PATIENCE = 1
LR_FIND = {"start_lr": 1e-7, "end_lr": 10.0, "steps": 100}  # `fastretrain lr-find`'s defaults (fastai's)
BASELINE = "sgdm-e4"
# (label, config fields the aid changes, what it is): the cells of one seed, in the order they run
AIDS = [
    ("+ema", {"ema": EMA_DECAY}, f"`--ema {EMA_DECAY}`"),
    ("+mixup", {"mixup": MIXUP_ALPHA}, f"`--mixup {MIXUP_ALPHA}`"),
    ("+cutmix", {"cutmix": CUTMIX_ALPHA}, f"`--cutmix {CUTMIX_ALPHA}`"),
    ("+patience", {"patience": PATIENCE}, f"`--patience {PATIENCE}`"),
    ("lr-find", {}, "`fastretrain lr-find` (1e-7 .. 10, 100 steps), then `--lr` = its suggestion"),
    ("+tta", {}, "`eval --tta` (flip) of the baseline's delivered model; time: over the plain evaluation"),
]
LABELS = [BASELINE] + [label for label, _, _ in AIDS]
DELIVERED = "delivered.safetensors"  # the baseline's validation-best weights (git-ignored), read by the TTA cell
EXTRA = {"lr-find": "lr_find.json"}  # records a cell writes beside the engine's summary.json


def control() -> float:
    """The same-work control's seconds (a function of its own so a test can make it instant)."""
    return ev.control_work()


def load_warning(start: dict, end: dict) -> str | None:
    """Competing load between two `load_snapshot`s (the engine's rule, for the work timed outside the engine)."""
    return run_load_warning(start, end)


# Why a record's times do not count, or None: suite v3's rule for its cells (process CPU time below 90 % of wall time
# x its threads), applied to the engine's summaries and to this script's own records alike
contended = v3.contended


def timed_record(seconds: float, cpu: float, start: dict, end: dict) -> dict:
    """Times of work timed outside the engine, with what `contended` reads (as the engine's summary has them)."""
    warning = load_warning(start, end)
    return {"wall_seconds": seconds, "cpu_seconds": cpu, "load": {"start": start, "end": end},
            **({"load_warning": warning} if warning else {})}


def baseline_fields(seed: int) -> dict:
    """The baseline cell's config fields: the comparison's base with v3's settings, SGDM, 4 epochs."""
    base = {**BASE, **v3.V3, "options": {**BASE.get("options", {}), **v3.V3["options"]}, "seed": seed}
    return {**cell_config(base, v3.BASELINE), "epochs": EPOCHS}


def cell(label: str, seed: int) -> Path:
    return ROOT / label / f"seed{seed}"


def _record(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def done(path: Path) -> bool:
    """Finished (environment.json is written last) and not `contended` (its own records, summary.json and the
    sweep's or the TTA evaluations', all count); the baseline also needs its delivered weights while the same seed's
    TTA cell has not run."""
    label = path.parent.name
    records = [_record(path / "summary.json"), _record(path / "environment.json")]
    if label in EXTRA:
        records.append(_record(path / EXTRA[label]))
    if any(r is None for r in records) or any(contended(r) for r in records):
        return False
    if label == BASELINE and not (path / DELIVERED).is_file():
        return done(path.parent.parent / "+tta" / path.name)
    return True


def run_cell(path: Path, env: dict, work) -> bool:
    """Run `work(path)` as one cell between two same-work controls; False (and failed.json) when it cannot run."""
    if path.exists():  # an interrupted or loaded cell: start it afresh
        shutil.rmtree(path)
    load0, before, t0 = os.getloadavg()[0], control(), time.perf_counter()
    print(f"== {path.relative_to(ROOT)}", flush=True)
    try:
        work(path)
    except FastRetrainError as e:
        print(f"   failed: {e}", flush=True)
        atomic_json({"error": str(e)}, path / "failed.json")
        return False
    seconds = time.perf_counter() - t0  # the whole cell: set-up, training, evaluation (the controls outside)
    after = control()
    atomic_json({**env, "control_seconds": [before, after], "cell_seconds": seconds,
                 "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)]}, path / "environment.json")
    return True


class KeepDelivered(Strategy):
    """Copies the weights after each epoch's evaluation (off the clock), so the cell can keep the validation-best
    epoch's: the delivered model, which the engine does not save with `save_weights` off (as in the suite)."""

    order = 10_000

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.norm = None

    def after_eval(self, engine) -> None:
        self.norm = normalization(engine.model)
        self.states[engine.epoch + 1] = {k: v.detach().cpu().clone() for k, v in engine.model.state_dict().items()}


def load_bundle(cfg):
    """The cell's splits, drawn as training draws them (the same call as `build_engine`)."""
    return load_data(cfg.data, cfg.image_size, cfg.test_fraction, cfg.split_seed, cfg.skip_bad_images, cfg.data_root,
                     cfg.max_train, val_fraction=cfg.val_fraction)


def train_baseline(fields: dict):
    """The baseline's training, its delivered (validation-best) weights saved beside it for the TTA cell."""
    def work(path: Path) -> None:
        keep = KeepDelivered()
        summary = build_engine(make_config(**fields, out=str(path)), strategies=[keep]).fit()
        save_file(keep.states[summary["best_epoch"]], str(path / DELIVERED))
        atomic_json({"epoch": summary["best_epoch"], "norm": keep.norm, "test_acc": summary["test_acc"],
                     "num_classes": summary["num_classes"]}, path / "delivered.json")
    return work


def train_aid(fields: dict):
    """An aid's training: the baseline's config with the aid's setting."""
    def work(path: Path) -> None:
        train(make_config(**fields, out=str(path)))
    return work


def lr_find_then_train(fields: dict):
    """The range test on the training data (timed, the data loaded once beforehand), then the recipe at its
    suggested LR; the sweep's record (LRs, losses, both suggestions, seconds) and plot go into the cell."""
    def work(path: Path) -> None:
        cfg = make_config(**fields)
        bundle = load_bundle(cfg)
        load0, t0, c0 = load_snapshot(), time.perf_counter(), time.process_time()
        sweep = lr_find(cfg, bundle=bundle, plot=None, **LR_FIND)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        timed = timed_record(seconds, cpu, load0, load_snapshot())
        print(f"   lr-find: suggested {sweep['suggested']:.3g} (min/10 {sweep['min_div10']:.3g}), "
              f"{sweep_text(sweep)} in {seconds:.0f} s", flush=True)
        train(make_config(**{**fields, "lr": sweep["suggested"]}, out=str(path)), bundle=bundle)
        plot_sweep(sweep, path / "lr_find.png", f"{cfg.model} on {bundle.name}, seed {cfg.seed}")
        keys = ("suggested", "steep", "min_div10", "stopped", "steps", "beta", "lrs", "losses")
        atomic_json({**{k: sweep[k] for k in keys}, **LR_FIND, **timed}, path / EXTRA["lr-find"])
    return work


def sweep_text(sweep: dict) -> str:
    """How the sweep ended: all its steps, or where it stopped and why (the loss diverged or was not finite)."""
    return f"{sweep['steps']} steps" + ("" if sweep["stopped"] == "steps" else f" ({sweep['stopped']})")


def tta_eval(fields: dict, baseline: Path):
    """The baseline's delivered model on the test split, plain and with flip TTA (`eval --tta`'s `collect_logits`),
    each timed (wall and process CPU) after a one-batch warm-up; written as the cell's summary.json."""
    def work(path: Path) -> None:
        cfg = make_config(**fields)
        test = load_bundle(cfg).test
        meta = json.loads((baseline / "delivered.json").read_text())
        norm = tuple(tuple(x) for x in meta["norm"])
        dev = resolve_device(cfg.device)
        model = create_model(cfg.model, meta["num_classes"], pretrained=False, **model_kwargs(cfg))
        model.load_state_dict(load_file(str(baseline / DELIVERED)))
        model.to(dev).eval()
        collect_logits(model, test, cfg.image_size, norm, dev, cfg.batch_size)  # warm-up (thread pool, caches)
        load0, t_all, c_all, out = load_snapshot(), time.perf_counter(), time.process_time(), {}
        for name, tta in (("plain", False), ("tta", True)):
            t0, c0 = time.perf_counter(), time.process_time()
            logits = collect_logits(model, test, cfg.image_size, norm, dev, cfg.batch_size, tta=tta)
            out[name] = {"acc": float((logits.argmax(1) == test.y).double().mean()),
                         "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
        timed = timed_record(time.perf_counter() - t_all, time.process_time() - c_all, load0, load_snapshot())
        path.mkdir(parents=True, exist_ok=True)
        atomic_json({"test_acc": out["tta"]["acc"], "plain_acc": out["plain"]["acc"], "baseline_test_acc":
                     meta["test_acc"], "delivered_epoch": meta["epoch"], "evaluations": out, "test_images": len(test),
                     **timed}, path / "summary.json")
    return work


def run_seed(seed: int, env: dict, deadline: float | None = None) -> None:
    """One seed's cells, back to back in LABELS' order; finished cells are skipped, failed ones not retried."""
    base = baseline_fields(seed)
    jobs = [(BASELINE, train_baseline(base))]
    for label, change, _ in AIDS:
        if label == "lr-find":
            jobs.append((label, lr_find_then_train(base)))
        elif label == "+tta":
            jobs.append((label, tta_eval(base, cell(BASELINE, seed))))
        else:
            jobs.append((label, train_aid({**base, **change})))
    for label, work in jobs:
        path = cell(label, seed)
        if done(path) or (path / "failed.json").is_file():
            continue
        if label == "+tta" and not done(cell(BASELINE, seed)):
            continue  # the baseline did not finish (or failed): nothing to evaluate
        if deadline is not None and time.monotonic() > deadline:
            print(f"== time budget reached: {label} seed {seed} and later cells not started (rerun to continue)")
            return
        run_cell(path, env, work)


# ---------------------------------------------------------------------------------------------------------------
# Sizing
EVAL_PER_TRAIN = 1 / 3  # an image's evaluation (forward) costs ~1/3 of its training step (forward + backward): assumed
SETUP_SECONDS = 10.0  # per cell: process, data (decoded, cached) and model set-up: assumed, not measured


def estimate(seeds: int) -> dict:
    """Minutes the run takes, from the committed suite-v3 sgdm-e4 cells' training times (wall_seconds), with the
    evaluation and set-up outside the training clock assumed (EVAL_PER_TRAIN, SETUP_SECONDS). Two parts are counted
    high: every epoch scores the test split (test_eval=improved scores it only when validation improves), and
    lr-find's sweep runs all its steps (it stops early once the loss diverges)."""
    summaries = [json.loads(p.read_text()) for p in sorted(SUITE_T4.glob("seed*/summary.json"))]
    if not summaries:
        raise SystemExit(f"no committed cells in {SUITE_T4} to size the run from")
    envs = [json.loads(p.read_text()) for p in sorted(SUITE_T4.glob("seed*/environment.json"))]
    t4 = float(np.mean([s["wall_seconds"] for s in summaries]))
    s0 = summaries[0]
    steps = num_batches(s0["train_images"], BASE["batch_size"])
    trained = EPOCHS * s0["train_images"]  # images trained on per run
    evals = EPOCHS * (s0["val_images"] + s0["test_images"])  # images evaluated per run, at most
    per_image = t4 / trained  # seconds per trained image
    control = 2 * 4 * float(np.mean([c for e in envs for c in e.get("control_seconds", [])] or [0.25]))
    train_cell = t4 + evals * per_image * EVAL_PER_TRAIN + SETUP_SECONDS + control
    sweep = LR_FIND["steps"] / (EPOCHS * steps) * t4
    tta = 4 * s0["test_images"] * per_image * EVAL_PER_TRAIN + SETUP_SECONDS + control  # warm-up + plain + 2 x TTA
    per_seed = 6 * train_cell + sweep + tta
    return {"t4": t4, "t4_each": [s["wall_seconds"] for s in summaries], "steps_per_epoch": steps,
            "steps": EPOCHS * steps, "train_cell": train_cell, "sweep": sweep, "tta": tta, "per_seed": per_seed,
            "minutes": seeds * per_seed / 60, "ema_span": 1 / (1 - EMA_DECAY),
            "ema_start_share": EMA_DECAY ** (EPOCHS * steps)}


def dry_run(seeds: int) -> None:
    e = estimate(seeds)
    print(f"comparison {CID}, baseline SGDM annealed to {EPOCHS} epochs; cells in {ROOT}")
    print(f"suite-v3 {SUITE_T4.name} training times: {', '.join(f'{t:.0f}' for t in e['t4_each'])} s "
          f"(mean {e['t4']:.0f} s); {e['steps_per_epoch']} steps per epoch, {e['steps']} per run")
    print(f"--ema {EMA_DECAY}: spans ~{e['ema_span']:.0f} steps; the starting weights keep "
          f"{e['ema_start_share']:.1%} of the final average")
    pending = 0
    for seed in range(seeds):
        state = []
        for label in LABELS:
            path = cell(label, seed)
            ok = done(path)
            pending += not ok and not (path / "failed.json").is_file()
            state.append(f"{label} {'done' if ok else 'failed' if (path / 'failed.json').is_file() else 'to run'}")
        print(f"seed {seed}: " + ", ".join(state))
    print(f"estimate per seed: 6 training cells x {e['train_cell']:.0f} s, lr-find's sweep {e['sweep']:.0f} s, the "
          f"TTA cell {e['tta']:.0f} s = {e['per_seed'] / 60:.1f} min")
    print(f"estimate: about {e['minutes']:.0f} minutes for {seeds} seeds ({seeds * len(LABELS)} cells, {pending} "
          f"still to run). Training times are the suite-v3 cells'; evaluation is counted as if every epoch scored test "
          f"and the sweep ran all its steps (both high), set-up as {SETUP_SECONDS:.0f} s a cell (assumed); a busy "
          "machine takes longer")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget-minutes", type=float, help="start no new cell after this many minutes")
    ap.add_argument("--render", action="store_true", help="only render from the finished cells")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, what is done and the estimated minutes")
    args = ap.parse_args(argv)
    if args.dry_run:
        dry_run(args.seeds)
        return
    if not args.render:
        deadline = time.monotonic() + 60 * args.budget_minutes if args.budget_minutes else None
        env = environment()
        for seed in range(args.seeds):
            run_seed(seed, env, deadline)
    from aids_report import render  # the report reads this module's cells
    for path in render():
        print(f"written {path}")


if __name__ == "__main__":
    main()
