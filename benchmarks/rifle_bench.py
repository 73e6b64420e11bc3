"""RIFLE benchmark: SGDM, the five compared tricks and RIFLE side by side, plus the per-layer relative
weight change ‖ΔW‖/‖W₀‖ of the backbone (SGDM vs RIFLE) at the end of training.

Reference setting (Li et al. 2020 family): 40 epochs, batch 32, LR 0.01 cosine, wd 1e-4 at 224 px —
see benchmarks/rifle_gpu.yaml. On the shared 2-core CPU it is scaled down (CPU preset below): 32 px,
4 epochs (so RIFLE's default period is 1 epoch: resets after epochs 1, 2, 3, settle in epoch 4),
500 training images (16 steps per epoch), same batch, LR, schedule and weight decay.

    OMP_NUM_THREADS=1 python benchmarks/rifle_bench.py --data flowers5
    python benchmarks/rifle_bench.py --data flowers5 --preset gpu --runs runs/rifle_gpu   # on a GPU

Every run lands in RUNS/<data>/<method>/seed<k>/ (weights included, so kept out of git); the tables,
JSON and plots are copied to OUT/<data>/. Finished cells are reused, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import ast
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastretrain.bench import compare, slug  # noqa: E402
from fastretrain.config import read_config_file  # noqa: E402
from fastretrain.models import classifier_name, create_model, load_pretrained_state  # noqa: E402

METHODS = ["sgdm", "dropout", "dropconnect", "stochastic-depth", "disturblabel", "cyclic-lr", "rifle"]
CPU = dict(model="tf_efficientnet_lite0", pretrained=True, image_size=32, epochs=4, batch_size=32, lr=0.01,
           schedule="cosine", weight_decay=1e-4, momentum=0.9, max_train=500, device="cpu", save_checkpoint=False)  # fmt: skip


def relative_change(final: dict[str, torch.Tensor], start: dict[str, torch.Tensor], head: str) -> list[tuple[str, float]]:
    """‖W − W₀‖/‖W₀‖ (Frobenius) of every backbone conv weight, in model order (head excluded)."""
    out = []
    for k, w0 in start.items():
        if k.endswith(".weight") and w0.ndim == 4 and not k.startswith(head + "."):
            w = final[k].float()
            out.append((k[: -len(".weight")], float((w - w0.float()).norm() / w0.float().norm())))
    return out


def weight_change(runs: Path, cfg: dict, seeds: list[int], methods=("sgdm", "rifle")) -> dict:
    from safetensors.torch import load_file

    start = load_pretrained_state(cfg["model"])
    head = classifier_name(create_model(cfg["model"], 10))
    res = {}
    for m in methods:
        per_seed = []
        for s in seeds:
            f = runs / slug(m) / f"seed{s}" / "model_final.safetensors"
            if f.is_file():
                per_seed.append(relative_change(load_file(str(f)), start, head))
        if per_seed:
            res[m] = {"layers": [n for n, _ in per_seed[0]], "per_seed": [[v for _, v in ps] for ps in per_seed]}
    return res


def plot_weight_change(wc: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    means = {}
    for m, d in wc.items():
        v = np.array(d["per_seed"])  # (seeds, layers)
        x = np.arange(v.shape[1])
        means[m] = v.mean(0)
        line = ax.plot(x, v.mean(0), marker=".", label=f"{m} ({len(v)} seeds)")[0]
        ax.fill_between(x, v.min(0), v.max(0), color=line.get_color(), alpha=0.2)
    ax.set_yscale("log")
    ax.set_ylabel("‖W − W₀‖ / ‖W₀‖")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    if "sgdm" in means and "rifle" in means:
        ax2.plot(np.arange(len(means["rifle"])), means["rifle"] / means["sgdm"], marker=".", color="k")
        ax2.axhline(1.0, color="grey", lw=0.8)
        ax2.set_ylabel("RIFLE / SGDM")
    layers = next(iter(wc.values()))["layers"]
    ax2.set_xlabel("backbone conv layer (input → output); stem, blocks, conv_head")
    ax2.set_xticks(np.arange(len(layers))[::4], [layers[i].replace("blocks.", "b") for i in range(0, len(layers), 4)], rotation=45, fontsize=7)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--preset", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--runs", default="runs/rifle_bench", help="where the runs (with weights) go")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/rifle"), help="where tables and plots are copied")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override config fields, e.g. epochs=2")
    args = ap.parse_args()
    cfg = dict(CPU) if args.preset == "cpu" else read_config_file(ROOT / "benchmarks/rifle_gpu.yaml")
    cfg = {**cfg, "data": args.data, "progress": False}
    for item in args.set:
        k, _, v = item.partition("=")
        cfg[k] = ast.literal_eval(v) if v[:1].isdigit() or v in ("True", "False", "None") else v
    seeds = list(range(args.seeds))
    runs = Path(args.runs) / args.data
    title = f"{cfg['model']} on {args.data}, {cfg['image_size']} px, {cfg['epochs']} epochs"
    compare(cfg, args.methods, seeds, runs, baseline="sgdm", title=title, extra_keys=("rifle_resets",))
    wc = weight_change(runs, cfg, seeds)
    (runs / "weight_change.json").write_text(json.dumps(wc, indent=1))
    if wc:
        plot_weight_change(wc, runs / "weight_change.png", f"backbone relative weight change after fine-tuning\n{title}")
    dest = Path(args.out) / args.data
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "results.md", "accuracy_vs_time.png", "weight_change.json", "weight_change.png"):
        if (runs / name).is_file():
            shutil.copy(runs / name, dest / name)
    print((dest / "results.md").read_text())


if __name__ == "__main__":
    main()
