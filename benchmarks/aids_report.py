"""The training aids' report (benchmarks/aids.py's cells, rendered): per aid its delivered accuracy, paired deltas
against the same seed's baseline and their verdict, time ratios and their timing verdict; docs/training_aids.md's
block, results.md and results.json. Every number is computed from the finished cells.

Usage: python benchmarks/aids.py --render
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import aids as A  # first: it puts the repository on sys.path; read at call time (tests point it elsewhere)
from fastretrain import evidence as ev
from fastretrain.bench import pm
from fastretrain.checkpoint import atomic_json
from fastretrain.integrity import metrics_lines

# ---------------------------------------------------------------------------------------------------------------
# Reading the cells (every number rendered below is computed from them)


def load() -> dict[str, dict[int, dict]]:
    """Every finished cell: {label: {seed: {summary, history, env, extra}}}; failed cells under 'failed'."""
    cells: dict[str, dict[int, dict]] = {}
    for label in A.LABELS:
        for folder in sorted((A.ROOT / label).glob("seed*")):
            seed = int(folder.name[4:])
            if (folder / "failed.json").is_file():
                cells.setdefault("failed", {})[f"{label}/seed{seed}"] = A._record(folder / "failed.json")
                continue
            if not A.done(folder):
                continue
            hist = metrics_lines(folder) if (folder / "metrics.jsonl").is_file() else []
            extra = A._record(folder / A.EXTRA[label]) if label in A.EXTRA else None
            cells.setdefault(label, {})[seed] = {"summary": A._record(folder / "summary.json"), "history": hist,
                                                 "env": A._record(folder / "environment.json"), "extra": extra}
    return cells


def accuracy(label: str, rec: dict) -> float:
    """Delivered test accuracy: the end of the delivered-model curve; for TTA the flip-averaged accuracy."""
    return rec["summary"]["test_acc"] if label == "+tta" else ev.final(rec["history"])


def costs(label: str, rec: dict, base: dict | None) -> tuple[float | None, float | None]:
    """(wall, CPU) time ratio: training time over the same seed's baseline's (lr-find: sweep + training); TTA:
    the TTA evaluation's time over the plain evaluation's."""
    s = rec["summary"]
    if label == "+tta":
        e = s["evaluations"]
        return e["tta"]["seconds"] / e["plain"]["seconds"], e["tta"]["cpu_seconds"] / e["plain"]["cpu_seconds"]
    if base is None:
        return None, None
    wall, cpu = s["wall_seconds"], s.get("cpu_seconds")
    if label == "lr-find":
        wall, cpu = wall + rec["extra"]["wall_seconds"], (cpu or 0) + rec["extra"]["cpu_seconds"]
    b = base["summary"]
    return wall / b["wall_seconds"], cpu / b["cpu_seconds"] if cpu and b.get("cpu_seconds") else None


def _join(values, fmt: str = "{:.3g}") -> str:
    return ", ".join(fmt.format(v) for v in values)


def notes(label: str, runs: dict[int, dict]) -> str:
    """What else the aid's cells recorded, per seed in seed order."""
    recs = [runs[s] for s in sorted(runs)]
    if label == "+patience":
        stops = [f"{r['summary']['epochs']}" + ("" if r["history"][-1].get("early_stopped") else " (not stopped)")
                 for r in recs]
        return (f"stopped after epoch {', '.join(stops)} of {A.EPOCHS}; delivered epoch "
                f"{_join([r['summary']['best_epoch'] for r in recs], '{}')}")
    if label == "lr-find":
        x = [r["extra"] for r in recs]
        sweeps = ", ".join(f"{A.sweep_text(e)} in {e['wall_seconds']:.0f} s" for e in x)
        return (f"suggested LR {_join([e['suggested'] for e in x])} (steepest descent; min/10: "
                f"{_join([e['min_div10'] for e in x])}; the recipe's LR {A.BASE['lr']}); sweep {sweeps}")
    if label == "+tta":
        s = [r["summary"] for r in recs]
        same = all(abs(x["plain_acc"] - x["baseline_test_acc"]) < 1e-9 for x in s)
        plain, tta = ([x["evaluations"][k]["seconds"] for x in s] for k in ("plain", "tta"))
        check = "reproduces" if same else "**differs from**"
        return (f"{s[0]['test_images']} test images: plain {_join(plain, '{:.1f}')} s, TTA {_join(tta, '{:.1f}')} s; "
                f"the plain evaluation {check} the baseline's test accuracy")
    if label == A.BASELINE:
        return f"training {_join([r['summary']['wall_seconds'] for r in recs], '{:.0f}')} s"
    return ""


