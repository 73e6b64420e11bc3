"""Decomposition/composition benchmark: the global network trained from random init (`sgdm`) vs from the
composed init of K = 2 and 4 sub-networks (`decompose`), from scratch, same wall-clock budget, 3 seeds.

Clocks. Every run uses one thread (OMP_NUM_THREADS=1); one core stands for one device. The composed arms
train their sub-networks one after another (`parallel=sequential`) so that each sub-network's own
training time is measured alone; the *simulated K-device* wall time of a composed run is
    wall_seconds − subnet_seconds + max_j(train_seconds of sub-network j) + compose time,
i.e. the sub-network phase costs its slowest sub-network. Separately (`--measure-parallel`) the real
parallel phase is run as K spawned processes on this machine's 2 cores and its wall time is reported
(process start-up and contention included) — the measured figure here, not the simulated one.

Budget. The composed arms get sub_epochs sub-network epochs plus as many global epochs as keeps their
simulated K-device time close to the random-init arm's (ratios measured in a pilot, see PRESETS).

    OMP_NUM_THREADS=1 python benchmarks/decompose_bench.py --seeds 3 --measure-parallel
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fastretrain.bench import chosen_acc, environment, load_record, mean_pm  # noqa: E402
from fastretrain.checkpoint import atomic_json  # noqa: E402

PRESETS = {
    "cifar": {
        "config": dict(model="vgg-small", width=0.5, data="cifar10-subset", max_train=3000, image_size=32, batch_size=64, lr=0.05,
                       weight_decay=5e-4, device="cpu", progress=False, save_checkpoint=False),
        # label -> (method, epochs, decompose options). Pilot (1 thread): a K=2 sub-network epoch costs ~1/2.8 of a
        # global epoch, a K=4 one ~1/4.2, so 3 K=2 epochs ≈ 1.07 global epochs and 4 K=4 epochs ≈ 0.95: with 7 global
        # epochs each composed arm's K-device budget ≈ the random-init arm's 8 epochs.
        "arms": {
            "random-init": ("sgdm", 8, None),
            "composed-K2": ("decompose", 10, {"subnets": 2, "sub_epochs": 3, "parallel": "sequential"}),
            "composed-K4": ("decompose", 11, {"subnets": 4, "sub_epochs": 4, "parallel": "sequential"}),
            # added after the first three arms showed the composed init losing accuracy in the first global epoch at
            # lr 0.05: the same sub-networks (sub_lr 0.05), global phase at lr 0.01
            "composed-K2-globallr0.01": ("decompose", 10, {"subnets": 2, "sub_epochs": 3, "parallel": "sequential",
                                                           "sub_lr": 0.05}, {"lr": 0.01}),
        },
    },
    "fashion": {  # the bundled Fashion-MNIST subset (2,000 train / 1,000 test), same arms
        "config": dict(model="vgg-small", width=0.5, data="fashion-mnist", image_size=32, batch_size=64, lr=0.05,
                       weight_decay=5e-4, device="cpu", progress=False, save_checkpoint=False),
        "arms": {
            "random-init": ("sgdm", 8, None),
            "composed-K2": ("decompose", 10, {"subnets": 2, "sub_epochs": 3, "parallel": "sequential"}),
            "composed-K4": ("decompose", 11, {"subnets": 4, "sub_epochs": 4, "parallel": "sequential"}),
        },
    },
}  # fmt: skip


def k_device_history(rec: dict) -> list[dict]:
    """The run's (wall time, test acc) curve with the sub-network phase costing its slowest sub-network.

    For a composed run the curve starts at the composition point (accuracy of the composed init).
    """
    h = rec["history"]
    first = h[0]
    if "subnet_seconds" not in first:
        return [{"t": e["wall_seconds"], "acc": e["test_acc"]} for e in h]
    shift = first["subnet_seconds"] - first["subnet_seconds_k_devices"]
    pts = [{"t": first["subnet_seconds_k_devices"], "acc": first["test_acc_at_composition"]}]
    return pts + [{"t": e["wall_seconds"] - shift, "acc": e["test_acc"]} for e in h]


def first_reach(curve: list[dict], target: float):
    return next((p["t"] for p in curve if p["acc"] >= target - 1e-12), None)


def relative_reach(records, curves, base_curves) -> list[float | None]:
    """Per seed: time to reach the same seed's random-init best, relative to random init's own time to it."""
    out = []
    for r, c in zip(records, curves):
        bc = base_curves.get(r["seed"])
        if bc:
            best = max(p["acc"] for p in bc)
            t = first_reach(c, best)
            out.append(None if t is None else t / first_reach(bc, best))
    return out


def run(preset: str, seeds: list[int], out: Path, runs: Path, measure_parallel: bool) -> None:
    from fastretrain.run import make_config, train

    p = PRESETS[preset]
    records = []
    for seed in seeds:  # seed-major: machine noise hits every arm alike
        for label, (method, epochs, opts, *over) in p["arms"].items():
            cell = runs / label / f"seed{seed}"
            if not (cell / "summary.json").is_file():
                kw = {**p["config"], **(over[0] if over else {}), "seed": seed, "out": str(cell), "method": method, "epochs": epochs}
                if opts:
                    kw["options"] = {"decompose": opts}
                print(f"== {label}  seed {seed}  -> {cell}", flush=True)
                train(make_config(**kw))
            records.append(load_record(cell, label, seed))
    parallel = {}
    if measure_parallel:  # the real parallel phase on this machine: K processes, 1 thread each
        for label, (method, epochs, opts, *over) in p["arms"].items():
            if method != "decompose" or over:
                continue
            cell = runs / f"{label}-processes" / "seed0"
            if not (cell / "summary.json").is_file():
                kw = {**p["config"], "seed": 0, "out": str(cell), "method": method, "epochs": opts["sub_epochs"] + 1,
                      "options": {"decompose": {**opts, "parallel": "processes"}}}  # fmt: skip
                print(f"== {label} parallel phase as {opts['subnets']} processes -> {cell}", flush=True)
                train(make_config(**kw))
            first = load_record(cell, label, 0)["history"][0]
            parallel[label] = {k: first[k] for k in ("subnet_seconds", "subnet_train_seconds", "subnet_seconds_k_devices",
                                                     "test_acc_at_composition")}  # fmt: skip
    ratios_file = out / "epoch_cost_ratios.json"
    if not ratios_file.is_file():
        atomic_json(epoch_cost_ratios(p["config"], sorted({o["subnets"] for m, _, o, *_ in p["arms"].values() if o})), ratios_file)
    report(preset, records, parallel, json.loads(ratios_file.read_text()), out)


def epoch_cost_ratios(config: dict, Ks: list[int], steps: int = 8, reps: int = 5) -> dict:
    """Training-step time of a K sub-network / the global network, 1 thread, real batch preparation included.

    Alternates the networks rep by rep and takes medians, so that the load of other jobs on this shared machine
    hits all alike; a sub-network epoch then costs `ratio` global epochs (same images, same batches).
    """
    import time

    import torch

    from fastretrain.compose import decompose
    from fastretrain.data import prepare_images
    from fastretrain.models import create_model, normalization

    torch.set_num_threads(1)
    g = create_model(config["model"], 10, width=config.get("width", 1.0))
    nets = {1: g, **{K: decompose(g, K)[0] for K in Ks}}
    bs, size = config["batch_size"], config["image_size"]
    raw = torch.randint(0, 256, (bs, 3, round(size / 0.875), round(size / 0.875)), dtype=torch.uint8)
    y = torch.randint(0, 10, (bs,))
    gen, norm = torch.Generator().manual_seed(0), normalization(g)
    times = {K: [] for K in nets}
    for _ in range(reps):
        for K, net in nets.items():
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            for i in range(steps + 1):
                if i == 1:
                    t0 = time.perf_counter()
                x = prepare_images(raw, True, size, norm, gen)
                loss = torch.nn.functional.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            times[K].append((time.perf_counter() - t0) / steps)
    med = {K: float(np.median(v)) for K, v in times.items()}
    return {"step_seconds_median": {str(K): v for K, v in med.items()}, "steps": steps, "reps": reps,
            "ratio": {str(K): med[K] / med[1] for K in Ks}}  # fmt: skip


def cost_history(rec: dict, ratios: dict) -> list[dict]:
    """The run's accuracy curve against cost in global-epoch units (load-independent): a sub-network epoch costs
    ratio[K] (the K sub-networks run on K devices at once), a global epoch 1."""
    h = rec["history"]
    first = h[0]
    if "subnet_seconds" not in first:
        return [{"t": float(e["epoch"]), "acc": e["test_acc"]} for e in h]
    sub = first["sub_epochs"] * ratios["ratio"][str(first["subnets"])]
    return [{"t": sub, "acc": first["test_acc_at_composition"]}] + [{"t": sub + e["epoch"], "acc": e["test_acc"]} for e in h]


def report(preset: str, records: list[dict], parallel: dict, ratios: dict, out: Path) -> None:
    labels = list(dict.fromkeys(r["method"] for r in records))
    base = [r for r in records if r["method"] == "random-init"]
    target = float(np.mean([chosen_acc(r["summary"]) for r in base]))
    base_curves = {r["seed"]: k_device_history(r) for r in base}
    base_time = float(np.mean([first_reach(c, max(p["acc"] for p in c)) for c in base_curves.values()]))
    base_cost = {r["seed"]: cost_history(r, ratios) for r in base}
    rows, curves = [], {}
    for label in labels:
        rs = [r for r in records if r["method"] == label]
        cs = [k_device_history(r) for r in rs]
        curves[label] = cs
        reach = [first_reach(c, target) for c in cs]
        own = relative_reach(rs, cs, base_curves)  # in seconds (K-device)
        first = [r["history"][0] for r in rs]
        ccs = [cost_history(r, ratios) for r in rs]
        own_cost = relative_reach(rs, ccs, base_cost)  # in global-epoch units
        row = {
            "arm": label, "seeds": len(rs),
            "acc_at_composition": [f.get("test_acc_at_composition") for f in first if "test_acc_at_composition" in f],
            "subnet_test_acc": [f.get("subnet_test_acc") for f in first if "subnet_test_acc" in f],
            "best": [chosen_acc(r["summary"]) for r in rs], "final": [r["summary"]["final_test_acc"] for r in rs],
            "wall_measured": [r["summary"]["wall_seconds"] for r in rs], "wall_k_devices": [c[-1]["t"] for c in cs],
            "subnet_seconds_sequential": [f["subnet_seconds"] for f in first if "subnet_seconds" in f],
            "subnet_seconds_k_devices": [f["subnet_seconds_k_devices"] for f in first if "subnet_seconds_k_devices" in f],
            "time_to_target": reach, "ratio_to_same_seed_random_best": own,
            "cost_total": [c[-1]["t"] for c in ccs], "cost_at_composition": [c[0]["t"] for c, f in zip(ccs, first) if "sub_epochs" in f], "cost_to_target": [first_reach(c, target) for c in ccs],
            "cost_ratio_to_same_seed_random_best": own_cost,
        }  # fmt: skip
        rows.append(row)
    env = environment()
    lines = [f"# Decomposition/composition vs random init — preset `{preset}`", "",
             f"Command: `{env['command']}`  ", f"Code: {env['commit']}, torch {env['torch']}, {env['cpu_count']} CPU cores "
             f"(shared with other jobs), torch threads {env['torch_threads']}  ",
             f"Config: `{json.dumps(PRESETS[preset]['config'], sort_keys=True)}`  ",
             f"Arms: `{json.dumps(PRESETS[preset]['arms'])}`", "",
             f"Times are simulated K-device wall times (sub-network phase = its slowest sub-network, measured alone on "
             f"one core); target = random-init mean best accuracy {target:.4f}, which random init reaches on average at "
             f"its best epoch, {base_time:.1f} s.", "",
             "| arm | seeds | acc at composition | best acc | final acc | wall s (K-device) | wall s (measured, sequential subnets) "
             "| sub phase s (K-device) | s to target | time to same-seed random best / random's |", "|" + "---|" * 10]  # fmt: skip
    for r in rows:
        reached = [t for t in r["time_to_target"] if t is not None]
        rel = [x for x in r["ratio_to_same_seed_random_best"] if x is not None]
        lines.append("| " + " | ".join([
            f"`{r['arm']}`", str(r["seeds"]), mean_pm(r["acc_at_composition"]) if r["acc_at_composition"] else "—",
            mean_pm(r["best"]), mean_pm(r["final"]), mean_pm(r["wall_k_devices"], "{:.1f}"), mean_pm(r["wall_measured"], "{:.1f}"),
            mean_pm(r["subnet_seconds_k_devices"], "{:.1f}") if r["subnet_seconds_k_devices"] else "—",
            f"{mean_pm(reached, '{:.1f}')} ({len(reached)}/{r['seeds']})" if reached else f"never (0/{r['seeds']})",
            f"{mean_pm(rel, '{:.2f}')} ({len(rel)}/{len(r['ratio_to_same_seed_random_best'])} reached)" if rel else "never",
        ]) + " |")  # fmt: skip
    if parallel:
        lines += ["", "Sub-network phase measured for real on this machine (seed 0; K spawned processes, 1 thread each, "
                  "on 2 cores shared with other jobs; start-up of the processes included):", "",
                  "| arm | measured parallel wall s | each sub-network's own training s | simulated K-device s (max + compose) |",
                  "|---|---|---|---|"]  # fmt: skip
        for label, v in parallel.items():
            lines.append(f"| `{label}` | {v['subnet_seconds']:.1f} | {', '.join(f'{s:.1f}' for s in v['subnet_train_seconds'])} "
                         f"| {v['subnet_seconds_k_devices']:.1f} |")  # fmt: skip
    lines += ["", f"Load-independent cost, in global-epoch units (1 = one global training epoch; a sub-network epoch costs "
              f"the measured step-time ratio, K sub-networks at once on K devices: "
              f"{', '.join(f'K={k}: {v:.3f}' for k, v in ratios['ratio'].items())}; medians of {ratios['reps']} alternated "
              f"reps, 1 thread). The wall clock above is distorted by other jobs on the shared machine; these are not:", "",
              "| arm | cost at composition | total cost | cost to target | cost to same-seed random best / random's |", "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        reached = [t for t in r["cost_to_target"] if t is not None]
        ratios_ = [x for x in r["cost_ratio_to_same_seed_random_best"] if x is not None]
        lines.append("| " + " | ".join([
            f"`{r['arm']}`", mean_pm(r["cost_at_composition"], "{:.2f}") if r["cost_at_composition"] else "—", mean_pm(r["cost_total"], "{:.2f}"),
            f"{mean_pm(reached, '{:.2f}')} ({len(reached)}/{r['seeds']})" if reached else f"never (0/{r['seeds']})",
            f"{mean_pm(ratios_, '{:.2f}')} ({len(ratios_)}/{len(r['cost_ratio_to_same_seed_random_best'])} reached)" if ratios_ else "never",
        ]) + " |")  # fmt: skip
    lines += ["", "![accuracy vs time](accuracy_vs_time.png)", "", "![accuracy vs cost](accuracy_vs_cost.png)", ""]
    (out / "results.md").write_text("\n".join(lines))
    atomic_json({"preset": preset, "config": PRESETS[preset], "environment": env, "target": target, "rows": rows,
                 "parallel_measured": parallel, "runs": records}, out / "results.json")  # fmt: skip
    plot(curves, target, out / "accuracy_vs_time.png", preset)
    cost_curves = {label: [cost_history(r, ratios) for r in records if r["method"] == label] for label in labels}
    plot(cost_curves, target, out / "accuracy_vs_cost.png", preset, "training cost, global-epoch units (sub-network phase on K devices)")
    print("\n".join(lines))


def plot(curves: dict, target: float, path: Path, preset: str, xlabel: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, cs in curves.items():
        n = min(len(c) for c in cs)
        t = np.mean([[p["t"] for p in c[:n]] for c in cs], 0)
        acc = np.array([[p["acc"] for p in c[:n]] for c in cs])
        line = ax.plot(t, acc.mean(0), marker="o", ms=3, label=label)[0]
        if "composed" in label:
            ax.plot(t[:1], acc.mean(0)[:1], marker="*", ms=12, color=line.get_color())
        ax.fill_between(t, acc.mean(0) - acc.std(0), acc.mean(0) + acc.std(0), color=line.get_color(), alpha=0.15)
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"random-init mean best {target:.3f}")
    ax.set_xlabel(xlabel or "training wall time, s (sub-network phase = slowest sub-network: K devices)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"vgg-small (width 0.5) from scratch on {PRESETS[preset]['config']['data']}: composed (★) vs random init", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cifar", choices=sorted(PRESETS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decompose"))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "decompose-bench"), help="per-run folders (not committed)")
    ap.add_argument("--measure-parallel", action="store_true", help="also run each K's sub-network phase as K processes")
    args = ap.parse_args()
    out = Path(args.out) / args.preset
    out.mkdir(parents=True, exist_ok=True)
    run(args.preset, list(range(args.seeds)), out, Path(args.runs) / args.preset, args.measure_parallel)
