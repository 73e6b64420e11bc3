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
same seed's baseline, verdict gain / no loss / loss with MIN_SEEDS = 3, a time ratio inside the control's spread is
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
import re
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
from fastretrain.bench import cell_config, environment, pm  # noqa: E402
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
# Reading the cells (every number rendered below is computed from them)


def load() -> dict[str, dict[int, dict]]:
    """Every finished cell: {label: {seed: {summary, history, env, extra}}}; failed cells under 'failed'."""
    cells: dict[str, dict[int, dict]] = {}
    for label in LABELS:
        for folder in sorted((ROOT / label).glob("seed*")):
            seed = int(folder.name[4:])
            if (folder / "failed.json").is_file():
                cells.setdefault("failed", {})[f"{label}/seed{seed}"] = _record(folder / "failed.json")
                continue
            if not done(folder):
                continue
            hist = v3.history(folder) if (folder / "metrics.jsonl").is_file() else []
            extra = _record(folder / EXTRA[label]) if label in EXTRA else None
            cells.setdefault(label, {})[seed] = {"summary": _record(folder / "summary.json"), "history": hist,
                                                 "env": _record(folder / "environment.json"), "extra": extra}
    return cells


def accuracy(label: str, rec: dict) -> float:
    """Delivered test accuracy: the end of the delivered-model curve; for TTA the flip-averaged accuracy."""
    return rec["summary"]["test_acc"] if label == "+tta" else ev.final(rec["history"])


def costs(label: str, rec: dict, base: dict | None) -> tuple[float | None, float | None]:
    """(wall, CPU) time ratio: training time over the same seed's baseline's (lr-find: sweep + training); TTA:
    the TTA evaluation's time over the plain evaluation's."""
    s = rec["summary"]
    if label == "+tta":
        e = s["evaluations"]
        return e["tta"]["seconds"] / e["plain"]["seconds"], e["tta"]["cpu_seconds"] / e["plain"]["cpu_seconds"]
    if base is None:
        return None, None
    wall, cpu = s["wall_seconds"], s.get("cpu_seconds")
    if label == "lr-find":
        wall, cpu = wall + rec["extra"]["wall_seconds"], (cpu or 0) + rec["extra"]["cpu_seconds"]
    b = base["summary"]
    return wall / b["wall_seconds"], cpu / b["cpu_seconds"] if cpu and b.get("cpu_seconds") else None


def _join(values, fmt: str = "{:.3g}") -> str:
    return ", ".join(fmt.format(v) for v in values)


def notes(label: str, runs: dict[int, dict]) -> str:
    """What else the aid's cells recorded, per seed in seed order."""
    recs = [runs[s] for s in sorted(runs)]
    if label == "+patience":
        stops = [f"{r['summary']['epochs']}" + ("" if r["history"][-1].get("early_stopped") else " (not stopped)")
                 for r in recs]
        return (f"stopped after epoch {', '.join(stops)} of {EPOCHS}; delivered epoch "
                f"{_join([r['summary']['best_epoch'] for r in recs], '{}')}")
    if label == "lr-find":
        x = [r["extra"] for r in recs]
        sweeps = ", ".join(f"{sweep_text(e)} in {e['wall_seconds']:.0f} s" for e in x)
        return (f"suggested LR {_join([e['suggested'] for e in x])} (steepest descent; min/10: "
                f"{_join([e['min_div10'] for e in x])}; the recipe's LR {BASE['lr']}); sweep {sweeps}")
    if label == "+tta":
        s = [r["summary"] for r in recs]
        same = all(abs(x["plain_acc"] - x["baseline_test_acc"]) < 1e-9 for x in s)
        plain, tta = ([x["evaluations"][k]["seconds"] for x in s] for k in ("plain", "tta"))
        check = "reproduces" if same else "**differs from**"
        return (f"{s[0]['test_images']} test images: plain {_join(plain, '{:.1f}')} s, TTA {_join(tta, '{:.1f}')} s; "
                f"the plain evaluation {check} the baseline's test accuracy")
    if label == BASELINE:
        return f"training {_join([r['summary']['wall_seconds'] for r in recs], '{:.0f}')} s"
    return ""


def analyse(cells: dict) -> dict:
    """Per aid: accuracies, paired deltas vs the baseline (pt), verdict, time ratios and their timing verdict."""
    base = cells.get(BASELINE, {})
    controls = [c for lab, runs in cells.items() if lab != "failed" for r in runs.values()
                for c in r["env"].get("control_seconds", [])]
    spread = ev.spread(controls)
    any_rec = next(iter(base.values()), None)
    n_test = any_rec["summary"]["test_images"] if any_rec else 0
    rows = []
    for label in LABELS:
        runs = cells.get(label, {})
        acc = {s: accuracy(label, r) for s, r in runs.items()}
        diffs = [100 * (acc[s] - accuracy(BASELINE, base[s])) for s in sorted(acc) if s in base] \
            if label != BASELINE else []
        ratios = {s: costs(label, r, base.get(s)) for s, r in runs.items()} if label != BASELINE else {}
        walls = [w for w, _ in ratios.values() if w is not None]
        cpus = [c for _, c in ratios.values() if c is not None]
        med = float(np.median(walls)) if walls else None
        rows.append({"label": label, "acc": acc, "diffs": diffs, "n": len(diffs),
                     "verdict": ev.verdict(diffs) if label != BASELINE else None,
                     "wall_ratio": {s: w for s, (w, _) in ratios.items()},
                     "cpu_ratio": {s: c for s, (_, c) in ratios.items()},
                     "median_wall_ratio": med, "median_cpu_ratio": float(np.median(cpus)) if cpus else None,
                     "timing": ev.resolved(med, spread) if med is not None else None,
                     "notes": notes(label, runs) if runs else ""})
    return {"comparison": CID, "seeds": sorted(base), "n_test": n_test, "spread": spread, "controls": controls,
            "rows": rows, "failed": cells.get("failed", {}),
            "se_pt": ev.binomial_se_pt(np.mean(list(rows[0]["acc"].values()) or [0.5]), n_test) if n_test else None}


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def verdict_text(row: dict) -> str:
    if row["label"] == BASELINE:
        return "—"
    return f"**{row['verdict']}**" if row["verdict"] else f"n={row['n']}: needs {ev.MIN_SEEDS}, no verdict"


