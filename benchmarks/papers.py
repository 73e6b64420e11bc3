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
all cores, one seed's rows back to back (its group), then the next seed's; a finished cell is skipped unless it
did not get its cores (evidence_v3's `done` / `contended`) or ran on another machine than its seed's baseline
(`counts`), so rerunning the command continues; a group that would not finish before --budget-minutes' deadline
is not started. `--dry-run` prints, per
regime, the cells, the estimated minutes on this 2-core CPU from the committed cells' measured costs (named; at
this machine's measured speed when they ran elsewhere: evidence_v3's `machine_speed`), and
the order to run (cheapest first). `--render` judges the finished cells by the fixed rules below
(results.md / results.json / delivered.png per regime, report.md), then docs/BENCHMARKS.md, which
quotes each regime's verdict. docs/papers_plan.md is the plan.

Usage: python benchmarks/papers.py --dry-run
       python benchmarks/papers.py [--only REGIME ...] [--seeds 3] [--budget-minutes N]
       python benchmarks/papers.py --render
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import evidence_v3 as v3  # noqa: E402  (suite v3: its cells' config, resume rule and cell runner are reused)
from evidence_v3 import begun_elsewhere, cell_machine, contended, done, run_cell  # noqa: E402
from fastretrain.bench import cell_config, environment, slug  # noqa: E402

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


def estimate(regime: Regime, root: Path = RESULTS, boot: str | None = None) -> dict:
    """Minutes per cell of each row on this 2-core CPU, from the regime's own finished baseline cells when it has
    some, else from the committed cells its `cost` names: epoch = per-image training seconds (x the FLOP ratio to
    the source's model and size, for a source other than its own cells; x this machine's measured speed,
    evidence_v3's `machine_speed(boot)`, with `boot` given and a source cell run elsewhere) x training images x the
    row's cost; + evaluation (validation every epoch, test on the source suite's measured share of epochs) at
    EVAL_PER_TRAIN x a training image; + CELL_SETUP_S."""
    c = regime.cost
    own = root / "papers" / regime.name / slug(regime.baseline)  # its own baseline cells, once some have finished
    source = own.relative_to(root) if _cells(own) else c["source"]
    src = image_seconds(root / source, root)
    lines = [f"per-image training cost {1000 * src['per_image']:.2f} ms: {source} (median epoch "
             f"{src['epoch_seconds']:.1f} s for {src['train_images']:.0f} images; cells {', '.join(src['cells'])})"]
    per_image, scale = src["per_image"], 1.0
    if c.get("scale") and source == c["source"]:
        m0, s0, m1, s1 = c["scale"]
        scale = forward_flops(m1, s1) / forward_flops(m0, s0)
        per_image *= scale
        lines.append(f"x {scale:.2f} = forward FLOPs of {m1} at {s1} px over {m0} at {s0} px (dense convs: more "
                     "FLOPs per second at larger sizes, so this errs long)")
    if boot is not None and any(cell_machine(root / p) != boot for p in src["cells"]):
        speed = v3.machine_speed(boot)
        per_image *= speed
        lines.append(f"x {speed:.2f}: this machine's speed against the others' (evidence_v3.machine_speed)")
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
    """Every cell in run order: one seed's rows back to back (its core rows, then its after-core rows), then the
    next seed's. A seed's group is the unit a session finishes: under the machine rule (`counts`) a group left
    unfinished is run again whole on the next machine."""
    return [(row, seed, cell_path(regime, row.label, seed, out)) for seed in range(seeds)
            for after_core in (False, True) for row in regime.rows if row.after_core == after_core]


def counts(regime: Regime, path: Path, out: Path = ROOT) -> bool:
    """A cell counts when `finished` and on the machine and session (boot id) of its seed's baseline cell, whose
    training time sets the seed's budget (evidence_v3's machine rule)."""
    anchor = cell_path(regime, regime.baseline, int(path.name[4:]), out)
    return finished(path) and (path == anchor or (finished(anchor) and cell_machine(path) == cell_machine(anchor)))


