#!/usr/bin/env bash
# One call on a CUDA machine without ffcv or network: install fastsat (no deps, offline; captum
# from .whl/ if carried), then the sections named in SECTIONS (default: all), each under a timeout:
#   tests      the tests that need no ffcv
#   kernel     the SAT kernel (with a BLOCK sweep)
#   throughput training steps on synthetic batches
#   saliency   teacher saliency
#   epoch      whole epochs from a 50,000-sample CIFAR-size beton written here without ffcv
#              (write_beton's direct writer), resident loader, every method; then standard and SAT
#              with float32, torch.compile and batch 1024
#   fm         python -m fastsat.reproduce --budget full on Fashion-MNIST, from the official files
#              carried in data/fashion-mnist (copy /usr/share/datasets/fashion-mnist there)
# Needs torch, triton, timm, numba, matplotlib, pytest; not ffcv.
# Usage: [SECTIONS="epoch fm"] bash bench/gpu_check.sh OUT_DIR
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
sections=" ${SECTIONS:-tests kernel throughput saliency epoch fm} "
want() { [[ "$sections" == *" $1 "* ]]; }
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $py -c "import torch, triton, timm, numba, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__, 'numba', numba.__version__, 'numpy', numpy.__version__)"
  if ls .whl/*.whl >/dev/null 2>&1; then
    $py -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  fi
  $py -m pip install -q --no-deps --no-build-isolation --no-index -e . || exit 1
  want tests && echo "== tests (CUDA)" && timeout 150 $py -m pytest -q -p no:cacheprovider tests/test_bits.py tests/test_kernel.py tests/test_models.py tests/test_methods.py 2>&1 | tail -15
  want kernel && echo "== kernel benchmark" && timeout 90 $py bench/kernel.py --device cuda --blocks 512,1024,2048,4096 --out "$out"
  want throughput && echo "== throughput benchmark" && timeout 240 $py bench/throughput.py --device cuda --skip-loader --out "$out"
  want saliency && echo "== teacher saliency benchmark" && timeout 120 $py bench/saliency.py --device cuda --out "$out"
  if want epoch; then
    echo "== whole epochs, resident loader, ResNet-18, 50,000 samples"
    ep="$py bench/epoch.py --loaders resident --model resnet18 --device cuda --epochs 2 --beton /tmp/epoch50k.beton"
    timeout 300 $ep --out "$out/epoch" --batch-size 512
    timeout 60 $ep --out "$out/epoch_fp32" --batch-size 512 --methods standard,sat --no-amp
    timeout 90 $ep --out "$out/epoch_compile" --batch-size 512 --methods standard,sat --compile
    timeout 60 $ep --out "$out/epoch_b1024" --batch-size 1024 --methods standard,sat
  fi
  if want fm; then
    echo "== Fashion-MNIST reproduction (budget full)"
    timeout 420 $py -m fastsat.reproduce --dataset fashion-mnist --root data/fashion-mnist --budget full \
      --device cuda --out "$out/fm"
    rm -rf "$out"/fm/data "$out"/fm/*/*/checkpoint.pt  # results only travel back
  fi
} 2>&1 | tee "$out/gpu_check.log"
