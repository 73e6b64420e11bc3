"""Everything `python benchmarks/run.py --render` writes from the committed results: docs/BENCHMARKS.md (report.py),
docs/BENCHMARKS-gpu.md (`gpu_page`), the `<!-- results:NAME -->` blocks of README.md and docs/fast_retrain.md
(`fill_blocks`), and each comparison's plots (`draw`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from fastretrain.bench import plot_curves, pm
from findings import ablation_text, goal_text
from report import THROUGHPUT, render_text, throughput_table, where_run
from suites import REPORT_SUITES, ROOT, default_root, load_suite
from verdicts import describe, mean_of, plural, row_of, show_name


# ---------------------------------------------------------------------------------------------------------------
# The GPU page (issue 14, part 2), from the committed measurement files

GPU_RUN = ROOT / "benchmarks" / "results" / "gpu_run" / "stages.json"
GPU_DOC = ROOT / "docs" / "BENCHMARKS-gpu.md"


def gpu_page(comps: list[dict]) -> str | None:
    """docs/BENCHMARKS-gpu.md: the GPU run's device, precision check, per-method images/s, throughput and stages;
    None when no GPU result is committed."""
    gpu = [c for c in comps if c["suite"] == "gpu"]
    precision, tp = THROUGHPUT / "gpu-precision.json", THROUGHPUT / "gpu.json"
    stages = json.loads(GPU_RUN.read_text()) if GPU_RUN.is_file() else None
    if not (gpu or precision.is_file() or tp.is_file() or stages):
        return None
    env = stages["calls"][-1]["environment"] if stages else gpu[0]["environment"] if gpu else {}
    parts = ["# GPU benchmarks\n", f"Rendered by `{REPORT_COMMAND}` from `benchmarks/results/suite-gpu/`, "
             "`benchmarks/results/throughput/gpu*.json` and `benchmarks/results/gpu_run/stages.json`, written by one "
             "command on the GPU machine (`BUDGET=7 bash benchmarks/gpu_run.sh`, see BENCHMARKS.md \"How to "
             f"reproduce\"). Device: {where_run(env)}; torch {env.get('torch')}; code {env.get('commit')}. Accuracy, "
             "claims and the recommendation table: [BENCHMARKS.md](BENCHMARKS.md).\n"]
    parts.append("## Precision and memory layout\n")
    if precision.is_file():
        p = json.loads(precision.read_text())
        c = p["config"]
        parts += [f"Training images/s of {c['model']} at {c['image_size']} px, batch {c['batch_size']}, through the "
                  f"engine (`benchmarks/gpu_precision.py`): median of {plural(c['reps'], 'interleaved repeat')} of two "
                  f"epochs "
                  f"on {c['train_images']} images, the second timed. TF32 flags: {p['tf32']}.\n",
                  "| setting | images/s | vs float32 | peak memory (GiB) |", "|---|---|---|---|"]
        for k in sorted(p["median"], key=lambda k: (not k.startswith("float32"), "channels-last" in k, k)):
            v, peak = p["median"][k], p["peak_memory_gib"].get(k)
            parts.append(f"| {k} | {v:.1f} | {p['relative_to_float32'][k]:.2f}× | "
                         f"{'—' if peak is None else f'{peak:.2f}'} |")
        parts.append("")
    else:
        parts.append("Not measured.\n")
    parts.append("## Training images/s per method\n")
    for c in gpu:
        base = row_of(c["rows"], c["baseline"])
        ref = mean_of(base["images_per_second"]) if base else None
        parts += [f"`{c['id']}`: {describe(c)}. Images/s over training wall time, extra work included (mean ± std "
                  "over seeds).\n", "| method | images/s | vs SGDM | training s |", "|---|---|---|---|"]
        for r in c["rows"]:
            rate = mean_of(r["images_per_second"])
            rel = f"{rate / ref:.2f}×" if ref else "—"
            parts.append(f"| {show_name(r['method'])} | {pm(r['images_per_second'], '{:.0f}')} | {rel} | "
                         f"{pm(r['wall_seconds'], '{:.1f}')} |")
        parts.append("")
    if not gpu:
        parts.append("No comparison has run.\n")
    parts += ["## Throughput: engine, hand-written loop, extra work\n"]
    parts += [*throughput_table([tp]), ""] if tp.is_file() else ["Not measured.\n"]
    parts.append("## The run\n")
    for k, call in enumerate((stages or {}).get("calls", []), 1):
        parts += [f"Call {k}: budget {call['budget_minutes']:g} min; its stages took {call['seconds']:.0f} s in all "
                  "(this machine's seconds: the sizes of the next run follow from them).\n",
                  "| stage | started (s) | seconds | outcome |", "|---|---|---|---|"]
        for s in call["stages"]:
            what = s.get("error") or s.get("skipped") or (
                f"{s['cells_run']} cells run, {s['cells_not_started']} not started" if "cells_run" in s else "done")
            if s.get("failed"):
                what += "; failed: " + "; ".join(f"`{m}`: {e}" for m, e in s["failed"].items())
            parts.append(f"| {s['stage']} | {s['started_s']:.0f} | {s['seconds']:.0f} | {what} |")
        parts.append("")
    if not stages:
        parts.append("No record of the run's stages.\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# The result blocks of README.md and docs/fast_retrain.md (between <!-- results:NAME --> and
# <!-- /results:NAME -->), and everything --render writes


def goal_block(comps: list[dict]) -> str:
    """The goal section's rule, table and count without its heading: a block of README and docs/fast_retrain.md."""
    return "\n".join(goal_text(comps)[1:]).strip()


