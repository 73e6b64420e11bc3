"""Pilot of fast-retrain schedules (issue 13), seed 0, the cpu-v2 configs; not a suite result."""
import sys
from pathlib import Path
sys.path.insert(0, "/work/main/benchmarks")
from suites import LITE0, V2_FLOWERS, V2_FASHION
from fastretrain import bench
labels = sys.argv[1:]
for name, cfg in (("fashion", {**LITE0, **V2_FASHION}), ("flowers", {**LITE0, **V2_FLOWERS})):
    bench.run_cells(cfg, labels, [0], Path(f"/work/pilot/{name}"))
