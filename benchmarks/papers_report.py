"""Issue 26's judging and report: the finished cells of each paper regime (benchmarks/papers.py), read by the fixed
rules of fastretrain/evidence.py and RULES below (stated before any cell ran), rendered to results.md /
results.json / delivered.png per regime and benchmarks/results/papers/report.md. Run through
`python benchmarks/papers.py --render`."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

import evidence_v3 as v3  # first: it puts the repository on sys.path
from fastretrain import evidence as ev
from fastretrain.bench import pm, slug
from fastretrain.checkpoint import atomic_json
from papers import KR_EPOCHS, RESULTS, RIFLE_EPOCHS, ROOT, SEEDS, TRICKS, Regime, _history, counts, regimes

# ---------------------------------------------------------------------------------------------------------------
# Reading and judging the cells (fixed rules, stated before any cell ran)

RIFLE_MIN_PT = 0.5  # the paper's smallest claimed gain over a trick
KR_MAX_TIME_RATIO = 0.85  # "~20% less time": at least 15% less, and outside the same-work control's spread


def load(regime: Regime, out: Path = ROOT) -> dict[str, dict[int, dict]]:
    """The regime's finished cells: {row label: {seed: {"summary", "history", "env"}}}."""
    cells: dict[str, dict[int, dict]] = {}
    for row in regime.rows:
        for s in sorted((out / regime.name / slug(row.label)).glob("seed*")):
            if counts(regime, s, out):
                envf = s / "environment.json"
                cells.setdefault(row.label, {})[int(s.name[4:])] = {
                    "summary": json.loads((s / "summary.json").read_text()), "history": _history(s),
                    "env": json.loads(envf.read_text()) if envf.is_file() else {}}
    return cells


def analyse(regime: Regime, cells: dict) -> dict:
    """Per row: delivered accuracy at the seed's budget (the baseline's training time x BUDGET_SLACK) and at the
    end of its own schedule, paired differences against the baseline, time to the target, time ratio."""
    base = cells.get(regime.baseline, {})
    budget = {s: r["summary"]["wall_seconds"] for s, r in base.items()}
    finals = [ev.final(r["history"]) for r in base.values()]
    target = float(np.mean(finals)) - ev.TARGET_BELOW_PT / 100 if finals else None
    controls = [c for runs in cells.values() for r in runs.values() for c in r["env"].get("control_seconds", [])]
    spread = ev.spread(controls)
    chance = 1 / next(iter(base.values()))["summary"]["num_classes"] if base else 0.0
    rows = {}
    for row in regime.rows:
        runs = cells.get(row.label, {})
        at_budget = {s: (ev.acc_at(r["history"], budget[s] * ev.BUDGET_SLACK) or chance)
                     for s, r in runs.items() if s in budget}
        own = {s: ev.final(r["history"]) for s, r in runs.items()}
        diffs = [100 * (at_budget[s] - ev.final(base[s]["history"])) for s in sorted(at_budget)]
        times = {s: ev.time_to(r["history"], target) for s, r in runs.items()} if target is not None else {}
        reach = [r for s in times if s in base
                 and (r := ev.time_ratio(times[s], ev.time_to(base[s]["history"], target))) is not None]
        wall = [r["summary"]["wall_seconds"] / budget[s] for s, r in runs.items() if s in budget]
        med_reach = float(np.median(reach)) if len(reach) >= ev.MIN_SEEDS else None
        med_wall = float(np.median(wall)) if wall else None
        rows[row.label] = {"at_budget": at_budget, "final": own, "diffs": diffs, "n": len(diffs),
                           "verdict": ev.verdict(diffs) if row.label != regime.baseline else None,
                           "reach_times": times, "reached": sum(t is not None for t in times.values()),
                           "reach_ratio": med_reach, "reach_timing": ev.resolved(med_reach, spread) if med_reach is not None
                           else ev.too_few_pairs(len(reach)),
                           "time_ratio": med_wall, "timing": ev.resolved(med_wall, spread)}
    return {"regime": regime.name, "seeds": sorted(budget), "budget": budget, "target": target, "spread": spread,
            "chance": chance, "rows": rows, "claim": judge(regime, cells, rows, spread)}


def _paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    return [100 * (a[s] - b[s]) for s in sorted(a) if s in b]


