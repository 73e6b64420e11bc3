"""Pilot (issue 13): the ridge head fitted on BN statistics re-estimated on the training images, seed 0."""
import sys
from pathlib import Path
sys.path.insert(0, "/work/main/benchmarks")
from suites import LITE0, V2_FASHION, V2_FLOWERS
from fastretrain import bench
name, labels = sys.argv[1], sys.argv[2:]
cfg = {"fashion": {**LITE0, **V2_FASHION}, "flowers": {**LITE0, **V2_FLOWERS}}[name]
bench.run_cells(cfg, labels, [0], Path(f"/work/pilot/{name}"))
