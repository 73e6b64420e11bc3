#!/usr/bin/env bash
# The GPU suite in one device call (see docs/BENCHMARKS.md, "GPU suite"). Run from the repo root with gpu_data/
# carried (prepare it here first: python benchmarks/prepare_gpu_data.py). Results come back as one archive in $OUT.
#   BUDGET=8 bash benchmarks/gpu_run.sh      # minutes after which no new cell starts; a rerun continues
set -uo pipefail
OUT=${OUT:-/tmp/fastretrain-gpu-out}; mkdir -p "$OUT"
PY=${PY:-python3}
$PY -m pip install --no-deps --no-index -q gpu_data/wheels/*.whl 2>&1 | tail -2
export FASTRETRAIN_CACHE=${FASTRETRAIN_CACHE:-/tmp/fastretrain-cache} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"; } > "$OUT/device.txt" 2>&1
$PY benchmarks/run.py --suite gpu --budget-minutes "${BUDGET:-8}" 2>&1 | tee "$OUT/suite.log" | grep -v "^== " | tail -40
rc=${PIPESTATUS[0]}
tar czf "$OUT/suite-gpu.tar.gz" benchmarks/results/suite-gpu 2>/dev/null
echo "suite exit $rc; results in $OUT/suite-gpu.tar.gz (unpack in the repo root, then: python benchmarks/run.py --render)"
exit $rc
