"""The sections of docs/BENCHMARKS.md that say what the suites found, each rendered from the rules of verdicts.py:
which method when (the table that leads the page), fast-retrain's goal and what each of its ingredients
contributes (also docs/fast_retrain.md's blocks), and the source papers' claims, checked.
"""
from __future__ import annotations

import json
import statistics

from fastretrain.bench import NOT_COMPARABLE, paired, pm, reach_text
from suites import BASELINE, FR_AUTHORS, HEADLINE_PX, REPORT_SUITES, ROOT, load_dedicated
from verdicts import (AVOID_PT, CHEAP_TOL_PT, CHECKS, CLAIM_SEEDS, DEDICATED, DEDICATED_NOTES, GOAL_METHOD,
                      GOAL_SEEDS, GOAL_TIME,
                      GOAL_TOL_PT, NO_LOSS_PT, PAPERS, PROBE, acc_name, against_baseline, avoid, better_than_default,
                      cheapest, claims, delivered_d, describe, diffs, goal_met, label_of, mean_of, most_accurate,
                      overall, plural, row_of, show_name, soonest, tier, timing_control, versus)


# ---------------------------------------------------------------------------------------------------------------
# Which method when (issue 14): the recommendation table that leads docs/BENCHMARKS.md and fills the README's
# `which` block. One row per comparison: a setting a user can match (data and its size, input size, epochs and
# SGDM's training time, device), and per column the method a fixed rule picks from that comparison's paired
# statistics against SGDM. Headline comparisons (>= HEADLINE_PX) are used whenever one exists; otherwise the
# small-input ones, said so plainly. tests/test_suite.py checks every rule on synthetic records.

AVOID_SHOWN = 4  # the worst this many are named, the rest counted


def device_text(comp: dict) -> str:
    env = comp["environment"]
    if env.get("gpu"):
        return f"GPU ({env['gpu']})"
    if str(comp["records"][0]["summary"].get("device", "")).startswith("cuda"):
        return "GPU"
    return f"CPU ({env['cpu_count']} cores)" if env.get("cpu_count") else "CPU"


def setting_cells(comp: dict) -> list[str]:
    """The setting a user matches: data (training images, backbone), input size, budget, device."""
    c, first = comp["config"], comp["records"][0]["summary"]
    n = first.get("train_images")
    model = c.get("model") or first.get("model")
    init = "ImageNet" if c.get("pretrained") else "from scratch"
    data = f"{c.get('data')}{f', {n:,} train images' if n else ''}{f'; {model} ({init})' if model else ''}"
    epochs = comp["recipe"]["recipe"].get("epochs") or c.get("epochs") or first.get("epochs")
    base = row_of(comp["rows"], comp["baseline"])
    budget = f"{f'{epochs} epochs; ' if epochs else ''}SGDM {mean_of(base['wall_seconds']):.0f} s"
    return [label_of(comp), data, f"{comp['image_size']} px", budget, device_text(comp)]


def _usable(comps: list[dict]) -> list[dict]:
    """Comparable comparisons with the baseline and at least one other method paired with it."""
    return [c for c in comps if c["protocol"]["kind"] != NOT_COMPARABLE and row_of(c["rows"], c["baseline"])
            and against_baseline(c)]


def _setting_order(c: dict) -> tuple:
    return device_text(c), -c["image_size"], str(c["config"].get("data")), str(c["config"].get("model"))


def _tally(picks: list[str]) -> str:
    counts = {m: picks.count(m) for m in dict.fromkeys(picks)}
    return ", ".join(f"{show_name(m)} {k}" for m, k in sorted(counts.items(), key=lambda x: -x[1]))


