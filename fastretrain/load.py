"""Timing you can trust: the machine's load around a run, and a one-line warning when another process competed.

Wall-clock times are this package's evidence (time to accuracy, images/s), and on a shared machine another
process's work slows a run without changing anything the run records. So every run notes the load average (the
number of runnable processes averaged over 1, 5 and 15 minutes, `os.getloadavg`) and the CPU count when it
starts and when it ends (`summary.json`, key `load`), and `competing_load` turns those into a warning.

The rule: the cores were contended when the higher of the two 1-minute load averages exceeds both the CPU count
(more runnable threads than cores) and the run's own share, `min(threads, cpus)`, by more than `margin` (someone
else's work, not the run's own threads). The 1-minute average lags by about a minute, so it reads the start of
a run partly as what ran before it (a previous cell of a benchmark in the same process counts as the run's own
threads, which is why the run's share is subtracted at the start too) and misses load that came and went within
a short run; it is a warning, not a measurement.
"""
from __future__ import annotations

import os
from typing import Any


def load_snapshot(threads: int | None = None) -> dict[str, Any]:
    """The load averages over 1, 5 and 15 minutes (None where the platform has none), the CPU count and the
    threads this process computes with (torch's intra-op threads unless given)."""
    try:
        avg = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # Windows has no load average
        avg = None
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return {"load_average": avg, "cpu_count": os.cpu_count() or 1, "threads": threads}


def competing_load(start: float | None, end: float | None, cpu_count: int, threads: int,
                   margin: float = 1.0) -> str | None:  # fmt: skip
    """One line warning that another process competed for the cores, or None.

    Args:
        start, end: the 1-minute load average when the run started and ended (None: unknown).
        cpu_count: the machine's CPUs; threads: the threads the run itself computes with.
        margin: runnable threads beyond the run's own share that count as competition.
    """
    loads = [v for v in (start, end) if v is not None]
    if not loads:
        return None
    busy, own = max(loads), min(threads, cpu_count)
    if busy <= cpu_count or busy - own <= margin:
        return None
    where = " and ".join(f"{v:.1f} at the {w}" for v, w in ((start, "start"), (end, "end")) if v is not None)
    return (f"the 1-minute load average was {where} on {cpu_count} CPU(s), above this run's {threads} thread(s): "
            "another process competed for the cores, so the times measured are slower than this machine gives")


def run_load_warning(start: dict[str, Any], end: dict[str, Any]) -> str | None:
    """`competing_load` of two `load_snapshot`s (a run's start and end)."""
    first = lambda s: s["load_average"][0] if s.get("load_average") else None  # noqa: E731
    return competing_load(first(start), first(end), end["cpu_count"], end["threads"])
