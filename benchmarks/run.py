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
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FINE_TUNE = ["sgdm", "linear-probe", "freeze-unfreeze", "random-freeze", "mp-refine", "fast-retrain", "rifle",
             "dropout", "dropconnect", "stochastic-depth", "disturblabel", "cyclic-lr", "kernel-rescale",
             "fast-retrain,rifle", "fast-retrain,kernel-rescale", "rifle,kernel-rescale"]  # fmt: skip
LITE0 = {"model": "tf_efficientnet_lite0", "pretrained": True, "batch_size": 32, "lr": 0.01, "schedule": "cosine",
         "weight_decay": 1e-4, "progress": False, "save_checkpoint": False, "save_weights": False}  # fmt: skip

# name -> list of (comparison id, base config, methods, seeds)
SUITES = {
    "cpu": [
        ("flowers5-lite0", {**LITE0, "data": "flowers5", "image_size": 48, "epochs": 5, "max_train": 1200}, FINE_TUNE, 3),
        ("fashion-mnist-5k-lite0", {**LITE0, "data": "fashion-mnist-5k", "image_size": 32, "epochs": 5, "max_train": 2000}, FINE_TUNE, 3),
        ("cifar10-subset-lite0", {**LITE0, "data": "cifar10-subset", "image_size": 32, "epochs": 5, "max_train": 2000}, FINE_TUNE, 3),
        ("cifar10-subset-resnet20-scratch", {"model": "resnet20", "data": "cifar10-subset", "image_size": 32, "epochs": 10,
          "max_train": 5000, "batch_size": 64, "lr": 0.05, "progress": False, "save_checkpoint": False, "save_weights": False},
         ["sgdm", "decompose", "kernel-rescale"], 3),
    ],
    "smoke": [  # checks the pipeline in a minute or two; numbers mean nothing
        ("smoke", {"model": "tiny-resnet", "data": "fashion-mnist", "image_size": 16, "epochs": 2, "max_train": 200,
                   "lr": 0.05, "progress": False, "save_checkpoint": False, "save_weights": False}, FINE_TUNE, 1),
    ],
    "gpu": [
        ("flowers5-lite0-224", {**LITE0, "data": "flowers5", "image_size": 224, "epochs": 10, "device": "cuda"}, FINE_TUNE, 3),
        ("cifar10-subset-lite0-224", {**LITE0, "data": "cifar10-subset", "image_size": 224, "epochs": 6, "device": "cuda"}, FINE_TUNE, 3),
        ("cifar10-subset-resnet20-scratch", {"model": "resnet20", "data": "cifar10-subset", "image_size": 32, "epochs": 30,
          "batch_size": 128, "lr": 0.1, "device": "cuda", "progress": False, "save_checkpoint": False, "save_weights": False},
         ["sgdm", "decompose", "kernel-rescale"], 3),
    ],
}


def _row(rows, method):
    return next((r for r in rows if r["method"] == method), None)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def claims(results: dict[str, dict]) -> list[str]:
    """Each source paper's claim with what was measured; verdicts by the stated rule."""
    out = []
    for cid, res in results.items():
        rows = res["rows"]
        sg = _row(rows, "sgdm")
        if sg is None:
            continue
        sg_final, sg_wall = _mean(sg["final_test_acc"]), _mean(sg["wall_seconds"])
        fr, mp = _row(rows, "fast-retrain"), _row(rows, "mp-refine")
        if fr:
            dacc = 100 * (_mean(fr["final_test_acc"]) - sg_final)
            reach = _mean(fr["time_to_target"])
            speed = (reach / _mean([t for t in sg["time_to_target"]])) if reach and sg["reached"] else None
            verdict = "reproduced" if dacc >= 0 and speed and speed <= 1 / 1.5 else "partly" if dacc >= 0 or (speed and speed < 1) else "not reproduced"
            out.append(f"- **Fast retraining** ({cid}): claim up to +1 pt over SGDM and ~1.5× faster convergence. Measured: "
                       f"final acc {dacc:+.2f} pt; time to SGDM's best {'%.2f× SGDM' % speed if speed else 'not reached'} → **{verdict}**.")  # fmt: skip
            if mp:
                save = 1 - _mean(fr["wall_seconds"]) / _mean(mp["wall_seconds"])
                v = "reproduced" if 0.15 <= save else "partly" if save > 0 else "not reproduced"
                out.append(f"- **Freezing saves time over refinement alone** ({cid}): claim 15–25% less time. Measured: {100 * save:.1f}% → **{v}**.")
        ri = _row(rows, "rifle")
        tricks = [r for r in (_row(rows, m) for m in ("dropout", "dropconnect", "stochastic-depth", "disturblabel", "cyclic-lr")) if r]
        if ri and tricks:
            best_trick = max(tricks, key=lambda r: _mean(r["best_test_acc"]))
            d = 100 * (_mean(ri["best_test_acc"]) - _mean(best_trick["best_test_acc"]))
            v = "reproduced" if d >= 0.5 else "partly" if d > 0 else "not reproduced"
            out.append(f"- **RIFLE** ({cid}): claim +0.5–2 pt over the compared tricks. Measured: {d:+.2f} pt vs the best trick "
                       f"(`{best_trick['method']}`) → **{v}**.")  # fmt: skip
        kr = _row(rows, "kernel-rescale")
        if kr:
            save = 1 - _mean(kr["wall_seconds"]) / sg_wall
            d = 100 * (_mean(kr["final_test_acc"]) - sg_final)
            v = "reproduced" if save >= 0.2 and d >= -0.3 else "partly" if save > 0 and d >= -1 else "not reproduced"
            out.append(f"- **Kernel rescaling** ({cid}): claim ~20% less time, no accuracy loss. Measured: {100 * save:.1f}% less time, "
                       f"final acc {d:+.2f} pt → **{v}**.")  # fmt: skip
        dc = _row(rows, "decompose")
        if dc:
            reach = _mean(dc["time_to_target"])
            ratio = reach / _mean(sg["time_to_target"]) if reach and sg["reached"] else None
            d = 100 * (_mean(dc["final_test_acc"]) - sg_final)
            v = "reproduced" if ratio and ratio < 1 and d >= 0 else "partly" if (ratio and ratio < 1) or d >= 0 else "not reproduced"
            out.append(f"- **Decomposition/composition** ({cid}): claim composed init reaches random init's best sooner with no "
                       f"loss of final accuracy. Measured: time to random-init best {'%.2f×' % ratio if ratio else 'not reached'}, "
                       f"final acc {d:+.2f} pt → **{v}**.")  # fmt: skip
    return out


