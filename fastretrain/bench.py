"""Side-by-side comparison harness: run methods × seeds on the same data, backbone and budget, then
write a JSON of every run, a markdown table (mean ± std over seeds) and an accuracy-vs-wall-time plot.

Each cell (method, seed) is one ordinary run in OUT/<method>/seed<k>/; a cell whose summary.json exists
is not rerun, so an interrupted benchmark resumes where it stopped.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import atomic_json


def environment() -> dict[str, Any]:
    """Hardware and code version, recorded with every result."""
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=False).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               cwd=Path(__file__).parent, check=False).stdout.strip()  # fmt: skip
    except OSError:
        commit, dirty = "", ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "commit": commit + ("+dirty" if dirty else ""),
            "torch": torch.__version__, "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu}  # fmt: skip


def slug(method: str) -> str:
    return method.replace(",", "+")


def cell_dir(out: str | Path, method: str, seed: int) -> Path:
    """The folder of one method × seed run of a comparison; it has finished when it holds summary.json."""
    return Path(out) / slug(method) / f"seed{seed}"


def cell_done(out: str | Path, method: str, seed: int) -> bool:
    return (cell_dir(out, method, seed) / "summary.json").is_file()


def run_cells(base: dict[str, Any], methods: list[str], seeds: list[int], out: Path, per_method: dict | None = None,
              failed: dict | None = None, deadline: float | None = None, env: dict | None = None) -> list[dict]:
    """Run (or reuse) every method × seed; return one record per finished run (summary + history).

    A method that fails with a FastRetrainError (e.g. stochastic depth on a model without residual
    blocks) is skipped and its error stored in `failed` (method -> message). With `deadline` (a
    `time.monotonic()` value) no new cell starts after it; finished cells are still reported, and a
    rerun continues where this one stopped. Each cell run now gets `env` (default: `environment()`, taken
    before any cell runs) as its environment.json.
    """
    failed = {} if failed is None else failed
    from .errors import FastRetrainError
    from .run import make_config, train

    env = env or environment()
    records = []
    for seed in seeds:
        for method in methods:
            cell = cell_dir(out, method, seed)
            if not cell_done(out, method, seed):
                if deadline is not None and time.monotonic() > deadline:
                    print(f"== time budget reached: {method} seed {seed} and later cells not started (rerun to continue)", flush=True)
                    continue
                kwargs = {**base, **(per_method or {}).get(method, {}), "method": method, "seed": seed, "out": str(cell)}
                print(f"== {method}  seed {seed}  -> {cell}", flush=True)
                try:
                    train(make_config(**kwargs))
                except FastRetrainError as e:  # a method that cannot run here is reported, not fatal to the grid
                    print(f"   failed: {e}", flush=True)
                    failed.setdefault(method, str(e))
                    continue
                atomic_json(env, cell / "environment.json")
            records.append(load_record(cell, method, seed))
    return records


def load_record(cell: Path, method: str, seed: int) -> dict:
    summary = json.loads((cell / "summary.json").read_text())
    history = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"method": method, "seed": seed, "summary": summary, "history": history}


def _ms(values: list[float], fmt: str = "{:.4f}") -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "—"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(np.mean(values))} ± {fmt.format(np.std(values, ddof=1))}"


def time_to(history: list[dict], target: float) -> float | None:
    """Training wall time at the end of the first epoch whose test accuracy reaches `target`."""
    return next((h["wall_seconds"] for h in history if h["test_acc"] >= target - 1e-12), None)


def aggregate(records: list[dict], baseline: str | None = None, extra_keys=()) -> list[dict]:
    """Per method: mean ± std rows; time to reach the baseline's mean best accuracy."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    target = None
    if baseline in methods:
        target = float(np.mean([r["summary"]["best_test_acc"] for r in records if r["method"] == baseline]))
    rows = []
    for m in methods:
        rs = [r for r in records if r["method"] == m]
        reach = [time_to(r["history"], target) for r in rs] if target is not None else []
        row = {
            "method": m, "seeds": len(rs),
            "best_test_acc": [r["summary"]["best_test_acc"] for r in rs],
            "final_test_acc": [r["summary"]["final_test_acc"] for r in rs],
            "wall_seconds": [r["summary"]["wall_seconds"] for r in rs],
            "images_per_second": [r["summary"]["images_per_second"] for r in rs],
            "time_to_target": reach, "reached": sum(t is not None for t in reach), "target": target,
        }  # fmt: skip
        for k in extra_keys:
            row[k] = [sum(h.get(k, 0.0) or 0.0 for h in r["history"]) for r in rs]
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], baseline: str | None = None, extra_keys=()) -> str:
    head = ["method", "seeds", "best test acc", "final test acc", "wall s", "images/s"]
    if rows and rows[0]["target"] is not None:
        head.append(f"s to {baseline} best ({rows[0]['target']:.4f})")
    head += [f"{k} (sum)" for k in extra_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['method']}`", str(r["seeds"]), _ms(r["best_test_acc"]), _ms(r["final_test_acc"]),
                 _ms(r["wall_seconds"], "{:.1f}"), _ms(r["images_per_second"], "{:.0f}")]  # fmt: skip
        if r["target"] is not None:
            reached = [t for t in r["time_to_target"] if t is not None]
            cells.append(f"{_ms(reached, '{:.1f}')} ({r['reached']}/{r['seeds']} reached)" if reached else f"never (0/{r['seeds']})")
        cells += [_ms(r[k], "{:.2f}") for k in extra_keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(records: list[dict], path: Path, title: str) -> None:
    """Test accuracy against cumulative training wall time (median over seeds) per method; line: mean accuracy
    over seeds, band: ± std. Up to 20 distinguishable colours; combinations of methods are dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in records))
    many = len(methods) > 6
    fig, ax = plt.subplots(figsize=(9.5 if many else 7, 4.8))
    colors = plt.get_cmap("tab20" if len(methods) > 10 else "tab10").colors
    markers = "os^vDP*Xph<>"
    for i, m in enumerate(methods):
        hs = [r["history"] for r in records if r["method"] == m]
        n = min(len(h) for h in hs)
        if n == 0:
            continue
        t = np.median([[e["wall_seconds"] for e in h[:n]] for h in hs], 0)
        acc = np.array([[e["test_acc"] for e in h[:n]] for h in hs])
        color = colors[i % len(colors)]
        ax.plot(t, acc.mean(0), marker=markers[i % len(markers)], ms=4, color=color, label=m,
                linestyle="--" if "," in m else "-", lw=1.3)  # fmt: skip
        if len(hs) > 1:
            ax.fill_between(t, acc.mean(0) - acc.std(0), acc.mean(0) + acc.std(0), color=color, alpha=0.12)
    ax.set_xlabel("training wall time (s, median over seeds)")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(
    base: dict[str, Any],
    methods: list[str],
    seeds: list[int],
    out: str | Path,
    baseline: str | None = "sgdm",
    title: str | None = None,
    extra_keys=(),
    per_method: dict | None = None,
    deadline: float | None = None,
) -> dict:
    """Run the grid and write OUT/results.json, OUT/results.md and OUT/accuracy_vs_time.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    env = None
    if all(cell_done(out, m, s) for s in seeds for m in methods) and (out / "results.json").is_file():
        # Nothing will run: this is a re-aggregation, so keep the record of the run that produced the cells.
        env = json.loads((out / "results.json").read_text()).get("environment")
    env = env or environment()  # taken before any cell runs: the code that runs them
    records = run_cells(base, methods, seeds, out, per_method, failed, deadline, env)
    rows = aggregate(records, baseline, extra_keys)
    table = markdown_table(rows, baseline, extra_keys)
    if failed:
        table += "\n\nNot run: " + "; ".join(f"`{m}`: {e}" for m, e in failed.items())
    title = title or f"{base.get('model')} on {base.get('data')}"
    plot_curves(records, out / "accuracy_vs_time.png", title)
    atomic_json({"config": base, "methods": methods, "seeds": seeds, "environment": env, "rows": rows, "runs": records,
                 "failed": failed}, out / "results.json")  # fmt: skip
    md = (f"# {title}\n\nCommand: `{env['command']}`  \nCode: {env['commit']}, torch {env['torch']}, "
          f"{env['cpu_count']} CPU cores{', GPU ' + env['gpu'] if env['gpu'] else ''}  \n"
          f"Config: `{json.dumps(base, sort_keys=True)}`\n\n{table}\n\n![accuracy vs time](accuracy_vs_time.png)\n")  # fmt: skip
    (out / "results.md").write_text(md)
    return {"rows": rows, "table": table, "records": records, "failed": failed, "environment": env}