def _no_loss(row: dict) -> bool | None:
    """Whether a row's verdict shows no loss (a gain does too); None without a verdict."""
    return None if row["verdict"] is None else row["verdict"] in ("gain", "no loss")


def judge(regime: Regime, cells: dict, rows: dict, spread: float | None) -> dict:
    """The paper's claim by its fixed rule; each criterion with its numbers."""
    crit = {}
    if regime.name == "rifle":  # RIFLE beats each trick by >= 0.5 pt, a gain beyond one paired std (equal budget)
        mine = rows["rifle"]["at_budget"]
        for t in TRICKS:
            d = _paired(mine, rows[t]["at_budget"])
            v = ev.verdict(d)
            crit[f"rifle vs {t}"] = {"diffs": d, "verdict": v,
                                     "holds": None if v is None else bool(v == "gain" and np.mean(d) >= RIFLE_MIN_PT)}
        held = [c["holds"] for c in crit.values()]
        if any(h is None for h in held):
            result = f"pending (fewer than {ev.MIN_SEEDS} paired seeds)"
        else:
            k = sum(held)
            result = "reproduced" if k == len(held) else "partly" if 2 * k >= len(held) else "not reproduced"
            result += f" ({k} of {len(held)} tricks)"
        return {"criteria": crit, "result": result}
    if regime.name == "kernel-rescale":  # no loss against SGDM-16 and >= 15% less time, resolved
        r = rows["kernel-rescale"]
        crit["no loss vs SGDM, same epochs"] = {"diffs": r["diffs"], "verdict": r["verdict"], "holds": _no_loss(r)}
        ratio, faster = r["time_ratio"], r["timing"] == "faster"
        crit["time ratio"] = {"ratio": ratio, "timing": r["timing"],
                              "holds": None if ratio is None else ratio <= KR_MAX_TIME_RATIO and faster}
        same_time = f"sgdm-e{round(0.8 * KR_EPOCHS)}"
        reported = {same_time: f"vs SGDM in the same time ({same_time}; reported, not part of the claim)",
                    # the plan's row that separates the kernels' part
                    "resize-only": "vs resize-only (the same low-resolution phase, no kernel rescaled: what "
                                   "rescaling the kernels adds; reported, not part of the claim)"}
        for row, label in reported.items():
            d = _paired(r["final"], rows[row]["final"])
            crit[label] = {"diffs": d, "verdict": ev.verdict(d), "holds": None}
    else:  # decompose: starts better, reaches the target sooner, no loss at the budget
        r, base = rows["composed-K2"], cells.get(regime.baseline, {})
        chance = 1 / next(iter(base.values()))["summary"]["num_classes"] if base else 0.0
        start = {}  # seed -> (composed's first delivered accuracy, random init's delivered accuracy at that time)
        for s, rec in cells.get("composed-K2", {}).items():
            pts = ev.delivered(rec["history"])
            if pts and s in base:
                t1, a1 = pts[0]
                b1 = ev.acc_at(base[s]["history"], t1)
                start[s] = (a1, chance if b1 is None else b1)
        d0 = [100 * (a - b) for a, b in start.values()]
        v0 = ev.verdict(d0)
        crit["starts better (delivered at its first global epoch vs random init at that time)"] = {
            "diffs": d0, "verdict": v0, "holds": None if v0 is None else v0 == "gain"}
        crit["reaches the target sooner"] = {"ratio": r["reach_ratio"], "timing": r["reach_timing"],
                                             "holds": None if r["n"] < ev.MIN_SEEDS or r["reach_ratio"] is None
                                             else r["reach_timing"] == "faster"}
        crit["no loss at the budget"] = {"diffs": r["diffs"], "verdict": r["verdict"], "holds": _no_loss(r)}
    held = [c["holds"] for k, c in crit.items() if "not part of the claim" not in k]
    if any(h is None for h in held):
        result = f"pending (fewer than {ev.MIN_SEEDS} paired seeds)"
    else:
        result = "reproduced" if all(held) else "not reproduced (" + ", ".join(
            k for k, c in crit.items() if c["holds"] is False) + ")"
    return {"criteria": crit, "result": result}


