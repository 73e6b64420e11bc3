"""Kernel rescaling benchmark: full-resolution training throughout (`sgdm`) vs `kernel-rescale` at several
switch points, same backbone, data, epoch budget and seeds. Writes results.json, results.md (mean ± std
over seeds, wall time saved, best/final accuracy difference to full resolution, where each run switched)
and accuracy_vs_time.png into --out.

Presets (CPU-sized):
    scratch:    fastretrain's tiny-resnet (7×7 stem) from scratch on cifar10-subset (15k/3k) at 32 px
    pretrained: the shipped ImageNet tf_efficientnet_lite0 (5×5 depthwise convs) on fashion-mnist (1k of the 2k/1k) at 64 px

    OMP_NUM_THREADS=1 python benchmarks/kernel_rescale_bench.py --preset scratch --seeds 3
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fastretrain.bench import (  # noqa: E402
    aggregate, chosen_acc, environment, load_record, markdown_table, mean_pm, plot_curves)
from fastretrain.checkpoint import atomic_json  # noqa: E402

PRESETS = {
    "scratch": {
        "config": dict(model="tiny-resnet", data="cifar10-subset", image_size=32, epochs=15, batch_size=64, lr=0.1,
                       weight_decay=5e-4, device="cpu", progress=False, save_checkpoint=False),
        # label -> kernel-rescale options (None: plain full-resolution SGDM)
        "variants": {"full-res": None, "kr-switch@3": {"switch_epoch": 3}, "kr-auto": {},
                     "kr-switch@9": {"switch_epoch": 9}},
    },
    "pretrained": {
        "config": dict(model="tf_efficientnet_lite0", pretrained=True, data="fashion-mnist", max_train=1000, image_size=64,
                       epochs=5, batch_size=32, lr=0.01, device="cpu", progress=False, save_checkpoint=False),
        # resize-only@2: the same low-resolution phase with every kernel kept (min_kernel above any kernel
        # size): plain progressive resizing, to separate the effect of the kernel rescaling itself
        "variants": {"full-res": None, "kr-auto": {}, "kr-switch@1": {"switch_epoch": 1},
                     "resize-only@2": {"switch_epoch": 2, "min_kernel": 99}},
    },
}  # fmt: skip


def _delta(values: list[float]) -> str:
    """Signed mean ± unsigned std (pt)."""
    if len(values) < 2:
        return f"{values[0]:+.2f}" if values else "—"
    return f"{np.mean(values):+.2f} ± {np.std(values, ddof=1):.2f}"


def run(preset: str, seeds: list[int], out: Path, runs: Path, overrides: dict, variants=None) -> dict:
    from fastretrain.run import make_config, train

    p = dict(PRESETS[preset])
    if variants:
        p["variants"] = {k: v for k, v in p["variants"].items() if k in variants}
    base = {**p["config"], **overrides}
    records = []
    for seed in seeds:  # seed-major: machine noise hits every variant alike
        for label, opts in p["variants"].items():
            cell = runs / label / f"seed{seed}"
            if not (cell / "summary.json").is_file():
                kw = {**base, "seed": seed, "out": str(cell), "method": "sgdm" if opts is None else "kernel-rescale"}
                if opts:
                    kw["options"] = {"kernel-rescale": opts}
                print(f"== {label}  seed {seed}  -> {cell}", flush=True)
                train(make_config(**kw))
            records.append(load_record(cell, label, seed))
    rows = aggregate(records, "full-res")
    table = markdown_table(rows, "full-res")
    base_wall = np.mean([r["summary"]["wall_seconds"] for r in records if r["method"] == "full-res"])
    base_best = np.mean([chosen_acc(r["summary"]) for r in records if r["method"] == "full-res"])
    base_final = np.mean([r["summary"]["final_test_acc"] for r in records if r["method"] == "full-res"])
    lines = ["| variant | phase-1 epochs per seed | wall time saved | Δ best acc (pt) | Δ final acc (pt) | phase-1 / phase-2 epoch time | switch s | saved, from epoch times |",
             "|---|---|---|---|---|---|---|---|"]
    summary = {}
    for label in p["variants"]:
        rs = [r for r in records if r["method"] == label]
        p1 = [sum(1 for h in r["history"] if h.get("kernel_rescale_phase") == 1) for r in rs]
        saved = [1 - r["summary"]["wall_seconds"] / base_wall for r in rs]
        dbest = [100 * (chosen_acc(r["summary"]) - base_best) for r in rs]
        dfinal = [100 * (r["summary"]["final_test_acc"] - base_final) for r in rs]
        # per run: median phase-1 epoch time over median phase-2 epoch time (the switch epoch excluded), a
        # cost ratio taken within one run, so less exposed to the load of a shared machine than wall times
        ratio, est = [], []
        for r, n in zip(rs, p1):
            if not 0 < n < len(r["history"]) - 1:
                continue
            t1 = float(np.median([h["epoch_seconds"] for h in r["history"] if h.get("kernel_rescale_phase") == 1]))
            t2 = float(np.median([h["epoch_seconds"] for h in r["history"] if h.get("kernel_rescale_phase") == 2
                                  and "kernel_rescale_switch_seconds" not in h]))  # fmt: skip
            sw = sum(h.get("kernel_rescale_switch_seconds", 0.0) for h in r["history"])
            e = len(r["history"])
            ratio.append(t1 / t2)
            est.append(1 - (n * t1 + (e - n) * t2 + sw) / (e * t2))  # the saving on an unloaded machine
        switch = [h["kernel_rescale_switch_seconds"] for r in rs for h in r["history"] if "kernel_rescale_switch_seconds" in h]
        summary[label] = {"phase1_epochs": p1, "saved": saved, "delta_best_pt": dbest, "delta_final_pt": dfinal,
                          "epoch_time_ratio": ratio, "switch_seconds": switch,
                          "saved_from_epoch_times": est}  # fmt: skip
        lines.append(f"| `{label}` | {p1} | {mean_pm([100 * s for s in saved], '{:.1f}')} % | {_delta(dbest)} | {_delta(dfinal)} "
                     f"| {mean_pm(ratio, '{:.2f}')} | {mean_pm(switch, '{:.1f}')} | {mean_pm([100 * x for x in est], '{:.1f}')} % |")  # fmt: skip
    env = environment()
    title = f"{base['model']}{' (pretrained)' if base.get('pretrained') else ' (scratch)'} on {base['data']}, {base['image_size']} px, {base['epochs']} epochs"
    plot_curves(records, out / "accuracy_vs_time.png", title)
    atomic_json({"preset": preset, "config": base, "variants": p["variants"], "seeds": seeds, "environment": env, "rows": rows,
                 "vs_full_res": summary, "runs": records}, out / "results.json")  # fmt: skip
    md = (f"# Kernel rescaling: {title}\n\nCommand: `{env['command']}`  \nCode: {env['commit']}, torch {env['torch']}, "
          f"{env['cpu_count']} CPU cores, torch threads {env['torch_threads']}  \nConfig: `{json.dumps(base, sort_keys=True)}`  \n"
          f"Variants (kernel-rescale options): `{json.dumps(p['variants'])}`\n\n{table}\n\n"
          f"Against `full-res` (mean ± std over seeds; saved = 1 − wall / mean full-res wall; the last column models the "
          f"saving from each run's own median phase-1 and phase-2 epoch times and its switch time, which a shared, "
          f"loaded machine distorts less than totals of runs made at different times):\n\n" + "\n".join(lines) +
          "\n\n![accuracy vs time](accuracy_vs_time.png)\n")  # fmt: skip
    (out / "results.md").write_text(md)
    print(md)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=None, help="default: benchmarks/results/kernel_rescale/<preset>")
    ap.add_argument("--runs", default=None, help="where the runs (with weights) go; default: runs/kernel_rescale/<preset>")
    ap.add_argument("--variants", nargs="*", default=None, help="run only these variants (labels of the preset)")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override config fields, e.g. epochs=2")
    args = ap.parse_args()
    overrides = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        overrides[k] = json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
    out = Path(args.out or ROOT / "benchmarks/results/kernel_rescale" / args.preset)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs or ROOT / "runs/kernel_rescale" / args.preset)
    run(args.preset, list(range(args.seeds)), out, runs, overrides, args.variants)


if __name__ == "__main__":
    main()
