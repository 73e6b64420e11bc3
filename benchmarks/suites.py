"""The benchmark suites (issues 8, 12 and 14): which comparisons run, with which configs, methods and seeds, and
how a comparison's finished cells are loaded back (`load_suite`, `load_dedicated`, `make_comparison`).

`benchmarks/run.py` runs the suites and is their command line; verdicts.py holds the statistics and the fixed
rules; findings.py, report.py and pages.py render docs/BENCHMARKS.md, docs/BENCHMARKS-gpu.md and the README's and
docs/fast_retrain.md's result blocks from the committed results.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the package, when a script imports this module by the benchmarks folder alone

from fastretrain.bench import (  # noqa: E402
    aggregate, cell_dir, cell_done, comparison_recipe, load_record, markdown_table, protocol)

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
SHORT_NAMES = {FR_AUTHORS: "fast-retrain (authors' variant)"}  # display names of long cell labels


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


def status(suite: str, out_root: Path, seeds: int | None = None) -> list[str]:
    """One line per comparison: finished cells out of planned."""
    lines = []
    for cid, _, methods, suite_seeds in SUITES[suite]:
        n = seeds or suite_seeds
        done = sum(cell_done(out_root / cid, m, s) for m in methods for s in range(n))
        lines.append(f"- `{cid}`: {done} of {len(methods) * n} cells finished")
    return lines


def default_root(suite: str) -> Path:
    return ROOT / "benchmarks" / "results" / f"suite-{suite}"