def table_md(regime: Regime, a: dict) -> str:
    lines = ["| row | epochs | delivered at the budget (n) | own schedule's final | Δ vs baseline at the budget, pt "
             "(paired) | verdict | time / baseline's | time to target (reached) |", "|---|---|---|---|---|---|---|---|"]
    for row in regime.rows:
        r = a["rows"][row.label]
        ratio = "—" if r["time_ratio"] is None or row.label == regime.baseline else \
            f"{r['time_ratio']:.2f}x ({r['timing']})"
        reach = "—" if r["reach_ratio"] is None else ("never" if math.isinf(r["reach_ratio"]) else
                                                      f"{r['reach_ratio']:.2f}x ({r['reach_timing']})")
        verdict = "baseline" if row.label == regime.baseline else r["verdict"] or f"n={r['n']}: counted nowhere"
        lines.append(f"| `{row.label}` | {row.epochs} | {pm(list(r['at_budget'].values()), '{:.4f}')} "
                     f"({len(r['at_budget'])}) | {pm([x for x in r['final'].values() if x is not None], '{:.4f}')} | "
                     f"{pm(r['diffs']) if row.label != regime.baseline else '—'} | {verdict} | {ratio} | "
                     f"{reach} ({r['reached']} of {len(r['reach_times'])}) |")
    return "\n".join(lines)


def claim_md(a: dict) -> str:
    out = [f"**Claim: {a['claim']['result']}.**"]
    for k, c in a["claim"]["criteria"].items():
        nums = pm(c["diffs"]) + " pt" if "diffs" in c else (
            "—" if c["ratio"] is None else f"{c['ratio']:.2f}x ({c['timing']})")
        state = {True: "holds", False: "fails", None: "no verdict"}[c["holds"]]
        out.append(f"- {k}: {nums}{', ' + c['verdict'] if c.get('verdict') else ''}: {state}")
    return "\n".join(out)


