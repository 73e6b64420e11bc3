"""Suite v3 (issue 22, ../shared/METHODS.md §6): which method gives the best model for the time you have.

Per comparison (data set, size, backbone: the headline comparisons of cpu-v2) and per seed, back to back under
the same load, one cell at a time with all cores:
  1. SGDM annealed to 8, 4 and 2 epochs (its training time at 8 epochs, T8, sets the seed's budgets: T8/4, T8/2,
     T8); 2. the linear probe (its own short run, read at each budget); 3. every other method under
     `--budget` = T8/4, T8/2 and T8 (its schedule annealed to the budget, its epochs planned from its measured
     cost). Identical work (`evidence.control_work`) is timed before and after every cell: its spread over a
     comparison's cells is the timing noise, and a time ratio inside it is "unresolved".
Every run scores test only when validation improves (`test_eval=improved`: the delivered model) and records
process CPU time beside wall time. A finished cell (summary.json) is never rerun, except one that did not get
its cores (`contended`: process CPU time below MIN_CPU_SHARE of wall time x its threads) and a budgeted cell
whose budget no longer matches its seed's SGDM-8 time (that SGDM-8 cell was rerun): rerun the same command to
continue. Run nothing else while cells run, not even at idle priority: the CPU-share test catches a process that
takes a cell's cores, not one that shares its caches and memory bandwidth (2026-12-03: a test run beside an
SGDM-8 cell slowed it to 41 s per epoch against 30 s for its group's SGDM-4 and SGDM-2 cells, which would have
widened that seed's budgets by ~1.4x; the group was discarded before its budgeted cells finished and rerun).
Results: benchmarks/results/suite-v3/<comparison>/ (cells, results.json, results.md, the plot, replaced.jsonl:
the SGDM-8 times of groups rerun elsewhere, which size the next runs);
docs/BENCHMARKS.md's v3 section and README's "which method when" block are rendered from them (--render).

Usage: python benchmarks/evidence_v3.py [--only CID ...] [--methods M ...] [--seeds 3] [--budget-minutes N]
       python benchmarks/evidence_v3.py --dry-run [--only CID ...] [--methods M ...]   (pending cells, minutes)
       python benchmarks/evidence_v3.py --render
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import run as v2  # noqa: E402  (benchmarks/run.py: the cpu-v2 configs this suite re-runs)
from fastretrain import evidence as ev  # noqa: E402
from fastretrain.bench import cell_config, environment, slug  # noqa: E402
from fastretrain.checkpoint import atomic_json  # noqa: E402
from fastretrain.integrity import metrics_lines  # noqa: E402

ROOT = HERE / "results" / "suite-v3"
FULL_EPOCHS = 8  # SGDM's full schedule (cpu-v2's)
BASELINE = "sgdm"
PROBE = "linear-probe"
V3 = {"test_eval": "improved", "options": {"mp-refine": {"log_before": False}}}  # reports only, off the clock
CORE = ["fast-retrain", "auto"]  # budgeted rows run first; the ablation follows (--methods)
ABLATION = ["fast-retrain[random-freeze.policy=uniform]", "fast-retrain[mp-refine.init_head=False]",
            "fast-retrain[mp-refine.until=None]", "fast-retrain[mp-refine.until=0]", v2.FR_AUTHORS]
COMPARISONS = [  # (id, base config, budgeted methods): cpu-v2's headline comparisons, cheapest first
    ("flowers5-128-lite0", {**v2.LITE0, **v2.V2_FLOWERS}, CORE + ABLATION),
    ("cifar10-96-lite0", {**v2.LITE0, **v2.V2_CIFAR}, CORE + ABLATION),
    ("fashion-mnist-96-lite0", {**v2.LITE0, **v2.V2_FASHION}, CORE + ABLATION),
    ("fashion-mnist-64-lite0", {**v2.LITE0, **v2.V2_FASHION64}, CORE + ABLATION),
    ("flowers5-128-lite1", {**v2.LITE1, **v2.V2_FLOWERS}, CORE),
    ("cifar10-96-lite1", {**v2.LITE1, **v2.V2_CIFAR}, CORE),
    ("fashion-mnist-96-lite1", {**v2.LITE1, **v2.V2_FASHION}, CORE),
]
LEVEL_TAG = {0.25: "b1of4", 0.5: "b1of2", 1.0: "b1"}


def sgdm_epochs(level: float) -> int:
    """SGDM's epochs at a budget level: its schedule annealed to that share of FULL_EPOCHS."""
    return round(FULL_EPOCHS * level)