def readme_blocks(comps: list[dict]) -> dict[str, str]:
    """README's blocks rendered here: none since issue 25 (README is for users; every measured table lives in
    docs/BENCHMARKS.md; README's protocol-v3 block is rendered by benchmarks/evidence_v3.py)."""
    return {}


FAST_RETRAIN_DOC = ROOT / "docs" / "fast_retrain.md"


def fast_retrain_blocks(comps: list[dict]) -> dict[str, str]:
    """docs/fast_retrain.md's measured tables: issue 13's goal and the ablation, from the committed suite results."""
    return {"goal": goal_block(comps), "ablation": "\n".join(ablation_text(comps)).strip()}


def fill_blocks(text: str, blocks: dict[str, str]) -> str:
    """Replace the content between `<!-- results:NAME -->` and `<!-- /results:NAME -->` for each block."""
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- results:{name} -->\n)(?:.*?\n)?(<!-- /results:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"no <!-- results:{name} --> ... <!-- /results:{name} --> block to fill")
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    return text


def report_comparisons(seeds: int | None = None) -> tuple[list[str], list[dict], dict[str, Path]]:
    """The comparisons of every REPORT_SUITES suite that has results in its default folder."""
    suites = [s for s in REPORT_SUITES if default_root(s).is_dir()]
    roots = {s: default_root(s) for s in suites}
    comps = [c for s in suites for c in load_suite(s, roots[s], seeds)]
    return suites, comps, roots


REPORT_COMMAND = "python benchmarks/run.py --render"


def report_texts(seeds: int | None = None) -> tuple[dict[Path, str], list[dict], dict[str, Path]]:
    """What docs/BENCHMARKS.md and README.md should hold, rendered from the committed results alone."""
    suites, comps, roots = report_comparisons(seeds)
    doc, readme = ROOT / "docs" / "BENCHMARKS.md", ROOT / "README.md"
    texts = {doc: render_text(comps, doc, roots, REPORT_COMMAND, seeds),
             readme: fill_blocks(readme.read_text(), readme_blocks(comps)),
             FAST_RETRAIN_DOC: fill_blocks(FAST_RETRAIN_DOC.read_text(), fast_retrain_blocks(comps))}
    gpu = gpu_page(comps)
    if gpu is not None:  # docs/BENCHMARKS-gpu.md exists once a GPU run's results are committed
        texts[GPU_DOC] = gpu
    return texts, comps, roots


def render_all(seeds: int | None = None, plots: bool = True) -> list[Path]:
    """Write docs/BENCHMARKS.md and README.md's result blocks (and with `plots` redraw the comparisons' plots)."""
    texts, comps, roots = report_texts(seeds)
    if plots:
        draw(comps, roots)
    for path, text in texts.items():
        path.write_text(text)
    return list(texts)


def draw(comps: list[dict], roots: dict[str, Path]) -> None:
    for c in comps:
        folder = roots[c["suite"]] / c["id"]
        plot_curves(c["records"], folder / "accuracy_vs_time.png", c["id"])
        time_to_target_chart(c, folder / "time_to_target.png", c["id"])


def time_to_target_chart(comp: dict, path: Path, title: str) -> None:
    """Per method, the median over seeds of the paired ratio: time to the same seed's SGDM final accuracy over
    SGDM's own time to it; never-reached medians drawn grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in comp["rows"] if r["paired"]]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    vals = [r["paired"]["median_time_ratio"] or 0 for r in rows]
    ax.barh([r["method"] for r in rows], vals, color=["C0" if v else "lightgrey" for v in vals])
    for i, r in enumerate(rows):
        p = r["paired"]
        ax.text(vals[i], i, f" {'never' if not vals[i] else ''} ({p['reached']} of {p['n']} reached)", va="center",
                fontsize=8)
    ax.axvline(1, color="k", lw=0.6)
    ax.set_xlim(0, 1.35 * max(vals + [1.0]))  # room for the labels
    ax.invert_yaxis()
    ax.set_xlabel(f"time to the same seed's {comp['baseline']} final test accuracy, / {comp['baseline']}'s "
                  "(median over seeds)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