def analyse(cells: dict) -> dict:
    """Per aid: accuracies, paired deltas vs the baseline (pt), verdict, time ratios and their timing verdict."""
    base = cells.get(A.BASELINE, {})
    controls = [c for lab, runs in cells.items() if lab != "failed" for r in runs.values()
                for c in r["env"].get("control_seconds", [])]
    spread = ev.spread(controls)
    any_rec = next(iter(base.values()), None)
    n_test = any_rec["summary"]["test_images"] if any_rec else 0
    rows = []
    for label in A.LABELS:
        runs = cells.get(label, {})
        acc = {s: accuracy(label, r) for s, r in runs.items()}
        diffs = [100 * (acc[s] - accuracy(A.BASELINE, base[s])) for s in sorted(acc) if s in base] \
            if label != A.BASELINE else []
        ratios = {s: costs(label, r, base.get(s)) for s, r in runs.items()} if label != A.BASELINE else {}
        walls = [w for w, _ in ratios.values() if w is not None]
        cpus = [c for _, c in ratios.values() if c is not None]
        med = float(np.median(walls)) if walls else None
        rows.append({"label": label, "acc": acc, "diffs": diffs, "n": len(diffs),
                     "verdict": ev.verdict(diffs) if label != A.BASELINE else None,
                     "wall_ratio": {s: w for s, (w, _) in ratios.items()},
                     "cpu_ratio": {s: c for s, (_, c) in ratios.items()},
                     "median_wall_ratio": med, "median_cpu_ratio": float(np.median(cpus)) if cpus else None,
                     "timing": ev.resolved(med, spread) if med is not None else None,
                     "notes": notes(label, runs) if runs else ""})
    return {"comparison": A.CID, "seeds": sorted(base), "n_test": n_test, "spread": spread, "controls": controls,
            "rows": rows, "failed": cells.get("failed", {}),
            "se_pt": ev.binomial_se_pt(np.mean(list(rows[0]["acc"].values()) or [0.5]), n_test) if n_test else None}


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def verdict_text(row: dict) -> str:
    if row["label"] == A.BASELINE:
        return "—"
    return f"**{row['verdict']}**" if row["verdict"] else f"n={row['n']}: needs {ev.MIN_SEEDS}, no verdict"


def _ratio(row: dict, key: str) -> str:
    per = [row[key][s] for s in sorted(row[key]) if row[key][s] is not None]
    if not per:
        return "—"
    med = float(np.median(per))
    return f"{med:.2f}x ({', '.join(f'{r:.2f}' for r in per)})"


def table_md(a: dict) -> str:
    what = dict([(A.BASELINE, f"SGDM, LR {A.BASE['lr']} cosine to {A.EPOCHS} epochs")]
                + [(lab, w) for lab, _, w in A.AIDS])
    lines = ["| aid | setting | delivered test acc (n) | Δ vs baseline, pt (paired) | verdict | time vs baseline, "
             "wall: median (per seed) | CPU time: median (per seed) | timing | notes |", "|" + "---|" * 9]
    for r in a["rows"]:
        diff = pm(r["diffs"]) if r["diffs"] else "—"
        lines.append(f"| `{r['label']}` | {what[r['label']]} | {pm(list(r['acc'].values()), '{:.4f}')} "
                     f"({len(r['acc'])}) | {diff} | {verdict_text(r)} | {_ratio(r, 'wall_ratio')} | "
                     f"{_ratio(r, 'cpu_ratio')} | {r['timing'] or '—'} | {r['notes'] or '—'} |")
    return "\n".join(lines)