def run_regime(regime: Regime, seeds: int, env: dict, deadline: float | None, out: Path = ROOT,
               runner=run_cell, minutes: dict[str, float] | None = None) -> bool:
    """Run the regime's pending cells in order; False when the deadline stopped it, or when a seed's pending group
    would not finish before it (`minutes` per row label: `estimate`'s, from measured costs). A seed whose baseline
    ran on another machine or session while some of its cells are pending runs again whole here."""
    for seed in range(seeds):
        group = [(row, path) for row, s, path in plan(regime, seeds, out) if s == seed]
        anchor = cell_path(regime, regime.baseline, seed, out)
        todo = [(row, path) for row, path in group if not counts(regime, path, out)
                and not (path / "failed.json").is_file()]
        if begun_elsewhere(anchor, lambda: bool(todo), env.get("boot_id"), finished):
            todo = [(row, path) for row, path in group if not (path / "failed.json").is_file()]
        if not todo:
            continue
        if deadline is not None:
            if minutes is None:
                est = estimate(regime, boot=env.get("boot_id"))["rows"]
                minutes = {label: r["minutes"] for label, r in est.items()}
            if time.monotonic() + 60 * sum(minutes.get(row.label, 0.0) for row, _ in todo) > deadline:
                return False
        for row, path in todo:
            if not counts(regime, path, out):
                runner(path, fields(regime, row, seed), env)
    return True


def order(root: Path = RESULTS, seeds: int = SEEDS, boot: str | None = None) -> list[tuple[str, float, int]]:
    """(regime, estimated minutes of its pending cells, pending cells), cheapest first."""
    out = []
    for regime in regimes(root):
        est = estimate(regime, root, boot)["rows"]
        pending = [(row, s) for row, s, p in plan(regime, seeds) if not counts(regime, p)]
        out.append((regime.name, sum(est[row.label]["minutes"] for row, _ in pending), len(pending)))
    v2 = estimate_cpu_v2(root, seeds)["cells"]
    out.append(("cpu-v2-rows", sum(c["minutes"] * len(c["pending"]) for c in v2.values()),
                sum(len(c["pending"]) for c in v2.values())))
    return sorted(out, key=lambda x: x[1])


def dry_run(root: Path = RESULTS, seeds: int = SEEDS, boot: str | None = None) -> str:
    lines = []
    for regime in regimes(root):
        est = estimate(regime, root, boot)
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
    ranked = order(root, seeds, boot)
    lines += ["== order (cheapest first): " + "; ".join(f"{i}. {n} ({m / 60:.1f} h, {k} cells)"
                                                       for i, (n, m, k) in enumerate(ranked, 1)),
              f"== total: {sum(m for _, m, _ in ranked) / 60:.1f} CPU hours"]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="regimes to run (default: all, in --dry-run's order)")
    ap.add_argument("--seeds", type=int, default=SEEDS)
    ap.add_argument("--budget-minutes", type=float, help="start no new cell after this many minutes")
    ap.add_argument("--dry-run", action="store_true", help="print the cells, estimated minutes and order; run nothing")
    ap.add_argument("--render", action="store_true", help="only judge and render the finished cells")
    args = ap.parse_args(argv)
    if args.dry_run:
        print(dry_run(seeds=args.seeds, boot=environment().get("boot_id")))
        return
    if not args.render:
        deadline = time.monotonic() + 60 * args.budget_minutes if args.budget_minutes else None
        env, by_name = environment(), {r.name: r for r in regimes()}
        for name, _, _ in order(seeds=args.seeds, boot=env.get("boot_id")):
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
    from papers_report import render  # judging reads this module's regimes and cells

    for path in [*render(), *v3.v2.render_all(plots=False)]:  # docs/BENCHMARKS.md reads each regime's verdict
        print(f"written {path}")


if __name__ == "__main__":
    main()