def sgdm_label(level: float) -> str:
    return f"sgdm-e{sgdm_epochs(level)}"


def cell(out: Path, label: str, seed: int) -> Path:
    return out / slug(label) / f"seed{seed}"


MIN_CPU_SHARE = 0.9  # of its threads' wall time a cell's process must have computed to count (see `contended`)


def contended(summary: dict) -> str | None:
    """Why a finished cell's times do not count, or None: its process computed for less than MIN_CPU_SHARE of
    wall time x min(threads, CPUs), so another process had part of its cores (measured over the whole cell).

    Rule change (2026-12-02, after the flowers5-128-lite0 cells ran, stated in the report): this replaced the
    1-minute load average (`load_warning`), which missed bursts inside cells (flowers seed 2's cells computed
    for 1.29-1.63 of 2 threads and passed) and flagged idle niced processes that took no CPU. Uncontended cells of
    the first two comparisons computed for 1.84-1.99 of 2 threads."""
    end = summary.get("load", {}).get("end", {})
    cores = min(end.get("threads") or 0, end.get("cpu_count") or 0)
    if not cores or not summary.get("wall_seconds") or "cpu_seconds" not in summary:
        return summary.get("load_warning")  # no CPU time recorded: the load average is all there is
    share = summary["cpu_seconds"] / summary["wall_seconds"] / cores
    if share < MIN_CPU_SHARE:
        return f"computed for {share:.0%} of {cores} thread(s)' wall time (< {MIN_CPU_SHARE:.0%})"
    return None


def budget_matches(summary: dict, t8: float | None, level: float) -> bool:
    """A budgeted cell counts only under its seed's current budget, level x that seed's SGDM-8 time."""
    return t8 is not None and abs(summary.get("budget_seconds", -1.0) - round(level * t8, 2)) <= 0.011


def cell_machine(path: Path) -> str | None:
    """The boot id a cell ran under (`bench.environment`'s; None: recorded before this rule, or none there)."""
    envf = path / "environment.json"
    return json.loads(envf.read_text()).get("boot_id") if envf.is_file() else None


ANY_MACHINE = object()


def done(path: Path, t8: float | None = None, level: float | None = None, machine=ANY_MACHINE) -> bool:
    """Finished with its cores (`contended` is None), for a budgeted cell (`level` given) under its seed's current
    budget, and, when `machine` is given (its seed's SGDM-8 boot id), on that machine in that session; any other
    cell is run again when the suite resumes."""
    summary = path / "summary.json"
    if not summary.is_file():
        return False
    s = json.loads(summary.read_text())
    return (contended(s) is None and (level is None or budget_matches(s, t8, level))
            and (machine is ANY_MACHINE or cell_machine(path) == machine))


def begun_elsewhere(anchor: Path, has_pending, boot: str | None, finished=done) -> bool:
    """The machine rule's rerun: when a seed's anchor cell (its SGDM-8, or a paper regime's baseline: its time sets
    the seed's budgets) finished on another machine or session (`boot` differs) while cells of its group are
    pending (`has_pending()`, asked only then), the anchor is removed (its time and machine logged in its folder's
    REPLACED file) and True returned: the group runs again whole here."""
    if finished(anchor) and cell_machine(anchor) != boot and has_pending():
        envf = anchor / "environment.json"
        env = json.loads(envf.read_text()) if envf.is_file() else {}
        with (anchor.parent.parent / REPLACED).open("a") as log:  # its time stays measured: `machine_speed`
            log.write(json.dumps({"cell": f"{anchor.parent.name}/{anchor.name}", "boot_id": env.get("boot_id"),
                                  "wall_seconds": seconds(anchor, False), "commit": env.get("commit")}) + "\n")
        shutil.rmtree(anchor)
        return True
    return False


REPLACED = "replaced.jsonl"  # per comparison (or paper regime): the anchors the machine rule removed, one a line


def replaced(folder: Path) -> list[dict]:
    """The anchor cells removed from `folder` by the machine rule (`begun_elsewhere`): cell, boot id, seconds."""
    log = folder / REPLACED
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []


