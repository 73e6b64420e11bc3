"""The GPU suite's device run (issue 14, part 2): the stages of `GPU_STAGES` (benchmarks/suites.py) under one time
budget, in one process. benchmarks/gpu_run.sh sets up the machine, runs this and packs the results.

Stages, in order: the precision / memory-layout check (gpu_precision.py), Flowers-5 at 224 px with the core rows,
the throughput measurement (engine_overhead.py at 128 and 224 px), CIFAR-10 at 224 px, Flowers-5's other rows.
A measurement stage starts only when its estimated length (ESTIMATE_S) still fits in the budget; a suite stage
starts no cell later than RESERVE_S before the budget's end (a cell that has started runs to its end: allow about
that much beyond the budget). A cell that crashes (any exception, not only a method that cannot run) is recorded
and the stage goes on with the next cell. Finished cells are reused, so a second call continues.

benchmarks/results/gpu_run/stages.json records, per call, what each stage did and how long it took (seconds of
this machine, for sizing the next run); `python benchmarks/run.py --render` puts it in docs/BENCHMARKS-gpu.md.

    python benchmarks/gpu_run.py --budget-minutes 7          # on the GPU machine (through gpu_run.sh)
    python benchmarks/gpu_run.py --check                     # the same path on CPU, tiny settings, in a scratch
                                                             # worktree: the numbers mean nothing
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import engine_overhead  # noqa: E402
import gpu_precision  # noqa: E402
import suites as suite  # noqa: E402  (the GPU suite's comparisons and stages)

from fastretrain.bench import cell_done, compare, environment, run_cells  # noqa: E402
from fastretrain.checkpoint import atomic_json  # noqa: E402


RESERVE_S = 30  # no cell starts later than this before the budget's end (one 224 px cell: ~10-20 s, estimated)
ESTIMATE_S = {"precision": 60, "throughput": 120}  # estimated H100 seconds of the measurement stages
PRECISION = ["--device", "cuda"]
THROUGHPUT = ["--device", "cuda", "--max-train", "1024", "--image-sizes", "128", "224"]
# --check: the whole path on a CPU in a minute or two (tiny model, 32 px, 2 epochs, one seed)
CHECK_SUITE = {"device": "cpu", "model": "tiny-resnet", "pretrained": False, "image_size": 32, "epochs": 2,
               "max_train": 60}
CHECK_PRECISION = ["--device", "cpu", "--model", "tiny-cnn", "--data", "fashion-mnist", "--image-size", "16",
                   "--max-train", "40", "--batch-size", "8", "--reps", "1"]
CHECK_THROUGHPUT = ["--device", "cpu", "--model", "tiny-resnet", "--data", "fashion-mnist", "--image-sizes", "16", "24",
                    "--max-train", "40", "--batch-size", "8", "--reps", "1"]
RESULTS = ROOT / "benchmarks" / "results"


def run_comparison(cid: str, rows: list[str] | None, over: dict, seeds: int | None, deadline: float) -> dict:
    """Run the unfinished cells of `rows` (None: all) of comparison `cid`, seed by seed, until `deadline`; then
    aggregate every finished cell of the comparison (results.json, results.md, plot). Returns what happened."""
    base, methods, n = next((b, m, k) for c, b, m, k in suite.SUITES["gpu"] if c == cid)
    base, seeds = {**base, **over}, list(range(seeds or n))
    folder = suite.default_root("gpu") / cid
    env, failed, crashed, ran, late = environment(), {}, {}, 0, 0
    for seed in seeds:
        for m in methods if rows is None else [m for m in methods if m in rows]:
            if cell_done(folder, m, seed):
                continue
            if time.monotonic() > deadline:
                late += 1
                continue
            try:
                run_cells(base, [m], [seed], folder, failed=failed, deadline=deadline, env=env)
                ran += cell_done(folder, m, seed)
            except Exception as e:  # noqa: BLE001 - one broken cell must not end a one-shot device run
                traceback.print_exc()
                crashed.setdefault(m, f"crashed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if any(cell_done(folder, m, s) for m in methods for s in seeds):
        saved = folder / "results.json"
        before = json.loads(saved.read_text()).get("failed", {}) if saved.is_file() else {}
        with contextlib.redirect_stdout(io.StringIO()):  # its "not started" lines for the rows still to come
            compare(base, methods, seeds, folder, title=cid, deadline=time.monotonic() - 1)  # aggregates only
        res = json.loads(saved.read_text())
        res["failed"] = {**before, **failed, **crashed}  # compare ran nothing, so it recorded no failure itself
        atomic_json(res, saved)
    return {"cells_run": ran, "cells_not_started": late, "failed": {**failed, **crashed}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-minutes", type=float, default=7.0)
    ap.add_argument("--check", action="store_true", help="tiny CPU settings: checks the pipeline, measures nothing")
    ap.add_argument("--seeds", type=int, help="seeds per comparison (default: the suite's)")
    args = ap.parse_args(argv)
    start = time.monotonic()
    end = start + 60 * args.budget_minutes
    over = CHECK_SUITE if args.check else {}
    seeds = args.seeds or (1 if args.check else None)
    stages = []
    for name, cid, rows in suite.GPU_STAGES:
        t0, left = time.monotonic(), end - time.monotonic()
        record = {"stage": name, "started_s": round(t0 - start, 1)}
        try:
            if cid is None:
                if left < ESTIMATE_S[name]:
                    record["skipped"] = f"{left:.0f} s of budget left, estimated {ESTIMATE_S[name]} s"
                elif name == "precision":
                    out = RESULTS / "throughput" / "gpu-precision.json"
                    gpu_precision.main([*(CHECK_PRECISION if args.check else PRECISION), "--out", str(out)])
                else:
                    out = RESULTS / "throughput" / "gpu.json"
                    engine_overhead.main([*(CHECK_THROUGHPUT if args.check else THROUGHPUT), "--out", str(out)])
            else:
                record.update(run_comparison(cid, rows, over, seeds, end - RESERVE_S))
        except Exception as e:  # noqa: BLE001 - a failed stage is recorded; the next one still runs
            traceback.print_exc()
            record["error"] = f"{type(e).__name__}: {e}"
        record["seconds"] = round(time.monotonic() - t0, 1)
        stages.append(record)
        print(f"== stage {name}: {json.dumps(record)}", flush=True)
    path = RESULTS / "gpu_run" / "stages.json"
    calls = json.loads(path.read_text())["calls"] if path.is_file() else []  # a continued run keeps the earlier calls
    calls.append({"budget_minutes": args.budget_minutes, "check": args.check, "stages": stages,
                  "seconds": round(time.monotonic() - start, 1), "environment": environment()})
    atomic_json({"calls": calls}, path)
    return 1 if any("error" in s for s in stages) else 0


if __name__ == "__main__":
    sys.exit(main())
