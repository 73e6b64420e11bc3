"""Side-by-side comparison harness: run methods × seeds on the same data, backbone, budget and recipe, then write
a JSON of every run, a markdown table of paired statistics and an accuracy-vs-wall-time plot.

Each cell (method, seed) is one ordinary run in OUT/<method>/seed<k>/; a cell whose summary.json exists is not
rerun, so an interrupted benchmark resumes where it stopped.

Statistics follow the comparison protocol (docs/BENCHMARKS.md, "How methods are compared"): seed k of a method
is paired with seed k of the baseline. Per method we report the mean ± std over seeds of the paired accuracy
difference (test accuracy at the validation-best epoch, `test_acc`, and at the last epoch, `final_test_acc`),
and the time to reach the same seed's baseline final test accuracy: a seed that never reaches it counts as never
(+inf), the ratio to the baseline's own time is summarised by its median over seeds with "k of n reached". Time
is `wall_seconds` from metrics.jsonl: training time including every strategy's extra work, evaluation excluded.

Results written before the protocol (no `test_set_id` in summary.json; "best" chosen on test; no validation)
are read too: they are reported with `final_test_acc` only and marked as legacy, and where the test split was
drawn from the run seed (data without a test split) they are marked not comparable.
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
from .errors import FastRetrainError
from .integrity import metrics_lines
from .evidence import delivered, mean_std  # noqa: F401 (mean_std: also bench's, for benchmarks/run.py)
from .methods import method_names, recipe_fields
from .options import parse_options
from .run import make_config, train

# What defines a comparison's training recipe (docs/BENCHMARKS.md: one recipe for every method unless a cell differs).
RECIPE_KEYS = ("recipe", "optimizer", "lr", "momentum", "weight_decay", "schedule", "batch_size", "epochs",
               "image_size")
# Named data sets that have had a fixed test split from the start. Before the protocol, data without one (a folder
# of class folders such as flowers5) drew its test split from the run seed, so each seed saw different test images.
FIXED_TEST_SETS = frozenset({"fashion-mnist", "fashion-mnist-5k", "fashion-mnist-full", "cifar10-subset"})
CURRENT, LEGACY, NOT_COMPARABLE = "current", "legacy", "not comparable"


def environment() -> dict[str, Any]:
    """Hardware and code version, recorded with every result."""
    import torch

    def git(*args: str) -> str:
        cwd = Path(__file__).parent
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd, check=False).stdout.strip()

    try:
        commit, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        commit, dirty = "", ""
    if not commit:  # a copy without git history (the GPU machine): the commit recorded where it was copied from
        commit, dirty = os.environ.get("FASTRETRAIN_COMMIT", ""), ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    return {"command": command, "commit": commit + ("+dirty" if dirty else ""),
            "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": gpu, "boot_id": boot_id()}


def boot_id() -> str | None:
    """This machine in this session: the kernel's boot id (new at every boot; None where there is none). Cells
    timed against each other must share it (a suite resumed on another machine times other hardware)."""
    path = Path("/proc/sys/kernel/random/boot_id")
    return path.read_text().strip() if path.is_file() else None


def slug(method: str) -> str:
    return method.replace(",", "+")


def cell_dir(out: str | Path, method: str, seed: int) -> Path:
    """The folder of one method × seed run of a comparison; it has finished when it holds summary.json."""
    return Path(out) / slug(method) / f"seed{seed}"


def cell_done(out: str | Path, method: str, seed: int) -> bool:
    return (cell_dir(out, method, seed) / "summary.json").is_file()


def cell_config(base: dict[str, Any], label: str, per_method: dict | None = None) -> dict[str, Any]:
    """The config fields of the cells labelled `label`: a method spec, optionally with a recipe preset of its own
    after `@` and options of its own in the `-o` syntax, e.g.
    `fast-retrain[random-freeze.policy=uniform;mp-refine.until=None]` (an ablation variant in a suite's method
    list) or `freeze-unfreeze@fastai` (a method's own recipe as its own row: the preset's settings replace the
    comparison's). Options in `base` reach only the methods the cell's spec runs."""
    spec, _, rest = label.partition("[")
    spec, _, recipe = spec.partition("@")
    own = parse_options([o for o in rest.rstrip("]").split(";") if o]) if rest else {}
    fields = {**base, **(per_method or {}).get(label, {}), "method": spec}
    if recipe:
        for key in recipe_fields(recipe, spec):
            if key != "options":
                fields.pop(key, None)
        fields["recipe"] = recipe
    names = set(method_names(spec))
    options = {m: dict(o) for m, o in (fields.get("options") or {}).items() if m in names}
    for m, o in own.items():
        options[m] = {**options.get(m, {}), **o}
    fields["options"] = options
    return fields


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

    env = env or environment()
    records = []
    for seed in seeds:
        for method in methods:
            cell = cell_dir(out, method, seed)
            if not cell_done(out, method, seed):
                if deadline is not None and time.monotonic() > deadline:
                    print(f"== time budget reached: {method} seed {seed} and later cells not started "
                          "(rerun to continue)", flush=True)
                    continue
                # an unfinished cell's folder holds an interrupted run of this same cell: replace it
                kwargs = {**cell_config(base, method, per_method), "seed": seed, "out": str(cell), "overwrite": True}
                print(f"== {method}  seed {seed}  -> {cell}", flush=True)
                try:
                    train(make_config(**kwargs))
                except FastRetrainError as e:  # a method that cannot run here is reported, not fatal to the grid
                    print(f"   failed: {e}", flush=True)
                    failed.setdefault(method, str(e))
                    continue
                # the 1-minute load average when the cell ended: on a shared machine, how disturbed its clock was
                atomic_json({**env, "load_average_at_end": round(os.getloadavg()[0], 2)}, cell / "environment.json")
            records.append(load_record(cell, method, seed))
    return records


def chosen_acc(summary: dict) -> float:
    """Test accuracy at the epoch chosen on validation (`test_acc`); result files written before the
    validation split carry `best_test_acc` (the highest test accuracy over epochs) instead."""
    return summary["test_acc"] if "test_acc" in summary else summary["best_test_acc"]


def load_record(cell: Path, method: str, seed: int) -> dict:
    """One finished cell: its summary, per-epoch history and (when saved) resolved config."""
    summary = json.loads((cell / "summary.json").read_text())
    rec = {"method": method, "seed": seed, "summary": summary, "history": metrics_lines(cell)}
    if (cell / "config.json").is_file():
        rec["config"] = json.loads((cell / "config.json").read_text())
    return rec


# ---------------------------------------------------------------------------------------------------------------
# Protocol and recipe of a comparison


def protocol(records: list[dict]) -> dict[str, str]:
    """Which protocol the runs of one comparison followed, the accuracy to compare on, and a note for the report.

    `current`: every summary has a `test_set_id` and they are equal (same test images for every method and seed);
    compared on `test_acc` (test accuracy at the validation-best epoch) and `final_test_acc`.
    `legacy`: written before the protocol on data with a fixed test split; "best" was chosen on test and there was
    no validation, so only `final_test_acc` is compared.
    `not comparable`: the test images differ between runs (legacy runs on data whose test split was drawn from the
    run seed, different `test_set_id`s, or a mix of legacy and current runs).
    """
    ids = {r["summary"].get("test_set_id") for r in records}
    if records and None not in ids:
        if len(ids) == 1:
            return {"kind": CURRENT, "metric": "test_acc", "note": ""}
        return {"kind": NOT_COMPARABLE, "metric": "final_test_acc",
                "note": f"not comparable: the runs were scored on {len(ids)} different test sets (test_set_id)"}
    if len(ids) > 1:
        return {"kind": NOT_COMPARABLE, "metric": "final_test_acc",
                "note": "not comparable: legacy runs (before the protocol) mixed with current ones"}
    data = {str(r["summary"].get("data")) for r in records}
    if data and all(d in FIXED_TEST_SETS or d.endswith(".npz") for d in data):
        return {"kind": LEGACY, "metric": "final_test_acc",
                "note": "legacy (run before issue 12's protocol): a fixed test set, but no validation split and the "
                        "best epoch chosen on test, so only the final test accuracy is compared"}
    return {"kind": NOT_COMPARABLE, "metric": "final_test_acc",
            "note": "not comparable: legacy runs (before issue 12's protocol) whose test split was drawn from the "
                    "run seed, so each seed was scored on different images; re-running under the protocol is pending"}


def recipe_of(config: dict) -> dict:
    return {k: config.get(k) for k in RECIPE_KEYS}


def comparison_recipe(records: list[dict], base: dict | None = None) -> dict:
    """The recipe shared by the cells (from each cell's resolved config.json) and the cells that differ from it.

    Returns {"recipe": {key: value}, "differs": {"method seed k": {key: value}}}; the shared recipe is the most
    common one among the cells (the comparison's base config where no cell saved its config).
    """
    per_cell = {f"{r['method']} seed {r['seed']}": recipe_of(r["config"]) for r in records if r.get("config")}
    if not per_cell:
        return {"recipe": recipe_of(base or {}), "differs": {}}
    keys = [json.dumps(v, sort_keys=True) for v in per_cell.values()]
    common = json.loads(max(dict.fromkeys(keys), key=keys.count))
    differs = {cell: {k: v for k, v in rec.items() if v != common[k]}
               for cell, rec in per_cell.items() if rec != common}
    return {"recipe": common, "differs": differs}


def recipe_text(recipe: dict) -> str:
    """'SGD momentum 0.9, LR 0.01 cosine, wd 0.0001, batch 32, 5 epochs, 48 px (no preset)'."""
    r = {k: v for k, v in recipe.items() if v is not None}  # fields a legacy record did not save are left out
    names = {"sgd": "SGD", "adamw": "AdamW", "adam": "Adam"}
    parts = []
    if "optimizer" in r:
        parts.append(names.get(r["optimizer"], r["optimizer"])
                     + (f" momentum {r['momentum']:g}" if r["optimizer"] == "sgd" and "momentum" in r else ""))
    if "lr" in r:
        parts.append(f"LR {r['lr']:g} {r.get('schedule', 'constant')}")
    if "weight_decay" in r:
        parts.append(f"weight decay {r['weight_decay']:g}")
    parts += [fmt.format(r[k]) for k, fmt in (("batch_size", "batch {}"), ("epochs", "{} epochs"),
                                               ("image_size", "{} px")) if k in r]
    return ", ".join(parts) + (f" (preset `{r['recipe']}`)" if "recipe" in r else " (no preset)")


# ---------------------------------------------------------------------------------------------------------------
# Paired statistics


def pm(values: list[float] | None, fmt: str = "{:+.2f}") -> str:
    """'+1.23 ± 0.45' (mean ± std over seeds); one value alone; '—' when there is nothing."""
    if not values:
        return "—"
    m, s = mean_std(values)
    mean = fmt.format(m)
    mean = fmt.format(0.0) if float(mean) == 0 else mean  # no "-0.00" from a tiny negative rounding error
    return mean if math.isnan(s) else f"{mean} ± {fmt.format(s).lstrip('+')}"


def mean_pm(values: list[float], fmt: str = "{:.4f}") -> str:
    """`mean ± std` of the values that are numbers (None and NaN dropped), "—" when none are."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    return pm(values, fmt) if values else "—"


def curve(history: list[dict]) -> list[tuple[float, float]]:
    """The run's delivered-model curve (protocol v3, `evidence.delivered`): (training wall time, test accuracy of the
    validation-best model so far), one point per scored model, a head offered as epoch 0 included. The old
    `init_head_test_acc` of runs written before the head could be returned is not a point: no run returned it."""
    return delivered(history)


def time_to(history: list[dict], target: float) -> float | None:
    """Training wall time of the first point of the run's delivered `curve` that reaches `target` (None: never)."""
    return next((t for t, acc in curve(history) if acc >= target - 1e-12), None)


def median_ratio(ratios: list[float | None]) -> float:
    """Median over seeds of per-seed time ratios, a never-reached seed (None) counting as +inf."""
    return float(np.median([math.inf if r is None else r for r in ratios]))


def paired(records: list[dict], method: str, baseline: str) -> dict | None:
    """Seed-by-seed comparison of `method` with `baseline` over the seeds both finished (None when there are none).

    Accuracy differences are in points (100 × fraction), method − baseline, one value per seed; `d_test_acc` is
    None when the runs have no `test_acc` (legacy). `time_ratio[k]`: the method's time to reach seed k's baseline
    delivered final test accuracy (protocol v3: the test accuracy of the model the baseline returns) over the baseline's own time to it (None: never reached). `wall_ratio[k]`: the method's
    training wall time over the baseline's. `d_first_acc`: test accuracy after the first epoch, method − baseline.
    """
    m = {r["seed"]: r for r in records if r["method"] == method}
    b = {r["seed"]: r for r in records if r["method"] == baseline}
    seeds = sorted(set(m) & set(b))
    if not seeds:
        return None

    def diff(key: str) -> list[float] | None:
        pairs = [(m[s]["summary"].get(key), b[s]["summary"].get(key)) for s in seeds]
        return None if any(x is None or y is None for x, y in pairs) else [100 * (x - y) for x, y in pairs]

    ratios = []
    for s in seeds:
        target = delivered(b[s]["history"])[-1][1]  # v3: the baseline's delivered final (its val-best model's)
        t_m, t_b = time_to(m[s]["history"], target), time_to(b[s]["history"], target)
        ratios.append(None if t_m is None else t_m / t_b if t_b else math.nan)
    first = [100 * (m[s]["history"][0]["test_acc"] - b[s]["history"][0]["test_acc"]) for s in seeds]
    wall = [m[s]["summary"]["wall_seconds"] / b[s]["summary"]["wall_seconds"] for s in seeds]
    med = median_ratio(ratios)
    return {"method": method, "baseline": baseline, "seeds": seeds, "n": len(seeds),
            "d_test_acc": diff("test_acc"), "d_final_test_acc": diff("final_test_acc"), "d_first_acc": first,
            "time_ratio": ratios, "reached": sum(r is not None for r in ratios),
            "median_time_ratio": None if math.isinf(med) else med, "wall_ratio": wall}


def reach_text(p: dict) -> str:
    """'0.89× (3 of 3 reached)' or 'never (1 of 3 reached)'."""
    ratio = "never" if p["median_time_ratio"] is None else f"{p['median_time_ratio']:.2f}×"
    return f"{ratio} ({p['reached']} of {p['n']} reached)"


def aggregate(records: list[dict], baseline: str | None = None, extra_keys=()) -> list[dict]:
    """Per method: per-seed values (for mean ± std) and, with a baseline, the paired comparison against it."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    has_base = baseline in methods
    rows = []
    for m in methods:
        rs = [r for r in records if r["method"] == m]
        test = [r["summary"].get("test_acc") for r in rs]
        row = {
            "method": m, "seeds": len(rs), "test_acc": None if None in test else test,
            "final_test_acc": [r["summary"]["final_test_acc"] for r in rs],
            "wall_seconds": [r["summary"]["wall_seconds"] for r in rs],
            "images_per_second": [r["summary"]["images_per_second"] for r in rs],
            "paired": paired(records, m, baseline) if has_base else None,
        }
        for k in extra_keys:
            row[k] = [sum(h.get(k, 0.0) or 0.0 for h in r["history"]) for r in rs]
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], baseline: str | None = None, extra_keys=()) -> str:
    """Accuracy (mean ± std over seeds), paired differences and time to the baseline's final accuracy."""
    with_test = any(r["test_acc"] for r in rows)
    paired_rows = any(r["paired"] for r in rows)
    head = ["method", "seeds"] + (["test acc (val-best epoch)"] if with_test else []) + ["final test acc"]
    if paired_rows:
        head += ([f"Δ test acc vs {baseline} (pt, paired)"] if with_test else [])
        head += [f"Δ final vs {baseline} (pt, paired)", f"time to {baseline}'s final acc (median ratio)"]
    head += ["wall s", "images/s"] + [f"{k} (sum)" for k in extra_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['method']}`", str(r["seeds"])]
        cells += ([mean_pm(r["test_acc"] or [])] if with_test else []) + [mean_pm(r["final_test_acc"])]
        if paired_rows:
            p = r["paired"]
            if r["method"] == baseline or p is None:
                cells += (["—"] if with_test else []) + ["—", "—"]
            else:
                cells += ([pm(p["d_test_acc"])] if with_test else []) + [pm(p["d_final_test_acc"]), reach_text(p)]
        cells += [mean_pm(r["wall_seconds"], "{:.1f}"), mean_pm(r["images_per_second"], "{:.0f}")]
        cells += [mean_pm(r[k], "{:.2f}") for k in extra_keys]
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
        hs = [curve(r["history"]) for r in records if r["method"] == m]
        n = min(len(h) for h in hs)
        if n == 0:
            continue
        t = np.median([[p[0] for p in h[-n:]] for h in hs], 0)  # aligned at the end: the last epochs match
        acc = np.array([[p[1] for p in h[-n:]] for h in hs])
        color = colors[i % len(colors)]
        ax.plot(t, acc.mean(0), marker=markers[i % len(markers)], ms=4, color=color, label=m,
                linestyle="--" if "," in m else "-", lw=1.3)
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


def header(title: str, env: dict, base: dict, proto: dict, recipe: dict) -> str:
    """The results.md lines above the table: command, code, hardware, config, recipe, protocol."""
    gpu = f", GPU {env['gpu']}" if env.get("gpu") else ""
    lines = [f"# {title}\n", f"Command: `{env.get('command')}`  ",
             f"Code: {env.get('commit')}, torch {env.get('torch')}, {env.get('cpu_count')} CPU cores{gpu}  ",
             f"Config: `{json.dumps(base, sort_keys=True)}`  ",
             f"Recipe (every method): {recipe_text(recipe['recipe'])}"]
    extra = [f"Recipe differs: {cell}: `{json.dumps(d, sort_keys=True)}`" for cell, d in recipe["differs"].items()]
    extra += [f"Protocol: {proto['note']}"] if proto["note"] else []
    return "  \n".join(["\n".join(lines), *extra])


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
    proto, recipe = protocol(records), comparison_recipe(records, base)
    plot_curves(records, out / "accuracy_vs_time.png", title)
    atomic_json({"config": base, "methods": methods, "seeds": seeds, "environment": env, "protocol": proto,
                 "recipe": recipe, "baseline": baseline, "rows": rows, "runs": records, "failed": failed},
                out / "results.json")
    md = f"{header(title, env, base, proto, recipe)}\n\n{table}\n\n![accuracy vs time](accuracy_vs_time.png)\n"
    (out / "results.md").write_text(md)
    return {"rows": rows, "table": table, "records": records, "failed": failed, "environment": env,
            "protocol": proto, "recipe": recipe}