def recommendation_lines(comps: list[dict]) -> list[str]:
    """The "which method when" table with its evidence note, rules and a tally per column."""
    usable = _usable(comps)
    head = [c for c in usable if tier(c) == "headline"]
    rows = head or usable
    skipped = [f"`{c['id']}`" for c in comps if c["protocol"]["kind"] == NOT_COMPARABLE]
    if not rows:
        return ["No comparable comparison with SGDM has finished yet."]
    sizes = sorted({c["image_size"] for c in rows})
    if head:
        note = (f"From the {plural(len(head), 'comparison')} at ≥ {HEADLINE_PX} px; the small-input comparisons "
                "(appendix) are not used here.")
    else:
        pending = [s for s in REPORT_SUITES if not any(c["suite"] == s for c in comps)]
        px = "/".join(map(str, sizes))
        note = (f"**Only small-input evidence exists so far**: every comparable comparison has {px} px inputs, far "
                f"below the ≥ {HEADLINE_PX} px where users train, so read these rows as hints, not rules"
                + (f"; no results yet from {plural(len(pending), 'suite')}: {', '.join(f'`{s}`' for s in pending)}."
                   if pending else "."))
    if skipped:
        note += f" Not used (not comparable, re-run pending): {', '.join(skipped)}."
    lines = [note, "", f"| comparison | data; backbone | input | budget | device | most accurate | SGDM's accuracy "
             f"soonest | least time within {CHEAP_TOL_PT:g} pt | avoid (pt) |", "|" + "---|" * 9]
    picks: dict[str, list[str]] = {"most accurate": [], "soonest": [], "cheapest": []}
    for c in sorted(rows, key=_setting_order):
        cols = []
        for key, rule in (("most accurate", most_accurate), ("soonest", soonest), ("cheapest", cheapest)):
            m, text = rule(c)
            picks[key].append(m)
            cols.append(text)
        bad = avoid(c)
        more = f" (+{len(bad) - AVOID_SHOWN} more)" if len(bad) > AVOID_SHOWN else ""
        bad = ", ".join(f"{show_name(m)} {d:+.1f}" for m, d in bad[:AVOID_SHOWN]) + more or "—"
        lines.append("| " + " | ".join(setting_cells(c) + cols + [bad]) + " |")
    tally = (f"Picked, over these {plural(len(rows), 'comparison')}: most accurate: {_tally(picks['most accurate'])}; "
             f"soonest: {_tally(picks['soonest'])}; least time within {CHEAP_TOL_PT:g} pt: "
             f"{_tally([m for m in picks['cheapest'] if m != BASELINE]) or 'none'}.")
    rules = ("Rules (fixed in `benchmarks/verdicts.py`), per comparison, on the paired statistics against SGDM "
             "(accuracy: "
             "test acc at the validation-best epoch, final test acc for legacy results; mean ± paired std in pt): "
             "*most accurate*: the highest paired mean gain among the methods ahead of SGDM beyond one paired std, "
             "else SGDM; *SGDM's accuracy soonest*: the lowest median time to the same seed's SGDM final accuracy "
             f"below 1× (a seed that never reaches it counts as never), at most {NO_LOSS_PT} pt below SGDM; *least "
             f"time within {CHEAP_TOL_PT:g} pt*: the lowest paired mean training-time ratio below 1× at most "
             f"{CHEAP_TOL_PT:g} pt below SGDM; *avoid*: at least {AVOID_PT:g} pt below SGDM, beyond one paired std.")
    return lines + ["", tally, "", rules]


def recommendation_text(comps: list[dict]) -> list[str]:
    return ["## Which method when\n", *recommendation_lines(comps), ""]


