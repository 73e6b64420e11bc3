"""Re-run a finished benchmark cell from its config.json and check that today's code reproduces its metrics bit for bit.

A refactor that claims "behaviour does not change" (issue 25) is checked here: the cell is trained again into a
temporary folder with the configuration it recorded, and every number of every metrics.jsonl line and of
summary.json must be equal to the committed one, except what measures time or identifies the run (TIMING).
Budgeted cells (`budget` set) are refused: their epochs follow measured time, so they cannot repeat.
The thread count must match the cell's (its summary's `load.end.threads`; torch's reduction order depends on it).

Usage: python benchmarks/rerun_cell.py CELL_FOLDER [CELL_FOLDER ...]   (exit 1 when a number differs)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

TIMING = {"epoch_seconds", "wall_seconds", "cpu_seconds", "images_per_second", "run_id", "load", "load_warning",
          "torch", "device", "data"}  # time, identity and environment; every other value must repeat exactly


def differences(old: dict | list, new: dict | list, where: str = "") -> list[str]:
    """Every value that differs between two records, skipping TIMING keys, as 'where: old -> new'."""
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{where}: {len(old)} entries -> {len(new)}"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{where}[{i}]")]
    if isinstance(old, dict) and isinstance(new, dict):
        keys = (set(old) | set(new)) - TIMING
        return [d for k in sorted(keys) for d in differences(old.get(k), new.get(k), f"{where}.{k}")]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def rerun(cell: Path) -> list[str]:
    """Train the cell again from its config.json; the differences from its committed metrics and summary."""
    import torch

    from fastretrain.integrity import metrics_lines
    from fastretrain.run import make_config, train

    config = json.loads((cell / "config.json").read_text())
    if config.get("budget"):
        raise SystemExit(f"{cell}: a budgeted cell's epochs follow measured time; it cannot repeat bit for bit")
    summary = json.loads((cell / "summary.json").read_text())
    threads = summary.get("load", {}).get("end", {}).get("threads")
    if threads and torch.get_num_threads() != threads:
        raise SystemExit(f"{cell}: ran with {threads} threads, this process has {torch.get_num_threads()}; "
                         f"set OMP_NUM_THREADS={threads}")
    with tempfile.TemporaryDirectory() as tmp:
        fields = {k: v for k, v in config.items() if k not in ("out", "run_id", "overwrite", "resume")}
        train(make_config(**fields, out=tmp))
        new_summary = json.loads((Path(tmp) / "summary.json").read_text())
        return (differences(metrics_lines(cell), metrics_lines(Path(tmp)), "metrics")
                + differences(summary, new_summary, "summary"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cells", nargs="+", type=Path)
    failed = 0
    for cell in ap.parse_args(argv).cells:
        diffs = rerun(cell)
        print(f"{cell}: {'reproduced bit for bit' if not diffs else f'{len(diffs)} value(s) differ'}")
        for d in diffs[:20]:
            print(f"   {d}")
        failed += bool(diffs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