def run_cell(path: Path, fields: dict, env: dict) -> bool:
    """Train one cell (timed same-work control before and after); False when the method cannot run here."""
    from fastretrain.errors import FastRetrainError
    from fastretrain.run import make_config, train

    if path.exists():  # an interrupted cell (no summary.json): start it afresh
        shutil.rmtree(path)
    load0, before = os.getloadavg()[0], ev.control_work()
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path  # other suites reuse run_cell (papers.py)
    print(f"== {shown}  budget={fields.get('budget')}", flush=True)
    try:
        train(make_config(**fields, out=str(path)))
    except FastRetrainError as e:
        print(f"   failed: {e}", flush=True)
        atomic_json({"error": str(e)}, path / "failed.json")
        return False
    after = ev.control_work()
    atomic_json({**env, "control_seconds": [before, after], "load_average": [round(load0, 2),
                 round(os.getloadavg()[0], 2)]}, path / "environment.json")
    return True


def run_group(cid: str, base: dict, methods: list[str], seed: int, env: dict, deadline: float | None) -> None:
    """One seed's cells of one comparison, back to back: SGDM at 8/4/2 epochs, the probe, then each budgeted
    method at T8, T8/2, T8/4."""
    out = ROOT / cid
    base = {**base, **V3, "options": {**base.get("options", {}), **V3["options"]}, "seed": seed}
    jobs = [(sgdm_label(level), {**cell_config(base, BASELINE), "epochs": sgdm_epochs(level)})
            for level in sorted(ev.LEVELS, reverse=True)]
    jobs.append((PROBE, cell_config(base, PROBE)))
    t8_cell = cell(out, sgdm_label(1.0), seed)
    if begun_elsewhere(t8_cell, lambda: bool(pending(out, methods, seed)), env.get("boot_id")):
        print(f"== {t8_cell.relative_to(ROOT)}: ran on another machine or session and its group is not complete: "
              "the group runs again here", flush=True)
    for label, fields in jobs:
        path = cell(out, label, seed)
        if not done(path, machine=ANY_MACHINE if path == t8_cell else cell_machine(t8_cell)):
            if deadline is not None and time.monotonic() > deadline:
                return
            run_cell(path, fields, env)
    t8 = seconds(t8_cell)
    if t8 is None:  # not finished, or without its cores: no budgets from it (it runs again on the next resume)
        return
    for method in methods:
        for level in sorted(ev.LEVELS, reverse=True):
            path = cell(out, f"{method}#{LEVEL_TAG[level]}", seed)
            if done(path, t8, level, cell_machine(t8_cell)) or (path / "failed.json").is_file():
                continue
            if deadline is not None and time.monotonic() > deadline:
                return
            fields = {**cell_config(base, method), "budget": f"{level * t8:.2f}s",
                      "epochs": max(1, round(FULL_EPOCHS * level))}  # the first plan; the run re-plans
            if not run_cell(path, fields, env):
                break


def pending(out: Path, methods: list[str], seed: int) -> list[str]:
    """The cells of one seed's group (SGDM at 3 budgets, the probe, `methods` at 3 budgets) that do not count yet:
    unfinished, contended, or not under the budget and machine of the seed's SGDM-8 cell."""
    t8_cell = cell(out, sgdm_label(1.0), seed)
    t8 = seconds(t8_cell)
    if t8 is None:
        return [sgdm_label(1.0)]
    machine = cell_machine(t8_cell)
    labels = [(sgdm_label(lv), None) for lv in ev.LEVELS if lv != 1.0] + [(PROBE, None)]
    labels += [(f"{m}#{LEVEL_TAG[lv]}", lv) for m in methods for lv in ev.LEVELS]
    return [lab for lab, lv in labels if not (cell(out, lab, seed) / "failed.json").is_file()
            and not done(cell(out, lab, seed), t8, lv, machine)]


# ---------------------------------------------------------------------------------------------------------------
# Sizing (METHODS.md §7: from measured costs)

CELL_OVERHEAD_S = 15.0  # per cell: model, data, the control twice, evaluation; an allowance, not a measurement
V2_ROOT = HERE / "results" / "suite-cpu-v2"  # cpu-v2's SGDM cells (8 epochs, the same configs, 2 cells at a time)


def seconds(path: Path, counted: bool = True) -> float | None:
    """A cell's training seconds, None when it has not finished or, with `counted`, does not count (`done`): the
    one reader of SGDM-8 (and probe) times, for budgets, the report and sizing alike."""
    summary = path / "summary.json"
    if not summary.is_file() or (counted and not done(path)):
        return None
    return json.loads(summary.read_text())["wall_seconds"]


def t8s(folder: Path, label: str, counted: bool = True) -> dict[int, float]:
    """{seed: `seconds`} of `label`'s cells in `folder` that have them."""
    found = {int(p.name[4:]): seconds(p, counted) for p in folder.glob(f"{label}/seed*")}
    return {seed: t for seed, t in found.items() if t is not None}