def goal_text(comps: list[dict]) -> list[str]:
    """Issue 13's goal per headline comparison, with the linear probe beside it (where it is the better choice)."""
    parts = [f"## Goal of `{GOAL_METHOD}`: SGDM's accuracy in half its time\n",
             "Rule (fixed in `benchmarks/verdicts.py`): "
             f"on each comparison at ≥ {HEADLINE_PX} px, `{GOAL_METHOD}` reaches "
             f"the same seed's SGDM final test accuracy (since v3: of the model SGDM returns, its validation-best) in at most {GOAL_TIME:g}× SGDM's own time to it (median over "
             "seeds, a seed that never reaches it counts as never) and ends with a paired mean delivered test accuracy "
             f"at most {GOAL_TOL_PT} pt below SGDM's. The linear probe is shown beside it: where it is ahead, it is the "
             "better choice.\n",
             "Since protocol v3 (issue 22) every time to a target reads the delivered-model curve: the test accuracy "
             "of the model the run would return if stopped then (its validation-best so far). The ridge head these "
             "cpu-v2 runs logged inside epoch 1 could never be returned (it was never eligible as the best epoch), "
             "so it is no longer a point; until v3 it was, and it alone made the goal read as met. The equal-budget "
             "evidence of protocol v3 is in its own section.\n"]
    met, rows = 0, []
    for comp in [c for c in comps if tier(c) == "headline"]:
        p = paired(comp["records"], GOAL_METHOD, BASELINE)
        if p is None:
            continue
        d = delivered_d(p)
        ok = goal_met(p)
        met += ok
        q = paired(comp["records"], GOAL_METHOD, PROBE)
        probe = "—" if q is None else f"{pm(diffs(comp, q))} pt, ahead: {versus(diffs(comp, q), GOAL_METHOD, PROBE)}"
        rows.append(f"| `{comp['id']}` | {p['n']} | {reach_text(p)} | {pm(d)} | {pm(p['wall_ratio'], '{:.2f}')}× | "
                    f"{probe} | **{'met' if ok else 'not met'}** |")
    if not rows:
        return parts + [f"No headline comparison has both `{GOAL_METHOD}` and SGDM yet.\n"]
    parts += [f"| comparison | seeds | time to SGDM's final acc (median ratio) | delivered acc − SGDM (pt) | training time "
              f"/ SGDM's | test acc − `{PROBE}` (pt) | goal |", "|---|---|---|---|---|---|---|", *rows,
              "", f"Goal met in {met} of {len(rows)} headline comparisons.\n"]
    return parts + timing_control_text(comps)


def timing_control_text(comps: list[dict]) -> list[str]:
    ratios = sorted(timing_control(comps))
    if not ratios:
        return []
    mid = statistics.median(ratios)
    return [f"Timing noise: the same work (the SGD passes of the epochs where nothing is frozen) took {ratios[0]:.2f}–"
            f"{ratios[-1]:.2f}× SGDM's time in the {len(ratios)} `{GOAL_METHOD}*` cells (median {mid:.2f}×; "
            "`benchmarks/verdicts.py` `timing_control`). Cells run at different times, two at a time, on a shared CPU: "
            f"time ratios inside that spread are not resolved here (the goal's {GOAL_TIME:g}× bar is "
            f"{'below' if GOAL_TIME < ratios[0] else 'inside'} it).\n"]


# The ingredients of fast-retrain (issue 13), each row against SGDM on the same seeds: what each part contributes.
ABLATION = ["fast-retrain", "fast-retrain[random-freeze.policy=uniform]", "fast-retrain[mp-refine.init_head=False]",
            "fast-retrain[mp-refine.until=None]", "fast-retrain[mp-refine.until=0]", "random-freeze", "mp-refine",
            FR_AUTHORS, PROBE]
ABLATION_WHAT = {"fast-retrain": "the default", "fast-retrain[random-freeze.policy=uniform]": "uniform draw, not the "
                 "bottom block", "fast-retrain[mp-refine.init_head=False]": "no ridge head before epoch 1",
                 "fast-retrain[mp-refine.until=None]": "refinement after every epoch",
                 "fast-retrain[mp-refine.until=0]": "the ridge head, no refinement", "random-freeze": "freezing only",
                 "mp-refine": "ridge head + refinement, no freezing", FR_AUTHORS: "the authors' variant",
                 PROBE: "the linear probe"}


