"""Benchmark of fast retraining (METHODS.md §1, issue 4): accuracy vs time against SGDM, and the
micro-measurements behind its performance goals.

  grid   SGDM full fine-tuning, SGD + random freezing, SGD + MP refinement (≈ Yang 2019), fast-retrain
         (both) and fast-retrain with features=online, side by side: same data, backbone, config and
         epochs, seeds 0..S-1. Writes results.json, results.md (best/final test acc mean ± std, wall
         time, time to reach SGDM's best, images/s, refinement seconds) and accuracy_vs_time.png.
  micro  measured side by side in one process, interleaved over repeats: a training epoch at trainable
         ratio r (random-freeze) vs a full-backprop epoch; one inference pass over the training set vs
         the refinement (extra-pass mode, GCV and fixed C) vs the online mode's cost.

CPU-sized defaults finish here (2 shared cores); `--gpu` picks a larger config for a lent GPU.

  OMP_NUM_THREADS=1 python benchmarks/fast_retrain.py grid --data fashion-mnist
  OMP_NUM_THREADS=1 python benchmarks/fast_retrain.py grid --data flowers5
  OMP_NUM_THREADS=1 python benchmarks/fast_retrain.py micro
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from fastretrain import bench
from fastretrain.checkpoint import atomic_json

RESULTS = Path(__file__).parent / "results" / "fast_retrain"
METHODS = ["sgdm", "random-freeze", "mp-refine", "fast-retrain"]
ONLINE = "fast-retrain[online]"  # fast-retrain with -o mp-refine.features=online


def base_config(args) -> dict:
    gpu = args.gpu
    return {
        "data": args.data, "model": "tf_efficientnet_lite0", "pretrained": True,
        "image_size": args.image_size or (128 if gpu else 32), "max_train": args.max_train if args.max_train else (None if gpu else 1000),
        "epochs": args.epochs, "batch_size": 32, "lr": args.lr, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4,
        "schedule": "piecewise:1x3,0.1x3,0.01x2",  # the authors' LR shape (×1 3/8 of the run, ×0.1 3/8, ×0.01 2/8)
        "device": "cuda" if gpu else "cpu", "progress": False, "save_checkpoint": False,
    }  # fmt: skip


def grid(args) -> None:
    base = base_config(args)
    tag = args.tag or args.data
    cells = Path(args.cells) / tag  # run folders (weights, metrics) stay out of git
    out = RESULTS / tag
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seeds))
    run_seeds = args.only_seeds if args.only_seeds is not None else seeds  # e.g. a second process takes seed 2
    methods = [m for m in METHODS + [ONLINE] if m in args.methods]
    records = []
    from fastretrain.run import make_config, train

    for seed in seeds:  # seeds outer: a partial run still compares every method on seed 0
        for m in methods:
            method, opts = (("fast-retrain", {"mp-refine": {"features": "online"}}) if m == ONLINE else (m, {}))
            cell = cells / bench.slug(m).replace("[", "-").replace("]", "") / f"seed{seed}"
            if not (cell / "summary.json").is_file():
                if seed not in run_seeds or args.reuse_only:
                    continue
                print(f"== {m} seed {seed} -> {cell}", flush=True)
                train(make_config(**base, method=method, options=opts, seed=seed, out=str(cell)))
            records.append(bench.load_record(cell, m, seed))
    if args.only_seeds is not None:
        return  # a helper process: the run without --only-seeds writes the tables
    methods = [m for m in methods if any(r["method"] == m for r in records)]
    extra = ("refine_seconds",)
    rows = bench.aggregate(records, "sgdm", extra)
    table = bench.markdown_table(rows, "sgdm", extra)
    env = bench.environment()
    title = f"fast retraining: Lite0 (ImageNet) on {args.data}, {base['image_size']} px, {base['epochs']} epochs"
    bench.plot_curves(records, out / "accuracy_vs_time.png", title)
    before = {m: [[h.get("test_acc_before_refine") for h in r["history"]] for r in records if r["method"] == m] for m in methods}
    atomic_json({"config": base, "methods": methods, "seeds": seeds, "environment": env, "rows": rows,
                 "test_acc_before_refine": before, "runs": records}, out / "results.json")  # fmt: skip
    (out / "results.md").write_text(
        f"# {title}\n\nCommand: `{env['command']}`  \nCode: {env['commit']}, torch {env['torch']}, {env['cpu_count']} CPU cores, "
        f"{env['torch_threads']} torch threads{', GPU ' + env['gpu'] if env['gpu'] else ''}  \nConfig (every method): "
        f"`{json.dumps(base, sort_keys=True)}`\n\n{table}\n\n{per_epoch_table(records, methods)}\n\n![accuracy vs time](accuracy_vs_time.png)\n"
    )
    print(table)


def per_epoch_table(records, methods) -> str:
    """Mean test accuracy per epoch (and before the refinement, where there is one)."""
    n = max(len(r["history"]) for r in records)
    lines = ["Mean test accuracy after each epoch (before → after the refinement where there is one):", "",
             "| method | " + " | ".join(f"ep {e + 1}" for e in range(n)) + " |", "|---|" + "---|" * n]  # fmt: skip
    for m in methods:
        hs = [r["history"] for r in records if r["method"] == m]
        cells = []
        for e in range(n):
            after = [h[e]["test_acc"] for h in hs if len(h) > e]
            pre = [h[e]["test_acc_before_refine"] for h in hs if len(h) > e and "test_acc_before_refine" in h[e]]
            cells.append((f"{statistics.mean(pre):.3f} → " if pre else "") + f"{statistics.mean(after):.3f}" if after else "—")
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
            wc, h = epoch([RandomFreeze(ratios=[r])], rep)
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
             f"Code: {env['commit']}, torch {env['torch']}, {env['cpu_count']} CPU cores, {env['torch_threads']} torch threads"
             f"{', GPU ' + env['gpu'] if env['gpu'] else ''}; {args.reps} interleaved repeats (seed = repeat index). "
             "Epoch = the training pass of one epoch (no evaluation).", "",
             "| measurement | seconds (each repeat) | mean |", "|---|---|---|"]  # fmt: skip
    for k, v in res.items():
        lines.append(f"| {k} | {', '.join(f'{x:.3f}' for x in v)} | {mean[k]:.3f} |")
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in out_ratios.items()]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["grid", "micro"])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--tag", help="results subfolder (default: the data name)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--max-train", type=int, help="training images kept (default 1000 on CPU, all on GPU)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=METHODS + [ONLINE])
    p.add_argument("--reuse-only", action="store_true", help="tabulate the finished runs; run nothing")
    p.add_argument("--only-seeds", type=int, nargs="+", help="run only these seeds' missing cells and write no table (parallel helper)")
    p.add_argument("--cells", default="runs/fast_retrain_bench", help="where the individual runs go (not committed)")
    p.add_argument("--gpu", action="store_true", help="GPU-sized config: 128 px, all training images, cuda")
    p.add_argument("--micro-train", type=int, default=512, help="training images for the micro-measurements")
    p.add_argument("--ratios", nargs="+", default=["0.75", "0.5", "0.25"])
    p.add_argument("--micro-name", default="micro", help="file name (without suffix) of the micro results")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    (grid if args.what == "grid" else micro)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