def _t8_guess(cid: str) -> tuple[float | None, str]:
    """The comparison's SGDM-8 time: the mean of its own SGDM-8 cells, else cpu-v2's SGDM cells of the same
    comparison x the v3 / cpu-v2 ratio of the comparisons that have both; (None, why) without either."""
    own = t8s(ROOT / cid, sgdm_label(1.0))
    if own:
        return float(np.mean(list(own.values()))), "its own SGDM-8 cells"
    pairs = [(t8s(ROOT / c, sgdm_label(1.0)), t8s(V2_ROOT / c, BASELINE, counted=False))
             for c, _b, _m in COMPARISONS]
    ratios = [np.mean(list(a.values())) / np.mean(list(b.values())) for a, b in pairs if a and b]
    v2_t8 = t8s(V2_ROOT / cid, BASELINE, counted=False)
    if not ratios or not v2_t8:
        return None, "no measured cost"
    scale = float(np.mean(ratios))
    return (float(np.mean(list(v2_t8.values()))) * scale,
            f"cpu-v2's SGDM cells x {scale:.2f} (v3 / cpu-v2 over {len(ratios)} comparisons)")


def machine_speed(boot: str | None) -> float:
    """How much longer the same work takes on machine `boot` than on the others: over the comparisons with SGDM-8
    cells both there and elsewhere (counting the SGDM-8 cells the machine rule replaced, `replaced`), the mean of
    (their mean seconds there / elsewhere); 1.0 without such a pair."""
    ratios = []
    for c, _b, _m in COMPARISONS:
        here, other = [], []
        timed = [(cell_machine(p), seconds(p, True)) for p in (ROOT / c).glob(f"{sgdm_label(1.0)}/seed*")]
        timed += [(r["boot_id"], r["wall_seconds"]) for r in replaced(ROOT / c)
                  if r["cell"].startswith(f"{sgdm_label(1.0)}/")]  # a group rerun here keeps its old time
        for machine, t in timed:
            if t is not None:
                (here if machine == boot else other).append(t)
        if here and other:
            ratios.append(np.mean(here) / np.mean(other))
    return float(np.mean(ratios)) if ratios else 1.0


def group_cost(cid: str, methods: list[str], seed: int, boot: str | None, t8_all: float) -> tuple[int, float]:
    """(pending cells, estimated seconds) of one seed's group: SGDM-4/2 cost T8/2 and T8/4, a budgeted cell its
    budget, the probe its measured time (else T8/20), each + CELL_OVERHEAD_S; a seed begun on another machine
    (`boot` differs) with cells pending counts whole. Unless the seed's SGDM-8 cell ran on `boot`, the sum is
    scaled by `machine_speed(boot)`: the cells will run here, at this machine's measured speed."""
    out = ROOT / cid
    own = t8s(out, sgdm_label(1.0))
    t8 = own.get(seed, t8_all)
    probe = t8s(out, PROBE)
    labels = [(sgdm_label(lv), lv) for lv in ev.LEVELS] + [(PROBE, None)]
    labels += [(f"{m}#{LEVEL_TAG[lv]}", lv) for m in methods for lv in ev.LEVELS]
    left = pending(out, methods, seed)
    if left == [sgdm_label(1.0)] or (left and cell_machine(cell(out, sgdm_label(1.0), seed)) != boot):
        left = [lab for lab, _ in labels]  # the whole group runs (again)
    costs = [((float(np.mean(list(probe.values()))) if probe else t8 / 20) if lv is None else lv * t8)
             + CELL_OVERHEAD_S for lab, lv in labels if lab in left]
    here = seed in own and cell_machine(cell(out, sgdm_label(1.0), seed)) == boot
    return len(costs), float(sum(costs)) * (1.0 if here else machine_speed(boot))


def estimate(cid: str, methods: list[str], seeds: int = 3, boot: str | None = None) -> dict:
    """The comparison's pending cells and their estimated minutes (`group_cost` per seed, at the speed of the
    machine its measured cells ran on)."""
    t8_all, source = _t8_guess(cid)
    if t8_all is None:
        return {"cells": None, "minutes": None, "source": source}
    groups = [group_cost(cid, methods, seed, boot, t8_all) for seed in range(seeds)]
    return {"cells": sum(n for n, _ in groups), "minutes": sum(s for _, s in groups) / 60, "t8": t8_all,
            "source": source}