def ablation_text(comps: list[dict]) -> list[str]:
    """Per headline comparison, fast-retrain's variants and parts against SGDM (paired by seed), each with the goal
    rule's verdict where it ran the goal's 3 seeds; then each variant against the default itself (`better_than_default`,
    the fixed rule for changing the default)."""
    parts = []
    heads = [c for c in comps if tier(c) == "headline"]
    for comp in heads:
        rows = []
        for m in ABLATION:
            p = paired(comp["records"], m, BASELINE)
            if p is None:
                continue
            verdict = "n < 3" if p["n"] < GOAL_SEEDS else "met" if goal_met(p) else "not met"
            rows.append(f"| `{m}` | {ABLATION_WHAT[m]} | {p['n']} | {pm(diffs(comp, p))} | "
                        f"{pm(p['d_final_test_acc'])} | {reach_text(p)} | {pm(p['wall_ratio'], '{:.2f}')}× | "
                        f"{verdict} |")
        if len(rows) > 1:
            parts += [f"**{comp['id']}** ({describe(comp)}):", "",
                      f"| row | what changes | seeds | Δ {acc_name(comp)} vs SGDM (pt) | Δ final acc vs SGDM (pt) | "
                      "time to SGDM's final acc (median ratio) | training time / SGDM's | goal rule |",
                      "|---|---|---|---|---|---|---|---|",
                      *rows, ""]
    if not parts:
        return ["No headline comparison has more than one of these rows yet.", ""]
    summary = []
    for m in ABLATION[1:-1]:  # the variants and parts; the probe is a method of its own
        v = better_than_default(heads, m)
        if v is not None:
            summary.append(f"| `{m}` | {v['comparisons']} | {v['met']} | {v['met_default']} | {pm(v['d_final'])} | "
                           f"{pm(v['wall_ratio'], '{:.2f}')}× | {'yes' if v['better'] else 'no'} |")
    if summary:
        parts += [f"Each variant against the default `{GOAL_METHOD}` itself, on the comparisons where both ran "
                  f"{GOAL_SEEDS} seeds (differences paired by seed, pooled over those comparisons). Fixed rule for "
                  "changing the default: the variant meets the goal in more of them, or in as many with a final "
                  "accuracy gain over the default above one paired std:", "",
                  "| variant | comparisons | goals met | the default's | final acc − default's (pt) | training time / "
                  "default's | better than the default |", "|---|---|---|---|---|---|---|", *summary, ""]
    return parts


OWN_REGIME = {"rifle": "rifle", "kernel": "kernel-rescale", "decompose": "decompose"}  # PAPERS key -> papers.py's


def own_regime(name: str) -> str:
    """The claim's state in its own regime, from `python benchmarks/papers.py --render`'s results.json."""
    path = ROOT / "benchmarks" / "results" / "papers" / name / "results.json"
    link = f"[benchmarks/results/papers/{name}](../benchmarks/results/papers/{name}/results.md)"
    if not path.is_file():
        return f"no baseline cell has finished yet (`python benchmarks/papers.py --only {name}`)"
    res = json.loads(path.read_text())
    n = len(res["seeds"])
    return f"**{res['claim']['result']}** ({n} seed{'s' if n != 1 else ''} of its baseline finished; {link})"


def claims_text(comps: list[dict]) -> list[str]:
    measured = claims(comps)
    parts = ["## Claims of the source papers, checked\n",
             f"A check with fewer than {CLAIM_SEEDS} paired seeds gets no verdict and is counted nowhere (enforced "
             "since 2026-12-02, when partial cpu-v2 rows first reached this section; no earlier verdict changed).\n"]
    for key, (title, claim, rule, page) in PAPERS.items():
        lines = measured[key]
        parts += [f"### {title}\n", f"- Claim: {claim}.", f"- Checked: {rule}."]
        for t, name in (("headline", f"Headline (≥ {HEADLINE_PX} px)"), ("appendix", "Small-input appendix")):
            mine = [x for x in lines if x["tier"] == t]
            if not mine:
                own = t == "headline" and key in OWN_REGIME  # its >= HEADLINE_PX run is its own regime's (issue 26)
                parts.append(f"- {name}: none in the benchmark suites; its ≥ {HEADLINE_PX} px comparison is its own "
                             "regime's, below" if own else f"- {name}: no comparison has run yet")
                continue
            parts += [f"- {name}, {x['text']} → **{x['verdict']}**" for x in mine]
            parts.append(f"- Overall, {name[0].lower() + name[1:]}: {overall([x['verdict'] for x in mine])}")
        if key in OWN_REGIME:
            parts.append(f"- In its own regime (issue 26): {own_regime(OWN_REGIME[key])}")
        for folder, method, base in DEDICATED.get(key, []):
            comp = load_dedicated(folder, method, base)
            if comp is None:
                continue
            note = f" ({DEDICATED_NOTES[folder]})" if folder in DEDICATED_NOTES else ""
            for text, verdict in CHECKS[key](comp, method, base):
                parts.append(f"- Dedicated benchmark ([{page}]({page})) {label_of(comp)}, `{method}`, {describe(comp)}"
                             f"{note}: {text} → {verdict} (not counted above)")
        parts.append("")
    return parts
