"""Benchmark suites (issues 8 and 12): every method and useful combination side by side, under the comparison
protocol of ../shared/METHODS.md §6, rendered to docs/BENCHMARKS.md with the source papers' claims checked.

    python benchmarks/run.py --suite cpu            # runs (resumably: finished cells are reused), then renders
    python benchmarks/run.py --render               # only re-render docs/BENCHMARKS.md and the README's result
                                                    # tables from the committed results (what the test checks)
    BUDGET=7 bash benchmarks/gpu_run.sh             # the GPU suite in stages on a GPU machine, gpu_data/ carried
                                                    # (benchmarks/gpu_run.py; docs/BENCHMARKS.md "How to reproduce")

A suite is a list of comparisons (dataset × backbone × methods × seeds); each comparison is one
`fastretrain.bench.compare` call writing benchmarks/results/suite-<name>/<comparison>/ (one folder and one
summary.json per cell, plus results.json / results.md / accuracy_vs_time.png). Every cell records the command,
resolved config, code version, hardware and torch version.

The report (docs/BENCHMARKS.md) is fed by every suite in REPORT_SUITES whose results exist: comparisons at
>= HEADLINE_PX go to its headline, smaller ones to the small-input appendix. Every number in it, and in the
README's result tables (between `<!-- results:NAME -->` markers), is computed here from committed result files;
tests/test_suite.py re-renders both and fails if the committed text differs. Verdicts follow the fixed rules of
`claims` and `overall`, the "which method when" table the rules of `most_accurate`, `soonest`, `cheapest` and
`avoid` (their constants are in verdicts.py, and the report states them). Once a GPU run's files are committed,
the render also writes docs/BENCHMARKS-gpu.md (`gpu_page`).

This file is the command line; the suites are defined and loaded in suites.py, judged in verdicts.py, and rendered
by findings.py, report.py (docs/BENCHMARKS.md) and pages.py (the GPU page, README's and docs/fast_retrain.md's
blocks, `render_all`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # the suite's modules, also when this file is loaded by path

from fastretrain.bench import cell_done, compare  # noqa: E402
from pages import draw, render_all  # noqa: E402
from report import doc_path, render  # noqa: E402
from suites import BASELINE, REPORT_SUITES, SUITES, default_root, load_suite  # noqa: E402

# Read as `v2.NAME` by benchmarks/evidence_v3.py (`import run as v2`) and the scripts built on it
from pages import fill_blocks  # noqa: E402,F401
from suites import (  # noqa: E402,F401
    FR_AUTHORS, LITE0, LITE1, SHORT_NAMES, V2_CIFAR, V2_FASHION, V2_FASHION64, V2_FLOWERS)


def _value(text: str):
    """A --override value: JSON when it parses (numbers, true/false, null), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=sorted(SUITES), help="the suite to run (with --render: only re-render)")
    ap.add_argument("--render", action="store_true", help="only render from the cells that exist")
    ap.add_argument("--only", nargs="*", help="comparison ids to run (default: all)")
    ap.add_argument("--out", help="results folder (default benchmarks/results/suite-NAME)")
    ap.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                    help="change every comparison's config, e.g. device=cpu epochs=1 (to check a suite cheaply)")
    ap.add_argument("--seeds", type=int, help="seeds per comparison (default: the suite's)")
    ap.add_argument("--methods", nargs="*", help="run only these rows of each comparison now (e.g. the baselines and "
                    "the method under test first, for every seed); the others' finished cells are still reported")
    ap.add_argument("--budget-minutes", type=float, help="start no new cell after this many minutes; rerun to continue")
    args = ap.parse_args(argv)
    if not args.suite and not args.render:
        ap.error("give --suite NAME (to run it) or --render (to re-render the report)")
    over = {}
    for item in args.override:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--override {item!r}: expected KEY=VALUE")
        over[key] = _value(value)
    out_root = Path(args.out) if args.out else default_root(args.suite) if args.suite else None
    if args.render and (out_root is None or (args.suite in REPORT_SUITES and not args.out)):
        for path in render_all(args.seeds):
            print(f"written {path}")
        return
    deadline = time.monotonic() + 60 * args.budget_minutes if args.budget_minutes else None
    comps = []
    for cid, base, methods, seeds in SUITES[args.suite]:
        if args.only and cid not in args.only:
            continue
        base, seeds = {**base, **over}, args.seeds or seeds
        late = deadline is not None and time.monotonic() > deadline
        if not args.render and not late:
            run = [m for m in methods if not args.methods or m in args.methods]
            compare(base, run, list(range(seeds)), out_root / cid, baseline=BASELINE, title=cid, deadline=deadline)
        elif late and not all(cell_done(out_root / cid, m, s) for s in range(seeds) for m in methods):
            print(f"== time budget reached: {cid} not continued (rerun to continue)", flush=True)
    if args.suite in REPORT_SUITES and not args.out:
        for path in render_all(args.seeds):
            print(f"written {path}")
        return
    comps = load_suite(args.suite, out_root, args.seeds)
    roots = {args.suite: out_root}
    draw(comps, roots)
    command = "python benchmarks/run.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:])
                                                     if a != "--render")
    print(f"written {render([args.suite], comps, roots, doc_path(args.suite, out_root), command, args.seeds)}")


if __name__ == "__main__":
    main()