def fits(cid: str, methods: list[str], seed: int, boot: str | None, deadline: float) -> bool:
    """Whether a seed's pending group is estimated to finish before `deadline` (time.monotonic()); a group that
    cannot finish on this machine is wasted (the next session's machine runs it again whole)."""
    t8_all, _ = _t8_guess(cid)
    if t8_all is None:
        return True  # nothing measured to estimate from: the deadline alone decides
    _, seconds = group_cost(cid, methods, seed, boot, t8_all)
    return time.monotonic() + seconds <= deadline


def dry_run(ids: list[str] | None, methods: list[str] | None, seeds: int, boot: str | None) -> str:
    lines, total = [], 0.0
    for cid, _base, ms in COMPARISONS:
        if ids and cid not in ids:
            continue
        run = [m for m in ms if not methods or m in methods]
        e = estimate(cid, run, seeds, boot)
        if e["minutes"] is None:
            lines.append(f"{cid}: {e['source']}")
            continue
        total += e["minutes"]
        lines.append(f"{cid}: {e['cells']} pending cells ({len(run)} budgeted methods), ~{e['minutes']:.0f} min "
                     f"(T8 ~{e['t8']:.0f} s from {e['source']})")
    lines.append(f"total: ~{total / 60:.1f} hours, one cell at a time, at this machine's speed "
                 f"(x{machine_speed(boot):.2f} the other machines' where both ran SGDM-8)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Reading the cells


def history(cell: Path) -> list[dict]:
    """A cell's metrics.jsonl, one record per scored model."""
    return metrics_lines(cell)


def load(cid: str) -> dict:
    """Every finished cell of a comparison: {label: {seed: record}} with history, summary, environment."""
    out = ROOT / cid
    cells: dict[str, dict[int, dict]] = {}
    if not out.is_dir():
        return cells
    levels = {tag: lv for lv, tag in LEVEL_TAG.items()}
    t8 = t8s(out, sgdm_label(1.0))
    machines = {seed: cell_machine(out / sgdm_label(1.0) / f"seed{seed}") for seed in t8}
    for summary in sorted(out.glob("*/seed*/summary.json")):
        folder = summary.parent
        label, seed = folder.parent.name.replace("+", ","), int(folder.name[4:])
        level = levels.get(label.rpartition("#")[2]) if "#" in label else None
        if seed not in t8 or not done(folder, t8[seed], level, machines[seed]):  # pending its rerun: counted nowhere
            continue
        hist = history(folder)
        envf = folder / "environment.json"
        cells.setdefault(label, {})[seed] = {"summary": json.loads(summary.read_text()), "history": hist,
                                             "env": json.loads(envf.read_text()) if envf.is_file() else {}}
    return cells


def analyse(cid: str, cells: dict, methods: list[str]) -> dict:
    """The comparison's equal-budget table, time to the fixed target and timing control, from its cells."""
    t8 = {s: r["summary"]["wall_seconds"] for s, r in cells.get(sgdm_label(1.0), {}).items()}
    seeds = sorted(t8)
    any_rec = next(iter(cells.get(sgdm_label(1.0), {}).values()), None)
    n_test = any_rec["summary"]["test_images"] if any_rec else 0
    chance = 1 / any_rec["summary"]["num_classes"] if any_rec else 0.0
    rows = [BASELINE, PROBE] + [m for m in methods if m in {lab.split("#")[0] for lab in cells}]

    def run_of(method: str, level: float) -> dict[int, dict]:
        if method == BASELINE:
            return cells.get(sgdm_label(level), {})
        if method == PROBE:
            return cells.get(PROBE, {})
        return cells.get(f"{method}#{LEVEL_TAG[level]}", {})

    table = {}
    for m in rows:
        for level in ev.LEVELS:
            runs, base = run_of(m, level), cells.get(sgdm_label(level), {})
            accs, used, diffs = {}, {}, []
            for s in seeds:
                if s not in runs:
                    continue
                budget = level * t8[s]
                if m == BASELINE:
                    acc = ev.final(runs[s]["history"])
                else:
                    acc = ev.acc_at(runs[s]["history"], budget * ev.BUDGET_SLACK)
                    acc = chance if acc is None else acc  # nothing returned within the budget: chance
                accs[s], used[s] = acc, min(runs[s]["summary"]["wall_seconds"], budget * ev.BUDGET_SLACK) \
                    if m == PROBE else runs[s]["summary"]["wall_seconds"]
                if s in base and m != BASELINE:
                    diffs.append(100 * (acc - ev.final(base[s]["history"])))
            heads = sum(runs[s]["summary"].get("best_epoch") == 0 for s in seeds if s in runs)
            table[(m, level)] = {"acc": accs, "seconds": used, "diffs": diffs, "n": len(diffs), "heads": heads,
                                 "verdict": ev.verdict(diffs) if m != BASELINE else None,
                                 "budget": [level * t8[s] for s in seeds]}
    finals = [ev.final(cells[sgdm_label(1.0)][s]["history"]) for s in seeds]
    target = float(np.mean(finals)) - ev.TARGET_BELOW_PT / 100 if finals else None
    controls = [c for lab in cells.values() for r in lab.values() for c in r["env"].get("control_seconds", [])]
    spread = ev.spread(controls)
    reach = {}
    for m in rows:
        runs = run_of(m, 1.0)
        times = {s: ev.time_to(runs[s]["history"], target) for s in seeds if s in runs} if target else {}
        base_t = {s: ev.time_to(cells[sgdm_label(1.0)][s]["history"], target) for s in seeds} if target else {}
        ratios = [r for s in times if (r := ev.time_ratio(times[s], base_t.get(s))) is not None]
        reached = sum(t is not None for t in times.values())
        med = float(np.median(ratios)) if len(ratios) >= ev.MIN_SEEDS else None
        timing = None if m == BASELINE else "never" if reached == 0 and len(times) >= ev.MIN_SEEDS else (
            ev.resolved(med, spread) if med is not None else ev.too_few_pairs(len(ratios)))
        reach[m] = {"times": times, "reached": reached, "n": len(times), "pairs": len(ratios),
                    "median_ratio": med, "timing": timing}
    seed_spreads = {s: ev.spread([c for lab in cells.values() if s in lab
                                  for c in lab[s]["env"].get("control_seconds", [])]) for s in seeds}
    # for reading only, not a rule: SGDM's seconds per epoch over its 2/4/8-epoch cells of one seed (minutes of
    # the same training, not 0.2 s of products), the machine's steadiness where it matters
    sgdm_pace = {s: ev.spread([cells[sgdm_label(lv)][s]["summary"]["wall_seconds"] / sgdm_epochs(lv)
                               for lv in ev.LEVELS if s in cells.get(sgdm_label(lv), {})]) for s in seeds}
    machines = sorted({str(r["env"].get("boot_id")) for lab in cells.values() for r in lab.values()})
    cpu_wall = [r["summary"].get("cpu_seconds", 0) / r["summary"]["wall_seconds"]
                for lab in cells.values() for r in lab.values() if r["summary"].get("wall_seconds")]
    return {"id": cid, "seeds": seeds, "t8": t8, "n_test": n_test, "chance": chance, "rows": rows,
            "table": table, "target": target, "reach": reach, "spread": spread, "controls": controls,
            "seed_spreads": seed_spreads, "sgdm_pace": sgdm_pace, "machines": machines,
            "cpu_per_wall": cpu_wall,
            "loads": [x for lab in cells.values() for r in lab.values() for x in r["env"].get("load_average", [])]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="comparison ids (default: all, cheapest first)")
    ap.add_argument("--methods", nargs="*", help="budgeted methods to run now (default: each comparison's)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget-minutes", type=float, help="start no new cell after this many minutes")
    ap.add_argument("--render", action="store_true", help="only render from the finished cells")
    ap.add_argument("--dry-run", action="store_true", help="print pending cells and estimated minutes; run nothing")
    args = ap.parse_args(argv)
    if args.dry_run:
        print(dry_run(args.only, args.methods, args.seeds, environment()["boot_id"]))
        return
    if not args.render:
        deadline = time.monotonic() + 60 * args.budget_minutes if args.budget_minutes else None
        env = environment()
        for cid, base, methods in COMPARISONS:
            if args.only and cid not in args.only:
                continue
            run = [m for m in methods if not args.methods or m in args.methods]
            for seed in range(args.seeds):
                if deadline is not None and not fits(cid, run, seed, env.get("boot_id"), deadline):
                    print(f"== {cid} seed {seed}: its group would not finish before the deadline; not started")
                    continue
                run_group(cid, base, run, seed, env, deadline)
    from v3_report import render  # the report reads this module's cells

    written, _ = render()  # every comparison, --only or not: the pages list them all
    for path in written:
        print(f"written {path}")


if __name__ == "__main__":
    main()
