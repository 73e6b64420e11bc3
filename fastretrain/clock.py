"""The training clock's spans: before_fit, and each epoch's training pass, timed in wall and CPU seconds.

Training time is what a run is charged (`engine.wall_seconds`, the budget, the comparison protocol): the spans'
seconds minus the work a strategy marks `untimed()` inside them (extra evaluations, caches that only evaluation
reads). Evaluation after an epoch falls between spans and is never counted. CPU time is this process's, over the
same spans: beside wall time it shows another process's load.
"""
from __future__ import annotations

import contextlib
import time


class Span:
    """The current span: started, read while it runs, stopped; `untimed()` work inside it is subtracted."""

    def __init__(self) -> None:
        self.t0: float | None = None  # perf_counter at the start (None: between spans)
        self.c0 = 0.0  # process_time at the start
        self.off = self.off_cpu = 0.0  # untimed wall and CPU seconds since the start

    def start(self) -> None:
        self.off = self.off_cpu = 0.0
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def wall(self, base: float = 0.0) -> float:
        """`base` plus the span's training seconds so far (`base` alone between spans)."""
        return base if self.t0 is None else base + time.perf_counter() - self.t0 - self.off

    def cpu(self, base: float = 0.0) -> float:
        return base if self.t0 is None else base + time.process_time() - self.c0 - self.off_cpu

    def stop(self) -> tuple[float, float]:
        """End the span: its (wall, CPU) training seconds."""
        wall = time.perf_counter() - self.t0 - self.off
        cpu = time.process_time() - self.c0 - self.off_cpu
        self.t0 = None
        return wall, cpu

    @contextlib.contextmanager
    def untimed(self, sync):
        """Exclude the enclosed work from the span; `sync()` waits for the device at both ends."""
        sync()
        t, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            sync()
            self.off += time.perf_counter() - t
            self.off_cpu += time.process_time() - c