RULES = ("Rules (`fastretrain/evidence.py`): accuracy is the delivered model's (validation-best epoch's) test "
         "accuracy; Δ is paired by seed against the same seed's baseline, mean ± std in points; **gain**: mean − std "
         f"> 0; **no loss**: mean ≥ −{ev.NO_LOSS_MEAN_PT} pt and mean − std ≥ −{ev.NO_LOSS_FLOOR_PT} pt; else "
         "**loss** when mean + std < 0, **inconclusive** when not (neither is no loss); fewer than "
         f"{ev.MIN_SEEDS} seeds: no verdict. Time: the aid's training time over the same seed's "
         "baseline's (lr-find: its sweep plus its training; TTA: the TTA evaluation over the plain one), wall clock "
         "and process CPU; a median ratio inside the same-work control's spread (identical work timed before and "
         "after every cell) is unresolved.")


def block_md(a: dict, env: dict | None = None) -> str:
    if not a["seeds"]:
        return ("**Not measured yet.** `python benchmarks/aids.py` runs the measurement (suite v3's "
                f"{A.CID}, SGDM annealed to {A.EPOCHS} epochs, each aid against it, 3 seeds); until it has run, treat "
                "these aids as tools to try, and compare against a run without them under the same settings.")
    spread = f"{a['spread']:.2f}x" if a["spread"] else "not measured"
    se = f"{a['se_pt']:.2f}" if a["se_pt"] is not None else "—"
    failed = "".join(f"\n\nFailed: `{k}`: {v['error']}" for k, v in a["failed"].items())
    return (f"Measured once on suite v3's `{A.CID}` ({len(a['seeds'])} seeds, {a['n_test']} test images, binomial SE "
            f"±{se} pt; SGDM annealed to {A.EPOCHS} epochs as the baseline; one cell at a time on "
            f"{(env or {}).get('cpu_count', '?')} CPU cores). "
            f"Rendered by `python benchmarks/aids.py --render` from `benchmarks/results/aids/`; the settings and why "
            f"are in that script's header. Same-work control spread: {spread}.\n\n{table_md(a)}\n\n{RULES}{failed}")


def replace_block(text: str, body: str) -> str:
    """`text` with the content between BEGIN and END replaced by `body` (the markers kept)."""
    pattern = re.compile(rf"({re.escape(A.BEGIN)}\n)(?:.*?\n)?({re.escape(A.END)})", re.S)
    if not pattern.search(text):
        raise SystemExit(f"no {A.BEGIN} ... {A.END} block in {A.DOC}")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def render() -> list[Path]:
    cells = load()
    a = analyse(cells)
    env = next((r["env"] for r in cells.get(A.BASELINE, {}).values()), None)
    where = ""
    if env:
        where = (f"Code {env.get('commit')}, torch {env.get('torch')}, {env.get('cpu_count')} CPU cores, "
                 f"{env.get('torch_threads')} threads; command `{env.get('command')}`.\n\n")
    A.DOC.write_text(replace_block(A.DOC.read_text(), block_md(a, env)))
    if not a["seeds"]:  # nothing measured: only the page's block says so
        return [A.DOC]
    A.ROOT.mkdir(parents=True, exist_ok=True)
    (A.ROOT / "results.md").write_text(f"# Training aids, measured (issue 24)\n\n{where}{block_md(a, env)}\n")
    atomic_json(a, A.ROOT / "results.json")
    return [A.ROOT / "results.md", A.ROOT / "results.json", A.DOC]
