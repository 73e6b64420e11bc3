"""Statistics and verdicts of the benchmark suites: the paired helpers every table uses, the fixed rules that check
each source paper's claim (`claims`, `overall`), the "which method when" picks (`most_accurate`, `soonest`,
`cheapest`, `avoid`) and fast-retrain's goal (`goal_met`, `timing_control`, `better_than_default`).

The rendered report names this module as where the rules are fixed.
Every rule is unit-tested on synthetic records in tests/test_suite.py.
"""
from __future__ import annotations

import math

import numpy as np

from fastretrain.bench import CURRENT, LEGACY, NOT_COMPARABLE, mean_std, paired, pm, reach_text
from suites import BASELINE, HEADLINE_PX, SHORT_NAMES


# Verdict rules (fixed here, stated in the report, unit-tested in tests/test_suite.py). Accuracy differences are
# paired (seed k against the baseline's seed k), in points, on the comparison's accuracy: test accuracy at the
# validation-best epoch under the protocol, final test accuracy for legacy results.
NO_LOSS_PT = 0.3  # a "no loss of accuracy" claim holds when the paired mean loss is at most this (the papers give none)
RIFLE_GAIN_PT = 0.5  # RIFLE's claim: +0.5-2 pt over each trick
FAST_SPEEDUP = 1.5  # fast retraining: ~1.5x faster convergence than SGDM
FAST_SAVING = 0.15  # fast retraining: 15-25 % less time than refinement without freezing
KERNEL_SAVING = 0.20  # kernel rescaling: ~20 % less training time
TRICKS = ("dropout", "dropconnect", "stochastic-depth", "disturblabel", "cyclic-lr")

PAPERS = {  # key -> (title, claim as stated in ../shared/METHODS.md, how it is checked, docs page)
    "fast": ("Fast retraining (random layer freezing + MP/ridge FC refinement)",
             "up to +1 pt top-1 over SGDM fine-tuning; ~1.5× faster convergence; 15–25% less time than refinement "
             "without freezing",
             f"against SGDM, a gain beyond one paired std and a median time to SGDM's final accuracy of at most "
             f"1/{FAST_SPEEDUP:g} of SGDM's; against `mp-refine` (refinement without freezing), at least "
             f"{100 * FAST_SAVING:.0f}% less time on the paired mean with at most {NO_LOSS_PT} pt less accuracy",
             "fast_retrain.md"),
    "rifle": ("RIFLE (re-initialise the final FC layer periodically)",
              "+0.5–2 pt over Dropout, DropConnect, StochasticDepth, DisturbLabel and cyclic LR",
              f"against each trick in the comparison, a paired mean gain of at least {RIFLE_GAIN_PT} pt that is also "
              "beyond one paired std", "rifle.md"),
    "kernel": ("Kernel rescaling (low resolution first, then rescaled kernels at full resolution)",
               "~20% less training time with no loss of test accuracy",
               f"against SGDM, at least {100 * KERNEL_SAVING:.0f}% less time on the paired mean with at most "
               f"{NO_LOSS_PT} pt less accuracy", "kernel_rescale.md"),
    "decompose": ("Decomposition / composition along the width",
                  "composed initialisation starts far better than random, reaches random init's accuracy sooner, "
                  "no loss (sometimes a gain) of final accuracy",
                  "against random initialisation (SGDM), test accuracy after the first epoch higher beyond one "
                  "paired std, a median time to its final accuracy below its own, and at most "
                  f"{NO_LOSS_PT} pt less accuracy", "decompose.md"),
}
# Dedicated per-method benchmarks (benchmarks/results/<folder>/results.json), checked by the same rules:
# paper -> [(folder, method the claim is about, its baseline)]. Not counted in a suite's overall verdict.
DEDICATED = {
    "fast": [("fast_retrain/fashion-mnist", "fast-retrain", "sgdm"), ("fast_retrain/flowers5", "fast-retrain", "sgdm")],
    "rifle": [("rifle/fashion-mnist", "rifle", "sgdm"), ("rifle/flowers5", "rifle", "sgdm"),
              ("rifle/12-epochs/fashion-mnist", "rifle", "sgdm"), ("rifle/12-epochs/flowers5", "rifle", "sgdm")],
    "kernel": [("kernel_rescale/scratch", "kr-auto", "full-res"), ("kernel_rescale/pretrained", "kr-auto", "full-res")],
    "decompose": [("decompose/cifar", "composed-K2", "random-init"), ("decompose/cifar", "composed-K4", "random-init"),
                  ("decompose/fashion", "composed-K2", "random-init"),
                  ("decompose/fashion", "composed-K4", "random-init")],
}
DEDICATED_NOTES = {f"decompose/{d}": "the sub-networks trained one after another on one machine; their time is "
                   "included" for d in ("cifar", "fashion")}