def time_to_target_chart(res: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in res["rows"] if r["reached"]]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(res["rows"]) + 1.2))
    names = [r["method"] for r in res["rows"]]
    vals = [_mean(r["time_to_target"]) if r["reached"] else 0 for r in res["rows"]]
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


def status(suite: str, out_root: Path) -> list[str]:
    """One line per comparison: finished cells out of planned."""
    lines = []
    for cid, _, methods, seeds in SUITES[suite]:
        done = sum((out_root / cid / m.replace(",", "+") / f"seed{s}" / "summary.json").is_file() for m in methods for s in range(seeds))
        lines.append(f"- `{cid}`: {done} of {len(methods) * seeds} cells finished")
    return lines


def render(suite: str, results: dict[str, dict], out_root: Path) -> Path:
    doc = ROOT / "docs" / "BENCHMARKS.md" if suite in ("cpu", "gpu") else out_root / "BENCHMARKS.md"
    parts = [f"# Benchmarks: suite `{suite}`\n", f"Produced by `python benchmarks/run.py --suite {suite}`; raw results in "
             f"`{out_root.relative_to(ROOT)}/`. Mean ± std over seeds; wall time is training time (evaluation excluded).\n",
             "## Status\n", *status(suite, out_root), "", "## Claims checked\n",
             *(claims(results) or ["(no comparison has run yet)"]), ""]  # fmt: skip
    for cid, res in results.items():
        rel = Path("..") / (out_root / cid).relative_to(ROOT) if doc.parent.name == "docs" else Path(cid)
        env = res.get("environment", {})
        parts += [f"## {cid}\n", f"Config: `{json.dumps(res['config'], sort_keys=True)}`  \nHardware: {env.get('cpu_count')} CPU cores"
                  f"{', GPU ' + env['gpu'] if env.get('gpu') else ''}, torch {env.get('torch')}, code {env.get('commit')}\n",
                  res["table"], "", f"![accuracy vs time]({rel}/accuracy_vs_time.png)", f"![time to target]({rel}/time_to_target.png)", ""]  # fmt: skip
    doc.write_text("\n".join(parts) + "\n")
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=sorted(SUITES), required=True)
    ap.add_argument("--render", action="store_true", help="only render from the cells that exist")
    ap.add_argument("--only", nargs="*", help="comparison ids to run (default: all)")
    args = ap.parse_args()
    from fastretrain.bench import aggregate, compare, load_record, markdown_table

    out_root = ROOT / "benchmarks" / "results" / f"suite-{args.suite}"
    results = {}
    for cid, base, methods, seeds in SUITES[args.suite]:
        if args.only and cid not in args.only:
            continue
        if args.render:
            recs = [load_record(out_root / cid / m.replace(",", "+") / f"seed{s}", m, s) for s in range(seeds) for m in methods
                    if (out_root / cid / m.replace(",", "+") / f"seed{s}" / "summary.json").is_file()]  # fmt: skip
            if not recs:
                continue
            rows = aggregate(recs, "sgdm")
            res = {"rows": rows, "table": markdown_table(rows, "sgdm"), "config": base}
            saved = out_root / cid / "results.json"
            res["environment"] = json.loads(saved.read_text())["environment"] if saved.is_file() else {}
        else:
            res = compare(base, methods, list(range(seeds)), out_root / cid, baseline="sgdm", title=cid)
            res["config"] = base
            res["environment"] = json.loads((out_root / cid / "results.json").read_text())["environment"]
        time_to_target_chart(res, out_root / cid / "time_to_target.png", cid)
        results[cid] = res
    print(f"written {render(args.suite, results, out_root)}")


if __name__ == "__main__":
    main()
