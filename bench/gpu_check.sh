#!/usr/bin/env bash
# One call on a CUDA machine: install fastsat (no deps, offline; captum from .whl/ if carried),
# run the tests that need no ffcv, then the kernel (with a BLOCK sweep), throughput and teacher
# saliency benchmarks. Needs torch, triton, timm, numba, matplotlib, pytest; not ffcv (synthetic
# batches). Usage: bash bench/gpu_check.sh OUT_DIR
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $py -c "import torch, triton, timm, numba, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__, 'numba', numba.__version__, 'numpy', numpy.__version__)"
  if ls .whl/*.whl >/dev/null 2>&1; then
    $py -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  fi
  $py -m pip install -q --no-deps --no-build-isolation --no-index -e . || exit 1
  echo "== tests (CUDA)"
  timeout 150 $py -m pytest -q -p no:cacheprovider tests/test_bits.py tests/test_kernel.py tests/test_models.py tests/test_methods.py 2>&1 | tail -15
  echo "== kernel benchmark"
  timeout 90 $py bench/kernel.py --device cuda --blocks 512,1024,2048,4096 --out "$out"
  echo "== throughput benchmark"
  timeout 240 $py bench/throughput.py --device cuda --skip-loader --out "$out"
  echo "== teacher saliency benchmark"
  timeout 120 $py bench/saliency.py --device cuda --out "$out"
} 2>&1 | tee "$out/gpu_check.log"