REPRODUCED, NOT_REPRODUCED = "reproduced", "not reproduced"
CLAIM_SEEDS = 3  # paired seeds a claim's check needs (METHODS.md §6)
FEW_SEEDS = f"no verdict (fewer than {CLAIM_SEEDS} paired seeds)"


# ---------------------------------------------------------------------------------------------------------------
# Helpers on one comparison: a row, a mean, the accuracy and paired differences on its metric, descriptions


def row_of(rows, method):
    return next((r for r in rows if r["method"] == method), None)


def mean_of(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def acc_of(comp: dict, row: dict) -> float:
    """A method's mean accuracy (fraction) on the comparison's metric."""
    return mean_of(row[comp["protocol"]["metric"]])


def diffs(comp: dict, p: dict) -> list[float]:
    """The paired accuracy differences (pt) on the comparison's metric."""
    return p["d_" + comp["protocol"]["metric"]]


def describe(comp: dict) -> str:
    """'tf_efficientnet_lite0 (ImageNet) on flowers5, 48 px, 5 epochs, 3 seeds' from the recorded config."""
    c, r = comp["config"], comp["recipe"]["recipe"]
    seeds = len({rec["seed"] for rec in comp["records"]})
    epochs = r.get("epochs") or c.get("epochs") or comp["records"][0]["summary"].get("epochs")
    init = " (ImageNet)" if c.get("pretrained") else " from scratch"
    model = c.get("model") or comp["records"][0]["summary"].get("model")
    return f"{model}{init} on {c.get('data')}, {comp['image_size']} px, {epochs} epochs, {plural(seeds, 'seed')}"


def plural(k: int, word: str) -> str:
    """'1 seed', '3 seeds'."""
    return f"{k} {word}{'' if k == 1 else 's'}"


# ---------------------------------------------------------------------------------------------------------------
# Claims and verdicts


def _yn(ok: bool) -> str:
    return "yes" if ok else "no"


def gain(d: list[float], at_least: float = 0.0) -> bool:
    """An accuracy gain holds when the paired mean is above one paired std (and at least `at_least` pt)."""
    m, s = mean_std(d)
    return len(d) > 1 and m - s > 0 and m >= at_least


def no_loss(d: list[float], tol: float = NO_LOSS_PT) -> bool:
    """'No loss of accuracy' holds when the paired mean loss is at most `tol` pt."""
    return mean_std(d)[0] >= -tol


def faster(p: dict, at_most: float, strict: bool = False) -> bool:
    """Time to the baseline's final accuracy: median paired ratio (never reached = +inf) at most `at_most`."""
    r = p["median_time_ratio"]
    return r is not None and (r < at_most if strict else r <= at_most)


def saving(p: dict) -> list[float]:
    """Per seed, the fraction of the baseline's training time saved (negative: more time)."""
    return [1 - w for w in p["wall_ratio"]]


def _less_more(save: float) -> str:
    """A time saving (fraction) as "12.3% less" or, when negative, "0.5% more"."""
    return f"{100 * abs(save):.1f}% {'less' if save >= 0 else 'more'}"


def saving_text(p: dict) -> str:
    m, s = mean_std(saving(p))
    return f"{_less_more(m)} time" + ("" if math.isnan(s) else f" (± {100 * s:.1f}%)")


def _name(method: str) -> str:
    return "SGDM" if method == BASELINE else f"`{method}`"


def acc_name(comp: dict) -> str:
    return "test acc" if comp["protocol"]["metric"] == "test_acc" else "final acc"


def _verdict(comp: dict, checks: list[bool], n: int) -> str:
    """`n`: the fewest paired seeds behind the checks; under CLAIM_SEEDS no verdict, counted nowhere (METHODS.md
    §6; enforced here since 2026-12-02, when partial cpu-v2 rows first reached this table, stated in the report)."""
    if comp["protocol"]["kind"] == NOT_COMPARABLE:
        return NOT_COMPARABLE
    if n < CLAIM_SEEDS:
        return FEW_SEEDS
    return REPRODUCED if all(checks) else NOT_REPRODUCED


def check_fast(comp: dict, method="fast-retrain", base=BASELINE, unfrozen="mp-refine") -> list[tuple[str, str]]:
    """Fast retraining against SGDM (accuracy and convergence) and against refinement without freezing (time)."""
    out = []
    p = paired(comp["records"], method, base)
    if p:
        d, ok_speed = diffs(comp, p), faster(p, 1 / FAST_SPEEDUP)
        text = (f"{acc_name(comp)} {pm(d)} pt vs {_name(base)} (gain beyond one std: {_yn(gain(d))}); time to "
                f"{_name(base)}'s final acc {reach_text(p)} (≤ {1 / FAST_SPEEDUP:.2f}×: {_yn(ok_speed)})")
        out.append((text, _verdict(comp, [gain(d), ok_speed], p["n"])))
    q = paired(comp["records"], method, unfrozen)
    if q:
        d, save = diffs(comp, q), mean_std(saving(q))[0]
        text = (f"{saving_text(q)} than refinement without freezing (`{unfrozen}`) (≥ {100 * FAST_SAVING:.0f}%: "
                f"{_yn(save >= FAST_SAVING)}), {acc_name(comp)} {pm(d)} pt (≥ −{NO_LOSS_PT}: {_yn(no_loss(d))})")
        out.append((text, _verdict(comp, [save >= FAST_SAVING, no_loss(d)], q["n"])))
    return out


def check_rifle(comp: dict, method="rifle", base=BASELINE) -> list[tuple[str, str]]:
    """RIFLE against each trick present: a paired gain of at least RIFLE_GAIN_PT, beyond one paired std."""
    pairs = [(t, paired(comp["records"], method, t)) for t in TRICKS]
    pairs = [(t, p) for t, p in pairs if p]
    if not pairs:
        return []
    oks = [gain(diffs(comp, p), RIFLE_GAIN_PT) for _, p in pairs]
    parts = [f"vs `{t}` {pm(diffs(comp, p))} pt ({_yn(ok)})" for (t, p), ok in zip(pairs, oks)]
    sg = paired(comp["records"], method, base)
    ref = f"; vs {_name(base)} {pm(diffs(comp, sg))} pt" if sg else ""
    return [(f"{acc_name(comp)} {', '.join(parts)}{ref}", _verdict(comp, oks, min(p["n"] for _, p in pairs)))]


def check_kernel(comp: dict, method="kernel-rescale", base=BASELINE) -> list[tuple[str, str]]:
    """Kernel rescaling against SGDM: KERNEL_SAVING less time with no loss of accuracy."""
    p = paired(comp["records"], method, base)
    if not p:
        return []
    d, save = diffs(comp, p), mean_std(saving(p))[0]
    text = (f"{saving_text(p)} than {_name(base)} (≥ {100 * KERNEL_SAVING:.0f}%: {_yn(save >= KERNEL_SAVING)}), "
            f"{acc_name(comp)} {pm(d)} pt (≥ −{NO_LOSS_PT}: {_yn(no_loss(d))})")
    return [(text, _verdict(comp, [save >= KERNEL_SAVING, no_loss(d)], p["n"]))]


def check_decompose(comp: dict, method="decompose", base=BASELINE) -> list[tuple[str, str]]:
    """Composed initialisation against random init: starts better, reaches its final accuracy sooner, no loss."""
    p = paired(comp["records"], method, base)
    if not p:
        return []
    d, first, sooner = diffs(comp, p), p["d_first_acc"], faster(p, 1.0, strict=True)
    text = (f"test acc after the first epoch {pm(first)} pt (gain beyond one std: {_yn(gain(first))}); time to "
            f"{_name(base)}'s final acc {reach_text(p)} (< 1×: {_yn(sooner)}); {acc_name(comp)} {pm(d)} pt "
            f"(≥ −{NO_LOSS_PT}: {_yn(no_loss(d))})")
    return [(text, _verdict(comp, [gain(first), sooner, no_loss(d)], p["n"]))]


CHECKS = {"fast": check_fast, "rifle": check_rifle, "kernel": check_kernel, "decompose": check_decompose}


def label_of(comp: dict) -> str:
    kind = comp["protocol"]["kind"]
    note = {CURRENT: "", LEGACY: " (legacy protocol: final acc)", NOT_COMPARABLE: " (not comparable)"}[kind]
    return f"`{comp['id']}`{note}"


def claims(comps: list[dict]) -> dict[str, list[dict]]:
    """Per paper: one entry per comparison check, {"id", "tier", "text", "verdict"}, by the fixed rules above."""
    out: dict[str, list[dict]] = {k: [] for k in PAPERS}
    for comp in comps:
        for key, check in CHECKS.items():
            for text, verdict in check(comp):
                out[key].append({"id": comp["id"], "tier": tier(comp), "text": f"{label_of(comp)}: {text}",
                                 "verdict": verdict})
    return out


def overall(verdicts: list[str]) -> str:
    """'reproduced' when every comparable comparison reproduces, 'partly' when at least half do, else 'not
    reproduced'; with the counts. Comparisons that are not comparable are counted apart, never as evidence."""
    comparable = [v for v in verdicts if v not in (NOT_COMPARABLE, FEW_SEEDS)]
    n, k, skipped = len(comparable), comparable.count(REPRODUCED), verdicts.count(NOT_COMPARABLE)
    few = verdicts.count(FEW_SEEDS)
    extra = (f"; {skipped} not comparable, re-run pending" if skipped else "") + \
        (f"; {few} with fewer than {CLAIM_SEEDS} seeds, not counted" if few else "")
    if not n:
        return "**not measured**" + (f" ({extra[2:]})" if extra else "")
    word = REPRODUCED if k == n else "partly" if 2 * k >= n else NOT_REPRODUCED
    return f"**{word}** (reproduced in {k} of {n}{extra})"


def tier(comp: dict) -> str:
    return "headline" if comp["image_size"] >= HEADLINE_PX else "appendix"


# ---------------------------------------------------------------------------------------------------------------
# Which method when (issue 14): the rules that pick, per comparison, the most accurate method, the one that
# reaches SGDM's accuracy soonest, the cheapest within a point, and the ones to avoid (the table: findings.py)

CHEAP_TOL_PT = 1.0  # "least time within 1 pt": a paired mean accuracy at most this far below SGDM's
AVOID_PT = 1.0  # "avoid": a paired mean loss of at least this, beyond one paired std


def show_name(method: str) -> str:
    return "SGDM" if method == BASELINE else f"`{SHORT_NAMES.get(method, method)}`"


def against_baseline(comp: dict) -> list[tuple[str, dict]]:
    """(method, paired statistics against the baseline) for every other method of the comparison."""
    return [(r["method"], r["paired"]) for r in comp["rows"] if r["method"] != comp["baseline"] and r["paired"]]


def _wall(p: dict) -> float:
    return float(np.mean(p["wall_ratio"]))


def most_accurate(comp: dict) -> tuple[str, str]:
    """Among the methods ahead of SGDM beyond one paired std, the one with the highest paired mean gain; else SGDM."""
    ahead = [(mean_std(diffs(comp, p))[0], m, p) for m, p in against_baseline(comp) if gain(diffs(comp, p))]
    if not ahead:
        return BASELINE, "SGDM (none ahead beyond one paired std)"
    _, m, p = max(ahead, key=lambda x: x[0])
    return m, f"{show_name(m)}: {pm(diffs(comp, p), '{:+.1f}')} pt, {_wall(p):.2f}× time"


def soonest(comp: dict) -> tuple[str, str]:
    """The lowest median time to the same seed's SGDM final accuracy, below 1× (never-reached seeds count as
    never), among methods at most NO_LOSS_PT below SGDM on the paired mean; else SGDM."""
    quick = [(p["median_time_ratio"], m, p) for m, p in against_baseline(comp)
             if faster(p, 1.0, strict=True) and no_loss(diffs(comp, p))]
    if not quick:
        return BASELINE, f"SGDM (none reaches its final acc sooner within {NO_LOSS_PT} pt)"
    _, m, p = min(quick, key=lambda x: x[0])
    return m, f"{show_name(m)}: {reach_text(p)}, {pm(diffs(comp, p), '{:+.1f}')} pt"


def cheapest(comp: dict) -> tuple[str, str]:
    """The lowest paired mean training-time ratio below 1× among methods at most CHEAP_TOL_PT below SGDM on the
    paired mean; else none (naming the cheapest method and its cost)."""
    less = [(_wall(p), m, p) for m, p in against_baseline(comp) if _wall(p) < 1]
    ok = [x for x in less if mean_std(diffs(comp, x[2]))[0] >= -CHEAP_TOL_PT]
    if ok:
        w, m, p = min(ok, key=lambda x: x[0])
        return m, f"{show_name(m)}: {w:.2f}× time, {pm(diffs(comp, p), '{:+.1f}')} pt"
    if not less:
        return BASELINE, "none (no method took less time)"
    w, m, p = min(less, key=lambda x: x[0])
    return BASELINE, f"none (cheapest: {show_name(m)} {w:.2f}× time at {pm(diffs(comp, p), '{:+.1f}')} pt)"


def avoid(comp: dict) -> list[tuple[str, float]]:
    """Methods at least AVOID_PT below SGDM on the paired mean and beyond one paired std, worst first."""
    bad = []
    for m, p in against_baseline(comp):
        d = diffs(comp, p)
        if mean_std(d)[0] <= -AVOID_PT and gain([-x for x in d]):
            bad.append((m, mean_std(d)[0]))
    return sorted(bad, key=lambda x: x[1])


# ---------------------------------------------------------------------------------------------------------------
# fast-retrain's goal (issue 13) and its ablation

# The product's own goal for fast-retrain (issue 13), checked on every headline comparison that ran it with SGDM:
# reach the same seed's SGDM final test accuracy in at most GOAL_TIME of SGDM's time to it (median over seeds,
# never reached = never), with a paired mean final test accuracy at most GOAL_TOL_PT below SGDM's.
GOAL_METHOD, GOAL_TIME, GOAL_TOL_PT, PROBE = "fast-retrain", 0.5, 0.3, "linear-probe"
GOAL_SEEDS = 3  # the goal is stated for 3 paired seeds


def versus(d: list[float], a: str, b: str) -> str:
    """Which of two methods is ahead on paired differences `d` (a − b, pt): beyond one paired std, or a tie."""
    return _name(a) if gain(d) else _name(b) if gain([-x for x in d]) else "neither (within one paired std)"


def goal_met(p: dict) -> bool:
    """The goal rule on one paired comparison (`paired(records, method, BASELINE)`)."""
    return faster(p, GOAL_TIME) and no_loss(delivered_d(p), GOAL_TOL_PT)


def delivered_d(p: dict) -> list[float]:
    """Paired differences of the delivered final accuracy (v3: the returned model's test accuracy; legacy runs,
    which have none, their last epoch's)."""
    return p["d_test_acc"] if p["d_test_acc"] is not None else p["d_final_test_acc"]


def timing_control(comps: list[dict]) -> list[float]:
    """The same work timed in two cells: for every headline `fast-retrain*` cell, the seconds of its SGD passes in
    the epochs where nothing is frozen (trainable ratio 1; the ridge head and refinements taken out) over the
    seconds of the same epochs of SGDM with the same seed. On a machine that times identical work identically
    every ratio would be 1; the spread is the timing noise between cells run at different times."""
    ratios = []
    for comp in [c for c in comps if tier(c) == "headline"]:
        base = {r["seed"]: r["history"] for r in comp["records"] if r["method"] == BASELINE}
        for r in comp["records"]:
            if not r["method"].startswith(GOAL_METHOD) or r["seed"] not in base:
                continue
            pairs = [(h, b) for h, b in zip(r["history"], base[r["seed"]])
                     if h.get("trainable_ratio") == 1 and not h.get("frozen_layers")]
            mine = sum(h["epoch_seconds"] - (h.get("refine_seconds") or 0) - (h.get("init_head_seconds") or 0)
                       for h, _ in pairs)
            theirs = sum(b["epoch_seconds"] for _, b in pairs)
            if pairs and theirs > 0:
                ratios.append(mine / theirs)
    return ratios


def better_than_default(comps: list[dict], m: str) -> dict | None:
    """Variant `m` against GOAL_METHOD on the comparisons where both ran GOAL_SEEDS seeds with SGDM."""
    met = met_default = 0
    d_final, wall = [], []
    shared = 0
    for comp in comps:
        p, q = paired(comp["records"], m, BASELINE), paired(comp["records"], GOAL_METHOD, BASELINE)
        if p is None or q is None or p["n"] < GOAL_SEEDS or q["n"] < GOAL_SEEDS:
            continue
        shared += 1
        met, met_default = met + goal_met(p), met_default + goal_met(q)
        r = paired(comp["records"], m, GOAL_METHOD)
        d_final += r["d_final_test_acc"]
        wall += r["wall_ratio"]
    if not shared:
        return None
    better = met > met_default or (met == met_default and gain(d_final))
    return {"comparisons": shared, "met": met, "met_default": met_default, "d_final": d_final, "wall_ratio": wall,
            "better": better}