def plot(regime: Regime, cells: dict, a: dict, path: Path) -> None:
    """Delivered accuracy (mean over seeds) against training time for every row, the budget dashed; for RIFLE a
    second panel: validation accuracy per epoch (mean over seeds) of SGDM and RIFLE, resets marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if regime.name == "rifle" else 1
    fig, axes = plt.subplots(1, panels, figsize=(9 * panels, 4.8), squeeze=False)
    ax = axes[0][0]
    tmax = max((r["summary"]["wall_seconds"] for runs in cells.values() for r in runs.values()), default=1.0)
    grid = np.linspace(0, tmax * 1.02, 200)
    for row in regime.rows:
        runs = cells.get(row.label, {})
        if not runs:
            continue
        ys = ev.mean_curve([r["history"] for r in runs.values()], grid)
        ax.plot(grid, ys, label=row.label, lw=1.4)
    if a["budget"]:
        ax.axvline(np.mean(list(a["budget"].values())), color="grey", ls="--", lw=0.8)
    ax.set_xlabel(f"training time (s); dashed: the budget ({regime.baseline}'s time)")
    ax.set_ylabel("delivered test accuracy (mean over seeds)")
    ax.set_title(f"{regime.name}: {regime.paper}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if panels == 2:
        ax = axes[0][1]
        for label in ("sgdm", "rifle"):
            runs = cells.get(label, {})
            if runs:
                n = min(len(r["history"]) for r in runs.values())
                val = [np.mean([r["history"][i]["val_acc"] for r in runs.values()]) for i in range(n)]
                ax.plot(range(1, n + 1), val, label=label)
        for b in (RIFLE_EPOCHS // 4 * k for k in (1, 2, 3)):
            ax.axvline(b + 0.5, color="red", ls=":", lw=0.8)
        ax.set_xlabel("epoch (dotted: RIFLE's head resets, after epochs 10, 20, 30)")
        ax.set_ylabel("validation accuracy (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


RULES = (f"Fixed rules (fastretrain/evidence.py and this file, stated before any cell ran): a row's accuracy at the "
         f"budget is its delivered-model curve (test accuracy of its validation-best model so far) at training time "
         f"<= {ev.BUDGET_SLACK} x the same seed's baseline training time (chance if nothing by then); differences "
         f"are paired by seed against the baseline's final delivered accuracy; gain: mean - std > 0; no loss: mean "
         f">= -{ev.NO_LOSS_MEAN_PT} pt and mean - std >= -{ev.NO_LOSS_FLOOR_PT} pt; else loss when mean + std < 0, "
         f"inconclusive when not; fewer than {ev.MIN_SEEDS} seeds: no verdict. Time ratios count only outside the "
         f"same-work control's spread. RIFLE: reproduced "
         f"against a trick when RIFLE - trick is a gain of >= {RIFLE_MIN_PT} pt; 'partly' when it holds against at "
         f"least half of the five. Kernel rescaling: no loss against SGDM at the same epochs and a time ratio <= "
         f"{KR_MAX_TIME_RATIO} resolved faster. Decomposition: a gain at its first global epoch against random init "
         "at the same time, time to target resolved faster, no loss at the budget. A cell counts when its process "
         f"computed for >= {v3.MIN_CPU_SHARE:.0%} of its threads' wall time (a composed run: its global phase) and "
         "ran on the machine and in the session (boot id) of its seed's baseline cell (a seed begun elsewhere runs "
         "again whole). Time to target: never is infinite time (a seed where only the row reaches the target gives "
         f"a ratio of 0, neither reaching gives none); a timing verdict needs ratios on {ev.MIN_SEEDS} seeds.")


# ---------------------------------------------------------------------------------------------------------------
# The papers' docs pages: a `<!-- results:papers -->` block each (the regime's state, claim and table), RIFLE's
# also the cpu-v2 rows' validation accuracy around each reset (the measured "why" of its final epoch)

DOCS = RESULTS.parent.parent / "docs"
PAGES = {"rifle": "rifle.md", "kernel-rescale": "kernel_rescale.md", "decompose": "decompose.md"}
CPU_V2 = RESULTS / "suite-cpu-v2"


def shared_seeds(hist: dict[str, dict[int, list[dict]]]) -> list[int]:
    """The seeds every method in `hist` ({method: {seed: history}}) finished, sorted."""
    return sorted(set.intersection(*(set(h) for h in hist.values())))


def epoch_table(hist: dict[str, dict[int, list[dict]]], seeds: list[int], lines: list[tuple[str, str]],
                around_resets: bool = False) -> list[str]:
    """Markdown table of the mean per epoch, over `seeds` (finished by every method in `hist`), of each
    (method, metrics key) in `lines`; ↺ marks an epoch that began with a head reset (`rifle_resets` in some seed's
    metrics). `around_resets`: only the first and last epochs and, per reset, the epoch before it and the three
    from it."""
    n = min(len(hist[m][s]) for m in hist for s in seeds)
    reset = [any(h[s][i].get("rifle_resets") for h in hist.values() for s in seeds) for i in range(n)]
    shown = range(n)
    if around_resets:
        keep = {0, n - 1} | {j for i in range(n) if reset[i] for j in range(i - 1, i + 3)}
        shown = [i for i in sorted(keep) if 0 <= i < n]
    names = {"val_acc": "val", "test_acc": "test", "train_loss": "train loss"}
    out = ["| epoch | " + " | ".join(f"{i + 1}{' ↺' if reset[i] else ''}" for i in shown) + " |",
           "|---|" + "---|" * len(shown)]
    for m, k in lines:
        out.append(f"| {m} {names.get(k, k)} | " + " | ".join(
            f"{np.mean([hist[m][s][i][k] for s in seeds]):.3f}" for i in shown) + " |")
    return out + [""]


def cpu_v2_resets(root: Path | None = None) -> list[str]:
    """Per cpu-v2 comparison where `rifle` and `sgdm` both finished >= 3 seeds: mean validation and test accuracy
    per epoch of both (the seeds they share), the epochs after which RIFLE reset its head marked."""
    root, parts = root or CPU_V2, []
    for comp in sorted(p for p in root.iterdir() if (p / "rifle").is_dir()) if root.is_dir() else []:
        hist = {m: {int(d.name[4:]): _history(d) for d in sorted((comp / m).glob("seed*"))
                    if (d / "summary.json").is_file()} for m in ("sgdm", "rifle")}
        seeds = shared_seeds(hist)
        if len(seeds) < ev.MIN_SEEDS:
            continue
        n = min(len(hist[m][s]) for m in hist for s in seeds)
        parts += [f"`{comp.name}` (cpu-v2: {n} epochs, {len(seeds)} seeds; mean accuracy per epoch; ↺ marks an epoch "
                  "that began with a head reset):", "",
                  *epoch_table(hist, seeds, [(m, k) for k in ("val_acc", "test_acc") for m in ("sgdm", "rifle")])]
    return parts


def regime_resets(cells: dict) -> list[str]:
    """RIFLE's own regime: validation accuracy and training loss around each reset, mean over the seeds where SGDM,
    cyclic LR (its warm restarts fall on RIFLE's resets) and RIFLE all finished; empty before they have one."""
    hist = {m: {s: r["history"] for s, r in cells.get(m, {}).items()} for m in ("sgdm", "cyclic-lr", "rifle")}
    seeds = shared_seeds(hist)
    if not seeds:
        return []
    return [f"Around each reset in this regime (mean over {len(seeds)} seed{'s' if len(seeds) > 1 else ''} "
            f"({', '.join(map(str, seeds))}); described, judging nothing; ↺ marks an epoch that began with a "
            "head reset; test accuracy is scored only on epochs where validation improved, so it is not shown):", "",
            *epoch_table(hist, seeds, [(m, "val_acc") for m in hist] + [(m, "train_loss") for m in hist],
                         around_resets=True)]


def page_block(regime: Regime, cells: dict, a: dict | None) -> str:
    """The regime's state for its docs page, every number from the cells (the same text as report.md's section)."""
    n = sum(len(v) for v in cells.values())
    lines = [f"Rendered by `python benchmarks/papers.py --render` from benchmarks/results/papers/{regime.name}/ "
             f"(issue 26; plan: [papers_plan.md](papers_plan.md)). Regime: {regime.why}. Claim checked: "
             f"{regime.claim}. {n} of {len(regime.rows) * SEEDS} cells finished"
             + (f" (seeds {', '.join(map(str, a['seeds']))})." if a else "; no baseline cell yet: nothing judged.")
             + f" Run: `python benchmarks/papers.py --only {regime.name}`.", ""]
    if a:
        lines += [claim_md(a), "", table_md(regime, a), "",
                  f"![delivered accuracy vs time](../benchmarks/results/papers/{regime.name}/delivered.png)", ""]
    if regime.name == "rifle":
        lines += regime_resets(cells)
        resets = cpu_v2_resets()
        if resets:
            lines += ["RIFLE in the cpu-v2 rows (not its regime: a short run, its default period of a quarter of it, "
                      "the last quarter to settle): what each reset costs, and what the last one leaves at the end.",
                      "", *resets]
    return "\n".join(lines).rstrip("\n")


def render(out: Path = ROOT, root: Path = RESULTS, docs: Path | None = DOCS) -> list[Path]:
    written, parts = [], ["# Issue 26: the source papers in their own regimes\n",
                          "Rendered by `python benchmarks/papers.py --render` from benchmarks/results/papers/; "
                          "plan and commands: docs/papers_plan.md.\n", RULES + "\n"]
    for regime in regimes(root):
        cells = load(regime, out)
        n = sum(len(v) for v in cells.values())
        parts.append(f"## {regime.name}: {regime.paper}\n\nClaim: {regime.claim}. {n} of "
                     f"{len(regime.rows) * SEEDS} cells finished.\n")
        if regime.baseline not in cells:
            parts.append("No baseline cell has finished: nothing to judge yet.\n")
            written += fill_page(regime, page_block(regime, cells, None), docs)
            continue
        a = analyse(regime, cells)
        written += fill_page(regime, page_block(regime, cells, a), docs)
        folder = out / regime.name
        md = f"{claim_md(a)}\n\n{table_md(regime, a)}\n\n![delivered accuracy vs time](delivered.png)\n"
        (folder / "results.md").write_text(f"# {regime.name}\n\n{RULES}\n\n{md}")
        atomic_json(a, folder / "results.json")
        plot(regime, cells, a, folder / "delivered.png")
        written += [folder / "results.md", folder / "results.json", folder / "delivered.png"]
        parts.append(md.replace("](delivered.png)", f"]({regime.name}/delivered.png)"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(parts))
    return [*written, out / "report.md"]


def fill_page(regime: Regime, block: str, docs: Path | None) -> list[Path]:
    """Write `block` into the regime's docs page (its `<!-- results:papers -->` block); nothing when `docs` is None."""
    if docs is None:
        return []
    from pages import fill_blocks

    page = docs / PAGES[regime.name]
    page.write_text(fill_blocks(page.read_text(), {"papers": block}))
    return [page]
