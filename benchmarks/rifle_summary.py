"""Summarise the RIFLE benchmark: per dataset, RIFLE's paired (same seed) difference in test accuracy against SGDM
and each trick (at the validation-best epoch where the runs have one, and at the last epoch), and the backbone
weight-change ratio RIFLE/SGDM by depth. Reads results written under the comparison protocol and before it.

    python benchmarks/rifle_summary.py benchmarks/results/rifle/flowers5 benchmarks/results/rifle/fashion-mnist
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fastretrain.bench import paired as paired_stats  # noqa: E402
from fastretrain.bench import pm, protocol  # noqa: E402


def paired(results: dict, ref: str = "rifle") -> list[tuple[str, str, str, int]]:
    """(method, Δ test acc at the val-best epoch, Δ final test acc, n) with Δ = ref − method over the seeds both
    have, mean ± std in points; the first is "—" for legacy runs (no validation: their best epoch was chosen on
    test, so it is not reported)."""
    rows = []
    for m in results["methods"]:
        p = None if m == ref else paired_stats(results["runs"], ref, m)
        if p:
            rows.append((m, pm(p["d_test_acc"]), pm(p["d_final_test_acc"]), p["n"]))
    return rows


def depth_ratio(wc: dict, parts: int = 4) -> list[tuple[str, float, float, float]]:
    """Mean ‖ΔW‖/‖W₀‖ of SGDM and RIFLE per depth quarter of the backbone's conv layers, and their ratio."""
    s, r = (np.array(wc[m]["per_seed"]).mean(0) for m in ("sgdm", "rifle"))
    out = []
    for i, idx in enumerate(np.array_split(np.arange(len(s)), parts)):
        out.append((f"{i + 1}/{parts} (layers {idx[0]}–{idx[-1]})", float(s[idx].mean()), float(r[idx].mean()),
                    float((r[idx] / s[idx]).mean())))
    return out


def main(dirs: list[str]) -> None:
    for d in map(Path, dirs):
        res = json.loads((d / "results.json").read_text())
        note = protocol(res["runs"])["note"]
        print(f"### {d.name}: RIFLE − method, paired by seed (test accuracy points)\n")
        if note:
            print(f"{note}\n")
        print("| method | Δ test acc (val-best epoch) | Δ final | seeds |\n|---|---|---|---|")
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
