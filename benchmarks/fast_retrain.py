"""Benchmark of fast retraining (METHODS.md §1, issues 4 and 13): accuracy vs time against SGDM, and the
micro-measurements behind its performance goals.

  grid   the ablation (ABLATION): SGDM, the linear probe, fast-retrain's default and each ingredient
         switched back (uniform freezing draw, no ridge head, refinement after every epoch), the parts
         alone and the authors' variant, side by side under one recipe: same data, backbone, config and
         epochs, seeds 0..S-1 (paired). Writes results.json, results.md (paired accuracy differences, time
         to SGDM's final accuracy, refinement and ridge-head seconds) and accuracy_vs_time.png. The labels
         are bench cell labels and work unchanged in a suite (benchmarks/run.py) method list.
  micro  measured side by side in one process, interleaved over repeats: a training epoch at trainable
         ratio r (random-freeze) vs a full-backprop epoch; one inference pass over the training set vs
         the refinement (extra-pass mode, GCV and fixed C) vs the online mode's cost.
  step   (issue 13) the cost of one training step (forward, backward, SGD step; batch 32) under each
         freezing policy (uniform draw, bottom block) at trainable ratios 0.75 / 0.5 / 0.25, relative to
         nothing frozen; every repeat measures every variant in a rotated order, ratios are paired within
         a repeat. Synthetic inputs (the step's cost does not depend on pixel values).

CPU-sized defaults finish here (2 shared cores); `--gpu` picks a larger config for a lent GPU.

  OMP_NUM_THREADS=1 python benchmarks/fast_retrain.py grid --data flowers5 --image-size 128 --epochs 8
  OMP_NUM_THREADS=1 python benchmarks/fast_retrain.py grid --data fashion-mnist
  OMP_NUM_THREADS=1 python benchmarks/fast_retrain.py grid --data flowers5
  OMP_NUM_THREADS=1 python benchmarks/fast_retrain.py micro
  OMP_NUM_THREADS=1 python benchmarks/fast_retrain.py step --image-size 128 --reps 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from fastretrain import bench
from fastretrain.checkpoint import atomic_json

RESULTS = Path(__file__).parent / "results" / "fast_retrain"
# cell labels (bench.cell_config: a method spec with options of its own); the same labels work in a suite's list
AUTHORS = "fast-retrain[random-freeze.policy=uniform;mp-refine.init_head=False;mp-refine.until=None;mp-refine.C=4.0]"
ABLATION = [
    "sgdm", "linear-probe", "fast-retrain",  # the default: bottom-block freezing + ridge head + refinement ep. 1-2
    "fast-retrain[random-freeze.policy=uniform]",  # freezing policy: the authors' uniform draw instead
    "fast-retrain[mp-refine.init_head=False]",  # no ridge head before epoch 1
    "fast-retrain[mp-refine.until=None]",  # refinement after every epoch
    "random-freeze", "mp-refine",  # the parts alone (their defaults: bottom block; ridge head + refinement ep. 1-2)
    AUTHORS,  # the authors' variant (with --recipe authors: their optimisation settings too)
]
METHODS = ABLATION
ONLINE = "fast-retrain[mp-refine.features=online]"


def base_config(args) -> dict:
    gpu = args.gpu
    size = args.image_size or (128 if gpu else 32)
    max_train = args.max_train if args.max_train else (None if gpu else 1000)
    return {
        "data": args.data, "model": args.model, "pretrained": True, "image_size": size, "max_train": max_train,
        "epochs": args.epochs, "batch_size": 32, "lr": args.lr, "schedule": args.schedule, "recipe": args.recipe,
        "optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "device": "cuda" if gpu else "cpu",
        "progress": False, "save_checkpoint": False, "save_weights": False,
    }  # one recipe for every cell (METHODS.md §6); --recipe overrides the optimisation fields it sets


def grid(args) -> None:
    base = {k: v for k, v in base_config(args).items() if v is not None}
    if base.get("recipe"):  # the recipe's fields replace the defaults above (as the CLI does for unset flags)
        from fastretrain.methods import RECIPES

        for k in RECIPES[base["recipe"]].fields:
            base.pop(k, None)
    tag = args.tag or args.data
    cells = Path(args.cells) / tag  # run folders stay out of git
    out = RESULTS / tag
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seeds))
    run_seeds = args.only_seeds if args.only_seeds is not None else seeds  # e.g. a second process takes seed 2
    methods = list(args.methods)
    if not args.reuse_only:
        bench.run_cells(base, methods, run_seeds, cells)  # seeds outer: a partial run compares every method on seed 0
    records = [bench.load_record(bench.cell_dir(cells, m, s), m, s) for s in seeds for m in methods
               if bench.cell_done(cells, m, s)]
    if args.only_seeds is not None:
        return  # a helper process: the run without --only-seeds writes the tables
    methods = [m for m in methods if any(r["method"] == m for r in records)]
    extra = ("refine_seconds", "init_head_seconds")
    rows = bench.aggregate(records, "sgdm", extra)
    table = bench.markdown_table(rows, "sgdm", extra)
    env = bench.environment()
    size, epochs = base["image_size"], base.get("epochs")
    title = f"fast retraining: {base['model']} (ImageNet) on {args.data}, {size} px, {epochs} epochs"
    bench.plot_curves(records, out / "accuracy_vs_time.png", title)
    before = {m: [[h.get("test_acc_before_refine") for h in r["history"]] for r in records if r["method"] == m]
              for m in methods}
    atomic_json({"config": base, "methods": methods, "seeds": seeds, "environment": env, "rows": rows,
                 "test_acc_before_refine": before, "runs": records}, out / "results.json")
    gpu = f", GPU {env['gpu']}" if env["gpu"] else ""
    (out / "results.md").write_text(
        f"# {title}\n\nCommand: `{env['command']}`  \nCode: {env['commit']}, torch {env['torch']}, "
        f"{env['cpu_count']} CPU cores, {env['torch_threads']} torch threads{gpu}  \nConfig (every method): "
        f"`{json.dumps(base, sort_keys=True)}`\n\n{table}\n\n{per_epoch_table(records, methods)}\n\n"
        "![accuracy vs time](accuracy_vs_time.png)\n"
    )
    print(table)


def per_epoch_table(records, methods) -> str:
    """Mean test accuracy per epoch (and before the refinement, where there is one)."""
    n = max(len(r["history"]) for r in records)
    lines = ["Mean test accuracy after each epoch (before → after the refinement where there is one):", "",
             "| method | " + " | ".join(f"ep {e + 1}" for e in range(n)) + " |", "|---|" + "---|" * n]
    for m in methods:
        hs = [r["history"] for r in records if r["method"] == m]
        cells = []
        for e in range(n):
            after = [h[e]["test_acc"] for h in hs if len(h) > e]
            pre = [h[e]["test_acc_before_refine"] for h in hs if len(h) > e and "test_acc_before_refine" in h[e]]
            text = (f"{statistics.mean(pre):.3f} → " if pre else "") + f"{statistics.mean(after):.3f}"
            cells.append(text if after else "—")
        lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ micro


class Clock:
    """Wall and process-CPU seconds of the training pass (+ after_epoch work) of each epoch. With one
    torch thread, CPU seconds measure the work done even when other processes compete for the cores."""

    def __init__(self):
        self.wall, self.cpu = [], []

    class _Start:
        order = -1000

        def __init__(self, clock):
            self.clock = clock

        def before_epoch(self, engine):
            self.clock.t = (time.perf_counter(), time.process_time())

    class _End:
        order = 1000

        def __init__(self, clock):
            self.clock = clock

        def after_epoch(self, engine):
            w, c = self.clock.t
            self.clock.wall.append(time.perf_counter() - w)
            self.clock.cpu.append(time.process_time() - c)

    def strategies(self):
        return [self._Start(self), self._End(self)]


def timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def micro(args) -> None:
    """Epoch time at several trainable ratios vs full backprop; refinement vs one inference pass.

    Every quantity is measured as wall seconds and process-CPU seconds, interleaved over repeats.
    """
    from fastretrain.run import build_engine, make_config
    from fastretrain.strategies.mp_refine import MPRefine
    from fastretrain.strategies.random_freeze import RandomFreeze

    out = RESULTS / "micro"
    out.mkdir(parents=True, exist_ok=True)
    base = base_config(args)
    base.update(epochs=1, max_train=args.micro_train, schedule="constant")
    torch.manual_seed(0)
    from fastretrain.data import load_data
    from fastretrain.models import create_model

    data = load_data(base["data"], base["image_size"], max_train=base["max_train"])
    state = create_model(base["model"], data.num_classes, pretrained=True).state_dict()

    def engine(strategies, seed):
        cfg = make_config(**base, method="sgdm", seed=seed)
        cfg.out = None
        model = create_model(base["model"], data.num_classes)
        model.load_state_dict(state)
        return build_engine(cfg, bundle=data, module=model, strategies=strategies)

    def epoch(strategies, seed):
        clock = Clock()
        e = engine(strategies + clock.strategies(), seed)
        e.fit()
        return (clock.wall[0], clock.cpu[0]), e.history[0]

    def inference_pass(e):
        e.model.eval()
        with torch.no_grad():
            for x, _ in e.batches(train=False):
                e.model(x)
        e.model.train()

    def online_cost(e):
        """The online mode's own work for one epoch: per-batch accumulation (timed) + the solve (timed);
        the training forwards that produce the features are not counted (SGD does them anyway)."""
        s = MPRefine(features="online", log_before=False)
        s.before_fit(e)
        s.before_epoch(e)
        wall = cpu = 0.0
        e.model.train()
        for e.iter, (x, e.y) in enumerate(e.batches(train=True)):
            with torch.no_grad():
                e.model(x)
            w, c = timed(lambda: s.after_loss(e))
            wall, cpu = wall + w, cpu + c
        w, c = timed(lambda: s.refine(e))
        s.after_fit(e)
        return wall + w, cpu + c

    ratios = [float(r) for r in args.ratios]
    res: dict[str, list[float]] = {}

    def add(key, wc):
        res.setdefault(key + " wall", []).append(wc[0])
        res.setdefault(key + " cpu", []).append(wc[1])

    for rep in range(args.reps):  # interleaved, so load changes from other processes hit every variant alike
        print(f"-- repeat {rep + 1}/{args.reps}", flush=True)
        add("epoch full backprop", epoch([], rep)[0])
        for r in ratios:
            wc, h = epoch([RandomFreeze(ratios=[r], policy="uniform")], rep)  # (the legacy measurement)
            add(f"epoch r_a={r}", wc)
            res.setdefault(f"r_a={r} frozen_prefix_params", []).append(h["frozen_prefix_params"])
        e = engine([], rep)
        add("inference pass", timed(lambda: inference_pass(e)))
        add("refine pass, C by GCV", timed(lambda: MPRefine(log_before=False).refine(e)))
        add("refine pass, C=4", timed(lambda: MPRefine(C=4.0, log_before=False).refine(e)))
        add("refine online, C by GCV", online_cost(e))
        add("inference pass (again)", timed(lambda: inference_pass(e)))
    mean = {k: statistics.mean(v) for k, v in res.items()}
    out_ratios = {}
    for kind in ("wall", "cpu"):
        full = mean[f"epoch full backprop {kind}"]
        inf = statistics.mean(res[f"inference pass {kind}"] + res[f"inference pass (again) {kind}"])
        for r in ratios:
            out_ratios[f"epoch r_a={r} / full epoch ({kind})"] = mean[f"epoch r_a={r} {kind}"] / full
        for k in ("refine pass, C by GCV", "refine pass, C=4", "refine online, C by GCV"):
            out_ratios[f"{k} / inference pass ({kind})"] = mean[f"{k} {kind}"] / inf
    env = bench.environment()
    name = args.micro_name
    atomic_json({"config": base, "train_images": len(data.train), "reps": args.reps, "environment": env, "seconds": res,
                 "mean": mean, "ratios": out_ratios}, out / f"{name}.json")  # fmt: skip
    lines = [f"# fast retraining micro-measurements (Lite0 ImageNet, {base['data']}, {len(data.train)} train images, "
             f"{base['image_size']} px, batch 32)", "", f"Command: `{env['command']}`  ",
             f"Code: {env['commit']}, torch {env['torch']}, {env['cpu_count']} CPU cores, "
             f"{env['torch_threads']} torch threads"
             f"{', GPU ' + env['gpu'] if env['gpu'] else ''}; {args.reps} interleaved repeats (seed = repeat index). "
             "Epoch = the training pass of one epoch (no evaluation).", "",
             "| measurement | seconds (each repeat) | mean |", "|---|---|---|"]  # fmt: skip
    for k, v in res.items():
        lines.append(f"| {k} | {', '.join(f'{x:.3f}' for x in v)} | {mean[k]:.3f} |")
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in out_ratios.items()]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ------------------------------------------------------------------------------------------------ step


def step_cost(args) -> None:
    """One training step's wall and process-CPU seconds per freezing policy and ratio, relative to none frozen."""
    import random

    import fastretrain as fr
    from fastretrain.models import create_model
    from fastretrain.strategies.random_freeze import RandomFreeze

    size, batch, classes = args.image_size or 128, 32, 10
    out = RESULTS / "step_cost"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", classes, pretrained=True)
    images = torch.randint(0, 255, (2 * batch, 16, 16, 3), dtype=torch.uint8).numpy()  # only for the engine's bundle
    labels = (torch.arange(2 * batch) % classes).numpy()
    data = fr.from_arrays(images, labels, images, labels, image_size=size)
    cfg = fr.make_config(method="sgdm", model="tf_efficientnet_lite0", image_size=size, batch_size=batch, epochs=1,
                         lr=1e-3, schedule="constant", device="cpu", progress=False)
    cfg.out = None
    engine = fr.Engine(model, data, cfg, [])
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,))
    ratios = [float(r) for r in args.ratios]
    variants = [("none", 1.0)] + [(p, r) for p in ("uniform", "bottom") for r in ratios]

    def measure(policy: str, ratio: float, rep: int) -> tuple[float, float, int]:
        rf = None
        if policy != "none":  # the policy as used, except a fixed bottom depth (jitter 0) so the ratio is exact
            rf = RandomFreeze(ratios=[ratio], policy=policy, depth_jitter=0.0)
            engine.epoch = rep  # (the generator is created once and advances: the uniform draw differs per repeat)
            rf.before_fit(engine)
            rf.before_epoch(engine)
        engine.model.train()
        opt = engine.optimizer
        times = []
        for i in range(args.steps + 1):  # the first step warms up (allocations); not counted
            w, c = time.perf_counter(), time.process_time()
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(engine.model(x), y).backward()
            opt.step()
            if i:
                times.append((time.perf_counter() - w, time.process_time() - c))
        prefix = engine.log.get("frozen_prefix_params", 0) if rf else 0
        if rf:
            rf.after_fit(engine)
        engine.log = {}
        return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times), prefix

    res: dict[str, dict[str, list]] = {f"{p} {r}": {"wall": [], "cpu": [], "prefix_params": []} for p, r in variants}
    for rep in range(args.reps):
        order = variants[rep % len(variants):] + variants[: rep % len(variants)]  # rotate: no variant always first
        random.Random(rep).shuffle(order)
        print(f"-- repeat {rep + 1}/{args.reps}", flush=True)
        for p, r in order:
            w, c, prefix = measure(p, r, rep)
            for k, v in zip(("wall", "cpu", "prefix_params"), (w, c, prefix)):
                res[f"{p} {r}"][k].append(v)
            print(f"   {p:8s} r_a={r:<5} wall {w:.3f} s  cpu {c:.3f} s  prefix params {prefix}", flush=True)
    ratios_out = {}
    for key, v in res.items():
        for kind in ("wall", "cpu"):
            per_rep = [a / b for a, b in zip(v[kind], res["none 1.0"][kind])]  # paired within a repeat
            ratios_out[f"{key} {kind}"] = {"median": statistics.median(per_rep), "min": min(per_rep),
                                           "max": max(per_rep)}
    env = bench.environment()
    load = os.getloadavg()
    atomic_json({"image_size": size, "batch_size": batch, "steps": args.steps, "reps": args.reps,
                 "environment": env, "load_average_after": load, "seconds": res, "ratios": ratios_out},
                out / "step_cost.json")
    threads = os.environ.get("OMP_NUM_THREADS", "?")
    lines = [f"# Step cost by freezing policy (Lite0 ImageNet, {size} px, batch {batch}, relative to nothing frozen)",
             "", f"Command: `OMP_NUM_THREADS={threads} python benchmarks/{env['command']}`  ",
             f"Code: {env['commit']}, torch {env['torch']}, {env['cpu_count']} CPU cores, {env['torch_threads']} torch "
             f"thread(s). The machine was shared with other engineers' jobs (load average after the run: "
             f"{load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}); {args.reps} repeats, each measuring every variant in a "
             f"rotated, shuffled order ({args.steps} timed steps after one warm-up step; median per variant); "
             "ratios paired within a repeat, median [min, max] over repeats. CPU = process CPU time.", "",
             "| policy | r_a | frozen prefix params | step CPU s (median) | ratio, CPU | ratio, wall |",
             "|---|---|---|---|---|---|"]
    for p, r in variants:
        v, key = res[f"{p} {r}"], f"{p} {r}"
        cell = {k: ratios_out[f"{key} {k}"] for k in ("wall", "cpu")}
        fmt = {k: f"{c['median']:.2f} [{c['min']:.2f}, {c['max']:.2f}]" for k, c in cell.items()}
        prefix, cpu = statistics.median(v["prefix_params"]), statistics.median(v["cpu"])
        lines.append(f"| {p} | {r} | {prefix:.0f} | {cpu:.3f} | {fmt['cpu']} | {fmt['wall']} |")
    (out / "step_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["grid", "micro", "step"])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--tag", help="results subfolder (default: the data name)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--max-train", type=int, help="training images kept (default 1000 on CPU, all on GPU)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=METHODS, help="cell labels (default: the ablation list)")
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--schedule", default="cosine")
    p.add_argument("--recipe", help="a named recipe for every cell, e.g. authors")
    p.add_argument("--reuse-only", action="store_true", help="tabulate the finished runs; run nothing")
    p.add_argument("--only-seeds", type=int, nargs="+",
                   help="run only these seeds' missing cells and write no table (parallel helper)")
    p.add_argument("--cells", default="runs/fast_retrain_bench", help="where the individual runs go (not committed)")
    p.add_argument("--gpu", action="store_true", help="GPU-sized config: 128 px, all training images, cuda")
    p.add_argument("--micro-train", type=int, default=512, help="training images for the micro-measurements")
    p.add_argument("--ratios", nargs="+", default=["0.75", "0.5", "0.25"])
    p.add_argument("--micro-name", default="micro", help="file name (without suffix) of the micro results")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed training steps per variant and repeat (step)")
    args = p.parse_args(argv)
    {"grid": grid, "micro": micro, "step": step_cost}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