def _ratio(row: dict, key: str) -> str:
    per = [row[key][s] for s in sorted(row[key]) if row[key][s] is not None]
    if not per:
        return "—"
    med = float(np.median(per))
    return f"{med:.2f}x ({', '.join(f'{r:.2f}' for r in per)})"


def table_md(a: dict) -> str:
    what = dict([(BASELINE, f"SGDM, LR {BASE['lr']} cosine to {EPOCHS} epochs")] + [(lab, w) for lab, _, w in AIDS])
    lines = ["| aid | setting | delivered test acc (n) | Δ vs baseline, pt (paired) | verdict | time vs baseline, "
             "wall: median (per seed) | CPU time: median (per seed) | timing | notes |", "|" + "---|" * 9]
    for r in a["rows"]:
        diff = pm(r["diffs"]) if r["diffs"] else "—"
        lines.append(f"| `{r['label']}` | {what[r['label']]} | {pm(list(r['acc'].values()), '{:.4f}')} "
                     f"({len(r['acc'])}) | {diff} | {verdict_text(r)} | {_ratio(r, 'wall_ratio')} | "
                     f"{_ratio(r, 'cpu_ratio')} | {r['timing'] or '—'} | {r['notes'] or '—'} |")
    return "\n".join(lines)


RULES = ("Rules (`fastretrain/evidence.py`): accuracy is the delivered model's (validation-best epoch's) test "
         "accuracy; Δ is paired by seed against the same seed's baseline, mean ± std in points; **gain**: mean − std "
         f"> 0; **no loss**: mean ≥ −{ev.NO_LOSS_MEAN_PT} pt and mean − std ≥ −{ev.NO_LOSS_FLOOR_PT} pt; else "
         f"**loss**; fewer than {ev.MIN_SEEDS} seeds: no verdict. Time: the aid's training time over the same seed's "
         "baseline's (lr-find: its sweep plus its training; TTA: the TTA evaluation over the plain one), wall clock "
         "and process CPU; a median ratio inside the same-work control's spread (identical work timed before and "
         "after every cell) is unresolved.")


def block_md(a: dict, env: dict | None = None) -> str:
    if not a["seeds"]:
        return ("**Not measured yet.** `python benchmarks/aids.py` runs the measurement (suite v3's "
                f"{CID}, SGDM annealed to {EPOCHS} epochs, each aid against it, 3 seeds); until it has run, treat "
                "these aids as tools to try, and compare against a run without them under the same settings.")
    spread = f"{a['spread']:.2f}x" if a["spread"] else "not measured"
    se = f"{a['se_pt']:.2f}" if a["se_pt"] is not None else "—"
    failed = "".join(f"\n\nFailed: `{k}`: {v['error']}" for k, v in a["failed"].items())
    return (f"Measured once on suite v3's `{CID}` ({len(a['seeds'])} seeds, {a['n_test']} test images, binomial SE "
            f"±{se} pt; SGDM annealed to {EPOCHS} epochs as the baseline; one cell at a time on "
            f"{(env or {}).get('cpu_count', '?')} CPU cores). "
            f"Rendered by `python benchmarks/aids.py --render` from `benchmarks/results/aids/`; the settings and why "
            f"are in that script's header. Same-work control spread: {spread}.\n\n{table_md(a)}\n\n{RULES}{failed}")


def replace_block(text: str, body: str) -> str:
    """`text` with the content between BEGIN and END replaced by `body` (the markers kept)."""
    pattern = re.compile(rf"({re.escape(BEGIN)}\n)(?:.*?\n)?({re.escape(END)})", re.S)
    if not pattern.search(text):
        raise SystemExit(f"no {BEGIN} ... {END} block in {DOC}")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def render() -> list[Path]:
    cells = load()
    a = analyse(cells)
    env = next((r["env"] for r in cells.get(BASELINE, {}).values()), None)
    where = ""
    if env:
        where = (f"Code {env.get('commit')}, torch {env.get('torch')}, {env.get('cpu_count')} CPU cores, "
                 f"{env.get('torch_threads')} threads; command `{env.get('command')}`.\n\n")
    DOC.write_text(replace_block(DOC.read_text(), block_md(a, env)))
    if not a["seeds"]:  # nothing measured: only the page's block says so
        return [DOC]
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "results.md").write_text(f"# Training aids, measured (issue 24)\n\n{where}{block_md(a, env)}\n")
    atomic_json(a, ROOT / "results.json")
    return [ROOT / "results.md", ROOT / "results.json", DOC]


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
    for path in render():
        print(f"written {path}")


if __name__ == "__main__":
    main()
