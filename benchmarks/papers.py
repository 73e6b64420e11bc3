"""Issue 26: the three other source papers, each tried in the regime it claims, at >= 64 px, 3 paired seeds, under
the comparison protocol (../shared/METHODS.md §6: delivered-model curves, equal budgets, same-work control, the
fixed rules of fastretrain/evidence.py).

Regimes (one folder each under benchmarks/results/papers/<regime>/<row>/seed<k>/):
  rifle           RIFLE (Li et al., ICML 2020) against SGDM and the five tricks it was compared with (dropout,
                  DropConnect, stochastic depth, DisturbLabel, cyclic LR), pretrained Lite0 on the CIFAR-10 subset at
                  96 px (suite v3's cifar10-96-lite0 config), 40 epochs: the paper's schedule (40 epochs, resets at
                  10 / 20 / 30, the last quarter to settle), one recipe. Claim: +0.5-2 pt over each trick.
  kernel-rescale  Kernel rescaling (de Gusmão et al. 2016) from scratch: timm ResNet-18 (7x7 stem), random init,
                  CIFAR-10 subset at 64 px, 16 epochs; SGDM at 16 and at 13 epochs (0.8 x: the time the paper says it
                  saves). Claim: ~20% less time with no loss.
  decompose       Decomposition and composition (Gu et al., ETNA 2022) from scratch: resnet20 at 64 px, K = 2
                  sub-networks trained as 2 parallel processes (1 thread each), composed, then trained, against
                  random initialisation (SGDM) at the same budget. Claim: starts better, reaches random init's
                  accuracy sooner, no loss.
  cpu-v2-rows     The cpu-v2 Lite0 rows that never ran (freeze-unfreeze@fastai, rifle, kernel-rescale,
                  fast-retrain,rifle): run by benchmarks/run.py's own resumable suite (`CPU_V2_COMMAND`).
Every cell runs with evidence_v3's `run_cell` (the same-work control timed before and after it), one at a time with
all cores, seeds interleaved (seed 0 of every row, then seed 1, ...); a finished cell is skipped unless it did not
get its cores (evidence_v3's `done` / `contended`), so rerunning the command continues. `--dry-run` prints, per
regime, the cells, the estimated minutes on this 2-core CPU from the committed cells' measured costs (named), and
the order to run (cheapest first). `--render` judges the finished cells by the fixed rules below
(results.md / results.json / delivered.png per regime, report.md). docs/papers_plan.md is the plan.

Usage: python benchmarks/papers.py --dry-run
       python benchmarks/papers.py [--only REGIME ...] [--seeds 3] [--budget-minutes N]
       python benchmarks/papers.py --render
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import evidence_v3 as v3  # noqa: E402  (suite v3: its cells' config, resume rule and cell runner are reused)
from evidence_v3 import cell_machine, contended, done, run_cell  # noqa: E402
from fastretrain import evidence as ev  # noqa: E402
from fastretrain.bench import cell_config, environment, pm, slug  # noqa: E402
from fastretrain.checkpoint import atomic_json  # noqa: E402

RESULTS = HERE / "results"
ROOT = RESULTS / "papers"
SEEDS = 3
NO_FILES = {"progress": False, "save_checkpoint": False, "save_weights": False}


@dataclass(frozen=True)
class Row:
    """One row of a regime: its folder label, the method spec its cells run (cell_config syntax), its epochs."""

    label: str
    method: str
    epochs: int
    after_core: bool = False  # an ablation or reference row: runs after every seed's core rows


@dataclass(frozen=True)
class Regime:
    name: str
    paper: str
    claim: str
    base: dict
    rows: tuple[Row, ...]
    baseline: str  # the row whose training time sets the seed's budget (and the target)
    why: str = ""  # why these epochs / sizes
    cost: dict = field(default_factory=dict)  # how --dry-run sizes it (see `estimate`)


def _v3_base(cid: str) -> dict:
    return dict(next(base for c, base, _ in v3.COMPARISONS if c == cid))


# ---------------------------------------------------------------------------------------------------------------
# The regimes

RIFLE_EPOCHS = 40  # the paper's schedule: 40 epochs, head reset at 10, 20, 30 (period E/4, the last quarter settles)
TRICKS = ("dropout", "dropconnect", "stochastic-depth", "disturblabel", "cyclic-lr")  # RIFLE's compared tricks
RIFLE = Regime(
    name="rifle", paper="RIFLE (Li et al., ICML 2020)",
    claim="+0.5-2 pt over each of the five tricks (dropout, DropConnect, stochastic depth, DisturbLabel, cyclic LR)",
    base={**_v3_base("cifar10-96-lite0"), "test_eval": "improved"},
    rows=(*(Row(m, m, RIFLE_EPOCHS) for m in ("sgdm", *TRICKS, "rifle")),
          Row("linear-probe", "linear-probe", RIFLE_EPOCHS, after_core=True)),  # does fine-tuning matter here?
    baseline="sgdm",
    why=("40 epochs = the paper's schedule (ResNet-50, 40 epochs, resets every 10, the last 10 to settle) and > the "
         "issue's 24; at 900 training images (29 steps/epoch) the settle window is 290 steps at the cosine tail, "
         "against 16-64 in the 32 px runs where RIFLE lost 3-36 pt; the linear probe (cheap, after the core rows) "
         "shows whether fine-tuning matters on this data (at 8 epochs it matched SGDM: 0.663 vs 0.655, suite v3)"),
    cost={"source": "suite-v3/cifar10-96-lite0/sgdm-e8", "scale": None})

KR_EPOCHS = 16
KERNEL_RESCALE = Regime(
    name="kernel-rescale", paper="Kernel rescaling (de Gusmão et al., arXiv 1610.03623)",
    claim="~20% less training time with no loss of test accuracy, training from scratch",
    base={"model": "resnet18", "pretrained": False, "data": "cifar10-subset", "image_size": 64, "max_train": 10000,
          "batch_size": 64, "lr": 0.1, "schedule": "cosine", "weight_decay": 5e-4, "test_eval": "improved",
          **NO_FILES},
    rows=(Row(f"sgdm-e{KR_EPOCHS}", "sgdm", KR_EPOCHS),
          Row(f"sgdm-e{round(0.8 * KR_EPOCHS)}", "sgdm", round(0.8 * KR_EPOCHS)),  # SGDM in the time it claims
          Row("kernel-rescale", "kernel-rescale", KR_EPOCHS),  # default: auto switch, <= 40% of epochs at 32 px
          Row("resize-only", "kernel-rescale[kernel-rescale.min_kernel=99]", KR_EPOCHS, after_core=True)),
    baseline=f"sgdm-e{KR_EPOCHS}",
    why=("from scratch as the paper (ResNet on ImageNet): timm resnet18 keeps the 7x7 stem the method rescales; 64 px "
         "(phase 1 at 32 px); 16 epochs so the 40% cap allows 6 low-resolution epochs; SGDM at 13 epochs is SGDM "
         "given the ~20% less time the paper claims; resize-only (no kernel rescaled) separates the kernels' part "
         "from progressive resizing"),
    cost={"source": "suite-cpu/cifar10-subset-resnet20-scratch/sgdm", "scale": ("resnet20", 32, "resnet18", 64),
          "phase1": "suite-cpu/cifar10-subset-resnet20-scratch/kernel-rescale"})

DEC_EPOCHS, DEC_SUB_EPOCHS = 16, 4
DECOMPOSE_SOURCE = "suite-cpu/cifar10-subset-resnet20-scratch/decompose"  # its sub-network epochs' measured cost
DECOMPOSE_BASE = {"model": "resnet20", "data": "cifar10-subset", "image_size": 64, "max_train": 10000,
                  "batch_size": 64, "lr": 0.05, "schedule": "cosine", "test_eval": "improved", **NO_FILES}


def decompose_regime(sub_ratio: float) -> Regime:
    """The decompose regime for a measured sub-network epoch cost `sub_ratio` (wall time of a K = 2 sub-network
    epoch, both in parallel, over a global epoch's): the composed arm's global epochs are as many as keep its whole
    run within random init's 16 epochs."""
    global_epochs = DEC_EPOCHS - math.ceil(sub_ratio * DEC_SUB_EPOCHS - 1e-9)
    spec = f"decompose[decompose.subnets=2;decompose.sub_epochs={DEC_SUB_EPOCHS};decompose.parallel=processes]"
    return Regime(
        name="decompose", paper="Decomposition and composition (Gu, Zhang, Liu, Cai, ETNA 56, 2022)",
        claim="the composed network starts better than random initialisation, reaches its accuracy sooner, no loss",
        base=DECOMPOSE_BASE,
        rows=(Row(f"random-init-e{DEC_EPOCHS}", "sgdm", DEC_EPOCHS),
              Row("composed-K2", spec, DEC_SUB_EPOCHS + global_epochs)),
        baseline=f"random-init-e{DEC_EPOCHS}",
        why=(f"resnet20 (the width net with committed decompose cells) at 64 px from scratch, K = 2 sub-networks as 2 "
             f"processes of 1 thread; {DEC_SUB_EPOCHS} sub-network epochs cost {sub_ratio:.2f} global epoch each "
             f"(measured), so {global_epochs} global epochs keep the composed run within random init's {DEC_EPOCHS}"),
        cost={"source": "suite-cpu/cifar10-subset-resnet20-scratch/sgdm", "scale": ("resnet20", 32, "resnet20", 64),
              "subnets": DECOMPOSE_SOURCE})


# The cpu-v2 rows that never ran on the Lite0 comparisons; benchmarks/run.py defines and resumes them (cell_done).
CPU_V2_ROWS = ["freeze-unfreeze@fastai", "rifle", "kernel-rescale", "fast-retrain,rifle"]
CPU_V2_IDS = ["flowers5-128-lite0", "fashion-mnist-96-lite0", "cifar10-96-lite0"]  # the comparisons that list them
CPU_V2_COMMAND = ["--suite", "cpu-v2", "--only", *CPU_V2_IDS, "--methods", *CPU_V2_ROWS]


# ---------------------------------------------------------------------------------------------------------------
# Measured costs (--dry-run): every estimate is a formula over committed cells, named in its output

EVAL_PER_TRAIN = 0.27  # a no-grad forward pass per image costs ~0.27x a training step's (METHODS.md §7)
CELL_SETUP_S = 20.0  # model, data and the same-work control twice: an allowance, not a measurement
SAME_WORK = {"sgdm", "rifle", *TRICKS}  # SGDM's steps plus at most a mask or a reset: never cheaper than SGDM
RATIO_SUITE = ["flowers5-lite0", "fashion-mnist-5k-lite0", "cifar10-subset-lite0"]  # suite-cpu's Lite0 rows
RATIO_ALIAS = {"freeze-unfreeze@fastai": "freeze-unfreeze"}  # suite-cpu ran fastai's method under the one recipe


def _cells(folder: Path) -> list[Path]:
    """The finished cells of a row folder that got their cores (`finished`: evidence_v3's rule)."""
    return [s.parent for s in sorted(folder.glob("seed*/summary.json")) if finished(s.parent)]


def _history(cell: Path) -> list[dict]:
    return v3.history(cell)


def image_seconds(folder: Path, root: Path = RESULTS) -> dict:
    """Training seconds per image of a row's committed cells: median over cells of (median epoch_seconds / training
    images); `train_images`/`epoch_seconds` echo the cells; `cells` names them."""
    cells = _cells(folder)
    if not cells:
        raise SystemExit(f"no finished cell under {folder}: nothing to size from")
    per, epochs, images = [], [], []
    for c in cells:
        s, h = json.loads((c / "summary.json").read_text()), _history(c)
        e = statistics.median(x["epoch_seconds"] for x in h if x.get("epoch", 1) >= 1 and "epoch_seconds" in x)
        per.append(e / s["train_images"])
        epochs.append(e)
        images.append(s["train_images"])
    return {"per_image": statistics.median(per), "epoch_seconds": statistics.median(epochs),
            "train_images": statistics.median(images), "cells": [str(c.relative_to(root)) for c in cells]}


def test_fraction(folder: Path) -> float:
    """Share of epochs whose test split was scored, over every cell of a `test_eval=improved` suite (suite v3)."""
    lines = [h for c in sorted(folder.glob("*/seed*")) if (c / "metrics.jsonl").is_file() for h in _history(c)
             if h.get("epoch", 1) >= 1]
    return sum("test_acc" in h for h in lines) / len(lines) if lines else 1.0


def method_ratio(method: str, root: Path) -> tuple[float, str]:
    """A method's training time over SGDM's, same seed and comparison, median over suite-cpu's Lite0 comparisons
    (floored at 1 for methods that do SGDM's work plus a mask or a reset: below 1 is that shared machine's noise)."""
    if method == "sgdm":
        return 1.0, "SGDM"
    name = RATIO_ALIAS.get(method, method)
    ratios = []
    for cid in RATIO_SUITE:
        for cell in _cells(root / "suite-cpu" / cid / slug(name)):
            base = root / "suite-cpu" / cid / "sgdm" / cell.name / "summary.json"
            if base.is_file():
                ratios.append(json.loads((cell / "summary.json").read_text())["wall_seconds"] /
                              json.loads(base.read_text())["wall_seconds"])
    if not ratios:
        return 1.0, f"{method}: no suite-cpu cells, taken as SGDM's cost"
    r = statistics.median(ratios)
    floor = method.split("[")[0] in SAME_WORK and r < 1
    return (1.0 if floor else r), (f"{method}: {r:.2f}x SGDM (median of {len(ratios)} suite-cpu Lite0 pairs"
                                   f"{', floored at 1' if floor else ''})")


@functools.lru_cache(maxsize=None)
def forward_flops(model: str, size: int) -> float:
    """FLOPs of one image's forward pass (torch's FLOP counter; random weights, 10 classes)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fastretrain.models import create_model

    net = create_model(model, num_classes=10).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def phase1_ratio(folder: Path) -> float:
    """Kernel rescaling's low-resolution epoch over a full-resolution epoch of the same cell, median over cells."""
    ratios = []
    for c in _cells(folder):
        h = _history(c)
        low = [x["epoch_seconds"] for x in h if x.get("kernel_rescale_phase") == 1]
        full = [x["epoch_seconds"] for x in h if x.get("kernel_rescale_phase") == 2]
        if low and full:
            ratios.append(statistics.median(low) / statistics.median(full))
    return statistics.median(ratios)


def subnet_ratio(folder: Path) -> float:
    """Wall time of one sub-network epoch (all K in parallel) over a global epoch of the same decompose cell,
    median over cells: subnet_seconds / sub_epochs over the median global epoch_seconds."""
    ratios = []
    for c in _cells(folder):
        cfg, h = json.loads((c / "config.json").read_text()), _history(c)
        sub = (cfg.get("options", {}).get("decompose", {}).get("sub_epochs")) or cfg["epochs"] // 2
        ratios.append(h[0]["subnet_seconds"] / sub / statistics.median(x["epoch_seconds"] for x in h))
    return statistics.median(ratios)


def _split_sizes(base: dict) -> tuple[int, int, int]:
    """(training, validation, test images) of a regime's data: max_train split 9:1 (val_fraction 0.1); the
    CIFAR-10 subset's fixed test split (3,000)."""
    train = round(base["max_train"] * 0.9)
    return train, base["max_train"] - train, 3000


def estimate(regime: Regime, root: Path = RESULTS) -> dict:
    """Minutes per cell of each row on this 2-core CPU, from the committed cells the regime's `cost` names:
    epoch = per-image training seconds (x the FLOP ratio to the source's model and size) x training images x the
    row's cost; + evaluation (validation every epoch, test on the source suite's measured share of epochs) at
    EVAL_PER_TRAIN x a training image; + CELL_SETUP_S."""
    c = regime.cost
    src = image_seconds(root / c["source"], root)
    lines = [f"per-image training cost {1000 * src['per_image']:.2f} ms: {c['source']} (median epoch "
             f"{src['epoch_seconds']:.1f} s for {src['train_images']:.0f} images; cells {', '.join(src['cells'])})"]
    per_image, scale = src["per_image"], 1.0
    if c.get("scale"):
        m0, s0, m1, s1 = c["scale"]
        scale = forward_flops(m1, s1) / forward_flops(m0, s0)
        per_image *= scale
        lines.append(f"x {scale:.2f} = forward FLOPs of {m1} at {s1} px over {m0} at {s0} px (dense convs: more "
                     "FLOPs per second at larger sizes, so this errs long)")
    v3_root = root / "suite-v3" / "cifar10-96-lite0"
    f_test = test_fraction(v3_root)
    lines.append(f"test scored on {f_test:.0%} of epochs (test_eval=improved, measured over suite-v3/"
                 "cifar10-96-lite0's cells)")
    train_n, val_n, test_n = _split_sizes(regime.base)
    epoch = per_image * train_n
    eval_epoch = EVAL_PER_TRAIN * per_image * (val_n + f_test * test_n)
    rows = {}
    for row in regime.rows:
        method = row.method.split("[")[0]
        if method == "kernel-rescale":
            p1 = phase1_ratio(root / c["phase1"])
            low = math.floor(0.4 * row.epochs)  # the default cap decides in every committed run
            train_s = epoch * (low * p1 + row.epochs - low)
            note = f"{low} of {row.epochs} epochs at {p1:.2f}x (phase 1, measured in {c['phase1']})"
            evals = row.epochs
        elif method == "decompose":
            r = subnet_ratio(root / c["subnets"])
            train_s = epoch * (DEC_SUB_EPOCHS * r + row.epochs - DEC_SUB_EPOCHS)
            note = f"{DEC_SUB_EPOCHS} sub-network epochs at {r:.2f}x a global epoch (measured in {c['subnets']})"
            evals = row.epochs - DEC_SUB_EPOCHS + 1  # + the evaluation at composition
        else:
            ratio, note = method_ratio(row.method, root)
            train_s, evals = epoch * ratio * row.epochs, row.epochs
        seconds = train_s + evals * eval_epoch + CELL_SETUP_S
        rows[row.label] = {"minutes": seconds / 60, "train_minutes": train_s / 60, "note": note}
    return {"epoch_seconds": epoch, "eval_seconds": eval_epoch, "scale": scale, "rows": rows, "sources": lines}


def estimate_cpu_v2(root: Path = RESULTS, seeds: int = SEEDS) -> dict:
    """Minutes per pending cell of the missing cpu-v2 rows: that comparison's SGDM cells' training time x the
    method's cost (fast-retrain,rifle: that comparison's fast-retrain/SGDM ratio), + evaluation of validation and
    test after every epoch (cpu-v2's runs score test every epoch) + CELL_SETUP_S."""
    suite = {cid: (base, methods) for cid, base, methods, _ in v3.v2.SUITES["cpu-v2"]}
    out, lines = {}, []
    for cid in CPU_V2_IDS:
        base, methods = suite[cid]
        folder = root / "suite-cpu-v2" / cid
        src = image_seconds(folder / "sgdm", root)
        sgdm_wall = statistics.median(json.loads((c / "summary.json").read_text())["wall_seconds"]
                                      for c in _cells(folder / "sgdm"))
        s0 = json.loads((folder / "sgdm" / "seed0" / "summary.json").read_text())
        eval_s = base["epochs"] * EVAL_PER_TRAIN * src["per_image"] * (s0.get("val_images", 0) + s0["test_images"])
        fr = statistics.median(json.loads((c / "summary.json").read_text())["wall_seconds"] /
                               json.loads((folder / "sgdm" / c.name / "summary.json").read_text())["wall_seconds"]
                               for c in _cells(folder / "fast-retrain"))
        lines.append(f"{cid}: SGDM cell {sgdm_wall:.0f} s training (median of suite-cpu-v2/{cid}/sgdm), "
                     f"+ {eval_s:.0f} s evaluation; fast-retrain {fr:.2f}x SGDM there")
        for m in CPU_V2_ROWS:
            assert m in methods, f"cpu-v2's {cid} no longer lists {m}"
            ratio, note = (fr, f"as fast-retrain in {cid}") if m == "fast-retrain,rifle" else method_ratio(m, root)
            pending = [s for s in range(seeds) if not (folder / slug(m) / f"seed{s}" / "summary.json").is_file()]
            minutes = (sgdm_wall * ratio + eval_s + CELL_SETUP_S) / 60
            out[(cid, m)] = {"minutes": minutes, "pending": pending, "note": note}
    return {"cells": out, "sources": lines}


# ---------------------------------------------------------------------------------------------------------------
# Running


def regimes(root: Path = RESULTS) -> list[Regime]:
    """The three paper regimes (decompose's split from the committed decompose cells' measured cost)."""
    return [RIFLE, KERNEL_RESCALE, decompose_regime(subnet_ratio(root / DECOMPOSE_SOURCE))]


def cell_path(regime: Regime, label: str, seed: int, out: Path = ROOT) -> Path:
    return out / regime.name / slug(label) / f"seed{seed}"


def fields(regime: Regime, row: Row, seed: int) -> dict:
    """The TrainConfig fields of one cell."""
    return {**cell_config({**regime.base, "seed": seed}, row.method), "epochs": row.epochs}


def finished(path: Path) -> bool:
    """evidence_v3's rule (finished, with its cores); a composed run's sub-network phase computes in child processes
    that record no CPU time, so its share is judged on the global phase (wall time after the sub-networks)."""
    summary = path / "summary.json"
    if not summary.is_file():
        return False
    first = (_history(path) or [{}])[0]
    if "subnet_seconds" not in first:
        return done(path)
    s = json.loads(summary.read_text())
    return contended({**s, "wall_seconds": s["wall_seconds"] - first["subnet_seconds"]}) is None


def plan(regime: Regime, seeds: int, out: Path = ROOT) -> list[tuple[Row, int, Path]]:
    """Every cell in run order: each seed's core rows back to back, seeds interleaved, then the after-core rows."""
    order = []
    for after_core in (False, True):
        for seed in range(seeds):
            order += [(row, seed, cell_path(regime, row.label, seed, out)) for row in regime.rows
                      if row.after_core == after_core]
    return order


def counts(regime: Regime, path: Path, out: Path = ROOT) -> bool:
    """A cell counts when `finished` and on the machine and session (boot id) of its seed's baseline cell, whose
    training time sets the seed's budget (evidence_v3's machine rule)."""
    anchor = cell_path(regime, regime.baseline, int(path.name[4:]), out)
    return finished(path) and (path == anchor or (finished(anchor) and cell_machine(path) == cell_machine(anchor)))


def run_regime(regime: Regime, seeds: int, env: dict, deadline: float | None, out: Path = ROOT,
               runner=run_cell) -> bool:
    """Run the regime's pending cells in order; False when the deadline stopped it. A seed whose baseline ran on
    another machine or session while some of its cells are pending runs again whole here."""
    for seed in range(seeds):
        anchor = cell_path(regime, regime.baseline, seed, out)
        if finished(anchor) and cell_machine(anchor) != env.get("boot_id") and any(
                not counts(regime, p, out) and not (p / "failed.json").is_file()
                for _, s, p in plan(regime, seeds, out) if s == seed):
            shutil.rmtree(anchor)
    for row, seed, path in plan(regime, seeds, out):
        if counts(regime, path, out) or (path / "failed.json").is_file():
            continue
        if deadline is not None and time.monotonic() > deadline:
            return False
        runner(path, fields(regime, row, seed), env)
    return True


def order(root: Path = RESULTS, seeds: int = SEEDS) -> list[tuple[str, float, int]]:
    """(regime, estimated minutes of its pending cells, pending cells), cheapest first."""
    out = []
    for regime in regimes(root):
        est = estimate(regime, root)["rows"]
        pending = [(row, s) for row, s, p in plan(regime, seeds) if not counts(regime, p)]
        out.append((regime.name, sum(est[row.label]["minutes"] for row, _ in pending), len(pending)))
    v2 = estimate_cpu_v2(root, seeds)["cells"]
    out.append(("cpu-v2-rows", sum(c["minutes"] * len(c["pending"]) for c in v2.values()),
                sum(len(c["pending"]) for c in v2.values())))
    return sorted(out, key=lambda x: x[1])


def dry_run(root: Path = RESULTS, seeds: int = SEEDS) -> str:
    lines = []
    for regime in regimes(root):
        est = estimate(regime, root)
        cells = plan(regime, seeds)
        pending = [(row, s) for row, s, p in cells if not counts(regime, p)]
        total = sum(est["rows"][row.label]["minutes"] for row, _ in pending)
        lines += [f"== {regime.name}: {regime.paper}; claim: {regime.claim}",
                  f"   {len(cells)} cells ({len(pending)} pending), estimated {total:.0f} min = {total / 60:.1f} h "
                  f"on this 2-core CPU; epoch {est['epoch_seconds']:.0f} s + evaluation {est['eval_seconds']:.1f} s",
                  *(f"   cost: {s}" for s in est["sources"])]
        for row in regime.rows:
            r = est["rows"][row.label]
            lines.append(f"   {row.label:<16} {row.epochs:>3} epochs x {seeds} seeds, {r['minutes']:5.1f} min/cell "
                         f"({'after the core rows; ' if row.after_core else ''}{r['note']})")
    v2 = estimate_cpu_v2(root, seeds)
    n = sum(len(c["pending"]) for c in v2["cells"].values())
    total = sum(c["minutes"] * len(c["pending"]) for c in v2["cells"].values())
    lines += [f"== cpu-v2-rows: {n} pending cells of {', '.join(CPU_V2_ROWS)} on {', '.join(CPU_V2_IDS)}, "
              f"estimated {total:.0f} min = {total / 60:.1f} h",
              *(f"   cost: {s}" for s in v2["sources"]),
              *(f"   {cid} {m}: {c['minutes']:.1f} min/cell, pending seeds {c['pending']} ({c['note']})"
                for (cid, m), c in v2["cells"].items()),
              "   command: python benchmarks/run.py " + " ".join(CPU_V2_COMMAND)]
    ranked = order(root, seeds)
    lines += ["== order (cheapest first): " + "; ".join(f"{i}. {n} ({m / 60:.1f} h, {k} cells)"
                                                       for i, (n, m, k) in enumerate(ranked, 1)),
              f"== total: {sum(m for _, m, _ in ranked) / 60:.1f} CPU hours"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Reading and judging the cells (fixed rules, stated before any cell ran)

RIFLE_MIN_PT = 0.5  # the paper's smallest claimed gain over a trick
KR_MAX_TIME_RATIO = 0.85  # "~20% less time": at least 15% less, and outside the same-work control's spread


def load(regime: Regime, out: Path = ROOT) -> dict[str, dict[int, dict]]:
    """The regime's finished cells: {row label: {seed: {"summary", "history", "env"}}}."""
    cells: dict[str, dict[int, dict]] = {}
    for row in regime.rows:
        for s in sorted((out / regime.name / slug(row.label)).glob("seed*")):
            if counts(regime, s, out):
                envf = s / "environment.json"
                cells.setdefault(row.label, {})[int(s.name[4:])] = {
                    "summary": json.loads((s / "summary.json").read_text()), "history": _history(s),
                    "env": json.loads(envf.read_text()) if envf.is_file() else {}}
    return cells


def analyse(regime: Regime, cells: dict) -> dict:
    """Per row: delivered accuracy at the seed's budget (the baseline's training time x BUDGET_SLACK) and at the
    end of its own schedule, paired differences against the baseline, time to the target, time ratio."""
    base = cells.get(regime.baseline, {})
    budget = {s: r["summary"]["wall_seconds"] for s, r in base.items()}
    finals = [ev.final(r["history"]) for r in base.values()]
    target = float(np.mean(finals)) - ev.TARGET_BELOW_PT / 100 if finals else None
    controls = [c for runs in cells.values() for r in runs.values() for c in r["env"].get("control_seconds", [])]
    spread = ev.spread(controls)
    chance = 1 / next(iter(base.values()))["summary"]["num_classes"] if base else 0.0
    rows = {}
    for row in regime.rows:
        runs = cells.get(row.label, {})
        at_budget = {s: (ev.acc_at(r["history"], budget[s] * ev.BUDGET_SLACK) or chance)
                     for s, r in runs.items() if s in budget}
        own = {s: ev.final(r["history"]) for s, r in runs.items()}
        diffs = [100 * (at_budget[s] - ev.final(base[s]["history"])) for s in sorted(at_budget)]
        times = {s: ev.time_to(r["history"], target) for s, r in runs.items()} if target is not None else {}
        reach = [r for s in times if s in base
                 and (r := ev.time_ratio(times[s], ev.time_to(base[s]["history"], target))) is not None]
        wall = [r["summary"]["wall_seconds"] / budget[s] for s, r in runs.items() if s in budget]
        med_reach = float(np.median(reach)) if len(reach) >= ev.MIN_SEEDS else None
        med_wall = float(np.median(wall)) if wall else None
        rows[row.label] = {"at_budget": at_budget, "final": own, "diffs": diffs, "n": len(diffs),
                           "verdict": ev.verdict(diffs) if row.label != regime.baseline else None,
                           "reach_times": times, "reached": sum(t is not None for t in times.values()),
                           "reach_ratio": med_reach, "reach_timing": ev.resolved(med_reach, spread) if med_reach is not None
                           else f"n={len(reach)}: needs {ev.MIN_SEEDS}",
                           "time_ratio": med_wall, "timing": ev.resolved(med_wall, spread)}
    return {"regime": regime.name, "seeds": sorted(budget), "budget": budget, "target": target, "spread": spread,
            "chance": chance, "rows": rows, "claim": judge(regime, cells, rows, spread)}


def _paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    return [100 * (a[s] - b[s]) for s in sorted(a) if s in b]


def judge(regime: Regime, cells: dict, rows: dict, spread: float | None) -> dict:
    """The paper's claim by its fixed rule; each criterion with its numbers."""
    crit = {}
    if regime.name == "rifle":  # RIFLE beats each trick by >= 0.5 pt, a gain beyond one paired std (equal budget)
        mine = rows["rifle"]["at_budget"]
        for t in TRICKS:
            d = _paired(mine, rows[t]["at_budget"])
            v = ev.verdict(d)
            crit[f"rifle vs {t}"] = {"diffs": d, "verdict": v,
                                     "holds": None if v is None else bool(v == "gain" and np.mean(d) >= RIFLE_MIN_PT)}
        held = [c["holds"] for c in crit.values()]
        if any(h is None for h in held):
            result = f"pending (fewer than {ev.MIN_SEEDS} paired seeds)"
        else:
            k = sum(held)
            result = "reproduced" if k == len(held) else "partly" if 2 * k >= len(held) else "not reproduced"
            result += f" ({k} of {len(held)} tricks)"
        return {"criteria": crit, "result": result}
    if regime.name == "kernel-rescale":  # no loss against SGDM-16 and >= 15% less time, resolved
        r = rows["kernel-rescale"]
        crit["no loss vs SGDM, same epochs"] = {"diffs": r["diffs"], "verdict": r["verdict"],
                                                "holds": None if r["verdict"] is None else r["verdict"] != "loss"}
        ratio, faster = r["time_ratio"], r["timing"] == "faster"
        crit["time ratio"] = {"ratio": ratio, "timing": r["timing"],
                              "holds": None if ratio is None else ratio <= KR_MAX_TIME_RATIO and faster}
        same_time = f"sgdm-e{round(0.8 * KR_EPOCHS)}"
        d = _paired(r["final"], rows[same_time]["final"])
        crit[f"vs SGDM in the same time ({same_time}; reported, not part of the claim)"] = {
            "diffs": d, "verdict": ev.verdict(d), "holds": None}
    else:  # decompose: starts better, reaches the target sooner, no loss at the budget
        r, base = rows["composed-K2"], cells.get(regime.baseline, {})
        chance = 1 / next(iter(base.values()))["summary"]["num_classes"] if base else 0.0
        start = {}  # seed -> (composed's first delivered accuracy, random init's delivered accuracy at that time)
        for s, rec in cells.get("composed-K2", {}).items():
            pts = ev.delivered(rec["history"])
            if pts and s in base:
                t1, a1 = pts[0]
                b1 = ev.acc_at(base[s]["history"], t1)
                start[s] = (a1, chance if b1 is None else b1)
        d0 = [100 * (a - b) for a, b in start.values()]
        v0 = ev.verdict(d0)
        crit["starts better (delivered at its first global epoch vs random init at that time)"] = {
            "diffs": d0, "verdict": v0, "holds": None if v0 is None else v0 == "gain"}
        crit["reaches the target sooner"] = {"ratio": r["reach_ratio"], "timing": r["reach_timing"],
                                             "holds": None if r["n"] < ev.MIN_SEEDS else r["reach_timing"] == "faster"}
        crit["no loss at the budget"] = {"diffs": r["diffs"], "verdict": r["verdict"],
                                         "holds": None if r["verdict"] is None else r["verdict"] != "loss"}
    held = [c["holds"] for k, c in crit.items() if "not part of the claim" not in k]
    if any(h is None for h in held):
        result = f"pending (fewer than {ev.MIN_SEEDS} paired seeds)"
    else:
        result = "reproduced" if all(held) else "not reproduced (" + ", ".join(
            k for k, c in crit.items() if c["holds"] is False) + ")"
    return {"criteria": crit, "result": result}


def table_md(regime: Regime, a: dict) -> str:
    lines = ["| row | epochs | delivered at the budget (n) | own schedule's final | Δ vs baseline at the budget, pt "
             "(paired) | verdict | time / baseline's | time to target (reached) |", "|---|---|---|---|---|---|---|---|"]
    for row in regime.rows:
        r = a["rows"][row.label]
        ratio = "—" if r["time_ratio"] is None or row.label == regime.baseline else \
            f"{r['time_ratio']:.2f}x ({r['timing']})"
        reach = "—" if r["reach_ratio"] is None else ("never" if math.isinf(r["reach_ratio"]) else
                                                      f"{r['reach_ratio']:.2f}x ({r['reach_timing']})")
        verdict = "baseline" if row.label == regime.baseline else r["verdict"] or f"n={r['n']}: counted nowhere"
        lines.append(f"| `{row.label}` | {row.epochs} | {pm(list(r['at_budget'].values()), '{:.4f}')} "
                     f"({len(r['at_budget'])}) | {pm([x for x in r['final'].values() if x is not None], '{:.4f}')} | "
                     f"{pm(r['diffs']) if row.label != regime.baseline else '—'} | {verdict} | {ratio} | "
                     f"{reach} ({r['reached']} of {len(r['reach_times'])}) |")
    return "\n".join(lines)


def claim_md(a: dict) -> str:
    out = [f"**Claim: {a['claim']['result']}.**"]
    for k, c in a["claim"]["criteria"].items():
        nums = pm(c["diffs"]) + " pt" if "diffs" in c else (
            "—" if c["ratio"] is None else f"{c['ratio']:.2f}x ({c['timing']})")
        state = {True: "holds", False: "fails", None: "no verdict"}[c["holds"]]
        out.append(f"- {k}: {nums}{', ' + c['verdict'] if c.get('verdict') else ''}: {state}")
    return "\n".join(out)


def plot(regime: Regime, cells: dict, a: dict, path: Path) -> None:
    """Delivered accuracy (mean over seeds) against training time for every row, the budget dashed; for RIFLE a
    second panel: validation accuracy per epoch (mean over seeds) of SGDM and RIFLE, resets marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if regime.name == "rifle" else 1
    fig, axes = plt.subplots(1, panels, figsize=(9 * panels, 4.8), squeeze=False)
    ax = axes[0][0]
    tmax = max((r["summary"]["wall_seconds"] for runs in cells.values() for r in runs.values()), default=1.0)
    grid = np.linspace(0, tmax * 1.02, 200)
    for row in regime.rows:
        runs = cells.get(row.label, {})
        if not runs:
            continue
        ys = []
        for t in grid:
            vals = [ev.acc_at(r["history"], t) for r in runs.values()]
            ys.append(np.mean(vals) if all(v is not None for v in vals) else np.nan)
        ax.plot(grid, ys, label=row.label, lw=1.4)
    if a["budget"]:
        ax.axvline(np.mean(list(a["budget"].values())), color="grey", ls="--", lw=0.8)
    ax.set_xlabel(f"training time (s); dashed: the budget ({regime.baseline}'s time)")
    ax.set_ylabel("delivered test accuracy (mean over seeds)")
    ax.set_title(f"{regime.name}: {regime.paper}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if panels == 2:
        ax = axes[0][1]
        for label in ("sgdm", "rifle"):
            runs = cells.get(label, {})
            if runs:
                n = min(len(r["history"]) for r in runs.values())
                val = [np.mean([r["history"][i]["val_acc"] for r in runs.values()]) for i in range(n)]
                ax.plot(range(1, n + 1), val, label=label)
        for b in (RIFLE_EPOCHS // 4 * k for k in (1, 2, 3)):
            ax.axvline(b + 0.5, color="red", ls=":", lw=0.8)
        ax.set_xlabel("epoch (dotted: RIFLE's head resets, after epochs 10, 20, 30)")
        ax.set_ylabel("validation accuracy (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


RULES = (f"Fixed rules (fastretrain/evidence.py and this file, stated before any cell ran): a row's accuracy at the "
         f"budget is its delivered-model curve (test accuracy of its validation-best model so far) at training time "
         f"<= {ev.BUDGET_SLACK} x the same seed's baseline training time (chance if nothing by then); differences "
         f"are paired by seed against the baseline's final delivered accuracy; gain: mean - std > 0; no loss: mean "
         f">= -{ev.NO_LOSS_MEAN_PT} pt and mean - std >= -{ev.NO_LOSS_FLOOR_PT} pt; fewer than {ev.MIN_SEEDS} "
         f"seeds: no verdict. Time ratios count only outside the same-work control's spread. RIFLE: reproduced "
         f"against a trick when RIFLE - trick is a gain of >= {RIFLE_MIN_PT} pt; 'partly' when it holds against at "
         f"least half of the five. Kernel rescaling: no loss against SGDM at the same epochs and a time ratio <= "
         f"{KR_MAX_TIME_RATIO} resolved faster. Decomposition: a gain at its first global epoch against random init "
         "at the same time, time to target resolved faster, no loss at the budget. A cell counts when its process "
         f"computed for >= {v3.MIN_CPU_SHARE:.0%} of its threads' wall time (a composed run: its global phase).")


def render(out: Path = ROOT, root: Path = RESULTS) -> list[Path]:
    written, parts = [], ["# Issue 26: the source papers in their own regimes\n",
                          "Rendered by `python benchmarks/papers.py --render` from benchmarks/results/papers/; "
                          "plan and commands: docs/papers_plan.md.\n", RULES + "\n"]
    for regime in regimes(root):
        cells = load(regime, out)
        n = sum(len(v) for v in cells.values())
        parts.append(f"## {regime.name}: {regime.paper}\n\nClaim: {regime.claim}. {n} of "
                     f"{len(regime.rows) * SEEDS} cells finished.\n")
        if regime.baseline not in cells:
            parts.append("No baseline cell has finished: nothing to judge yet.\n")
            continue
        a = analyse(regime, cells)
        folder = out / regime.name
        md = f"{claim_md(a)}\n\n{table_md(regime, a)}\n\n![delivered accuracy vs time](delivered.png)\n"
        (folder / "results.md").write_text(f"# {regime.name}\n\n{RULES}\n\n{md}")
        atomic_json(a, folder / "results.json")
        plot(regime, cells, a, folder / "delivered.png")
        written += [folder / "results.md", folder / "results.json", folder / "delivered.png"]
        parts.append(md.replace("](delivered.png)", f"]({regime.name}/delivered.png)"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(parts))
    return [*written, out / "report.md"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="regimes to run (default: all, in --dry-run's order)")
    ap.add_argument("--seeds", type=int, default=SEEDS)
    ap.add_argument("--budget-minutes", type=float, help="start no new cell after this many minutes")
    ap.add_argument("--dry-run", action="store_true", help="print the cells, estimated minutes and order; run nothing")
    ap.add_argument("--render", action="store_true", help="only judge and render the finished cells")
    args = ap.parse_args(argv)
    if args.dry_run:
        print(dry_run(seeds=args.seeds))
        return
    if not args.render:
        deadline = time.monotonic() + 60 * args.budget_minutes if args.budget_minutes else None
        env, by_name = environment(), {r.name: r for r in regimes()}
        for name, _, _ in order(seeds=args.seeds):
            if args.only and name not in args.only:
                continue
            if name == "cpu-v2-rows":  # benchmarks/run.py's own resumable suite
                late = deadline is not None and time.monotonic() > deadline
                left = None if deadline is None else max((deadline - time.monotonic()) / 60, 0.0)
                if not late:
                    v3.v2.main([*CPU_V2_COMMAND, "--seeds", str(args.seeds)] +
                               (["--budget-minutes", f"{left:.1f}"] if left is not None else []))
            elif not run_regime(by_name[name], args.seeds, env, deadline):
                break
    for path in render():
        print(f"written {path}")


if __name__ == "__main__":
    main()
