#!/usr/bin/env bash
# GPU check, for a machine with CUDA (never CI): at most about 8 minutes.
#   (a) the tests marked cuda (IDC, GSDD and Minimax-SR steps and short distillations on CUDA, device placement,
#       generators, batched IDC equal to one instance per step, CPU and CUDA sets equal in float64);
#   (b) the batched IDC step benchmark on SwinIR-M x4 as in options/distill/idc_div2k.yml (random weights: timing
#       only), LR patches 64x64, about 15 per instance, for K = 1, 8, 32, 64 instances per step: instance-iterations
#       per second, GPU memory, the teacher's share and TFLOP/s, and the projected wall time of the paper-scale run
#       (800 images x 20,000 iterations).
# Run from the repository root: bash scripts/gpu_check.sh [OUT_DIR]   (figures go to OUT_DIR, default $OUT or /tmp)
# With the device tool: run(command='bash scripts/gpu_check.sh', carry=['.whl'], timeout_s=540).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp}}"
mkdir -p "$out"
# The GPU machine's own python (its CUDA torch); the project's pure-Python dependencies come from .whl/ (made by
# scripts/gpu_wheels.sh where the registry is reachable; carry .whl with the working tree), installed to /tmp/site.
python=python3
if [ -d .whl ] && ! $python -c 'import basicsr, diffusers, mmengine' 2>/dev/null; then
  echo "[gpu_check] installing .whl/*.whl to /tmp/site (the machine's torch kept)"
  $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
$python - <<'PY' | tee "$out/gpu_device.txt"
import torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('device', p.name, f'{p.total_memory / 2**30:.0f} GiB', 'sm', f'{p.major}.{p.minor}', 'SMs', p.multi_processor_count)
PY
echo "[gpu_check] (a) tests marked cuda"
timeout 240 $python -m pytest -q -rs -m cuda tests 2>&1 | tee "$out/gpu_tests.txt" | tail -15
echo "[gpu_check] (b) IDC batched step, SwinIR-M x4 (idc_div2k.yml), random weights"
timeout 300 $python scripts/profile/benchmark_idc_batch.py -opt options/distill/idc_div2k.yml --random-weights \
  --dataroot datasets/demo/train_hr --gt-size 256 --stride 16 --ratio 0.2 --ks 1 8 32 64 --repeats 10 \
  --paper-iters 800 20000 --json "$out/gpu_idc_batch.json" 2>&1 | tee "$out/gpu_idc_batch.txt"
echo "[gpu_check] done: $out"
