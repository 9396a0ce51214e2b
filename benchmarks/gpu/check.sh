#!/usr/bin/env bash
# GPU checks in one go (for a lent GPU machine with torch+CUDA and nvcc): build the native library
# with its CUDA kernels, run the CUDA tests, then the GPU benchmarks. Logs go to $OUT (or ./gpu-out).
set -uo pipefail
OUT="${OUT:-gpu-out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MPLBACKEND=Agg PYTHONPATH="$PWD"
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
start=$(date +%s)
TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" DIP_REQUIRE_NATIVE=1 \
  timeout 300 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
$PY -m dip info || exit 1
timeout 200 $PY -m pytest -q -p no:cacheprovider -m cuda tests \
  -x -rfEs 2>&1 | tee "$OUT/tests.log" | tail -25
echo "tests done: $(( $(date +%s) - start )) s"
timeout 200 $PY -m pytest -q -p no:cacheprovider benchmarks/test_bench_cuda.py -s \
  --benchmark-disable-gc --benchmark-json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" \
  | grep -v "^\s*$" | tail -40
echo "all done: $(( $(date +%s) - start )) s"
