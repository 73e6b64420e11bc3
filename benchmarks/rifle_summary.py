"""Summarise the RIFLE benchmark: per dataset, RIFLE's paired (same seed) difference in best and final
test accuracy against SGDM and each trick, and the backbone weight-change ratio RIFLE/SGDM by depth.

    python benchmarks/rifle_summary.py benchmarks/results/rifle/flowers5 benchmarks/results/rifle/fashion-mnist
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def paired(results: dict, ref: str = "rifle") -> list[tuple[str, str, str, int]]:
    """(method, best diff, final diff, n) with diff = ref − method over seeds both have, mean ± std in points."""
    acc = {}
    for r in results["runs"]:
        acc.setdefault(r["method"], {})[r["seed"]] = (r["summary"]["best_test_acc"], r["summary"]["final_test_acc"])
    rows = []
    for m in results["methods"]:
        if m == ref or m not in acc or ref not in acc:
            continue
        seeds = sorted(set(acc[m]) & set(acc[ref]))
        d = np.array([[acc[ref][s][k] - acc[m][s][k] for k in (0, 1)] for s in seeds]) * 100  # (seeds, 2) points
        fmt = lambda v: f"{v.mean():+.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():+.2f}"  # noqa: E731
        rows.append((m, fmt(d[:, 0]), fmt(d[:, 1]), len(seeds)))
    return rows


def depth_ratio(wc: dict, parts: int = 4) -> list[tuple[str, float, float, float]]:
    """Mean ‖ΔW‖/‖W₀‖ of SGDM and RIFLE per depth quarter of the backbone's conv layers, and their ratio."""
    s, r = (np.array(wc[m]["per_seed"]).mean(0) for m in ("sgdm", "rifle"))
    out = []
    for i, idx in enumerate(np.array_split(np.arange(len(s)), parts)):
        out.append((f"{i + 1}/{parts} (layers {idx[0]}–{idx[-1]})", float(s[idx].mean()), float(r[idx].mean()), float((r[idx] / s[idx]).mean())))
    return out


def main(dirs: list[str]) -> None:
    for d in map(Path, dirs):
        res = json.loads((d / "results.json").read_text())
        print(f"### {d.name}: RIFLE − method, paired by seed (test accuracy points)\n")
        print("| method | Δ best | Δ final | seeds |\n|---|---|---|---|")
        for m, b, f, n in paired(res):
            print(f"| `{m}` | {b} | {f} | {n} |")
        if (d / "weight_change.json").is_file():
            wc = json.loads((d / "weight_change.json").read_text())
            if {"sgdm", "rifle"} <= set(wc):
                print(f"\n{d.name}: backbone ‖ΔW‖/‖W₀‖ by depth (conv layers, input → output), mean over seeds\n")
                print("| depth quarter | SGDM | RIFLE | RIFLE / SGDM (mean of per-layer ratios) |\n|---|---|---|---|")
                for q, s, r, ratio in depth_ratio(wc):
                    print(f"| {q} | {s:.4f} | {r:.4f} | {ratio:.3f} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
