#!/usr/bin/env bash
# GPU check, for a machine with CUDA (never CI): about 8 minutes on one H100 / H200. Fails loudly: every step runs in
# its own process under its own time limit, its exit status is collected, a one-screen summary is printed at the end
# and the script exits non-zero if any step failed. Steps (scripts/gpu_bench.py has the details):
#   device   torch, CUDA, the device, Python, the commit
#   wheels   .whl/ (made by scripts/gpu_wheels.sh where the registry is reachable): the expected wheels exist, install
#            with pip --no-index --no-deps --target into an empty folder and import from it next to the machine's
#            own torch; that folder then goes first on PYTHONPATH for the other steps
#   tests    the cuda-marked tests (tests/test_models/test_cuda.py); on a GPU none may be skipped
#   idc      IDC batched step, SwinIR-M x4 (idc_div2k.yml, random weights), K = 1, 4, 8, 32, 64 (out of memory
#            is recorded), and K = 8 with bf16
#   gsdd     GSDD steps, the paper's RRDBNet x4 generator, IPC 8 and 100 chunked (memory flat in IPC; IPC 100 bf16)
#   minimax  one Minimax-SR stage-2 step on DiT-XL/2 at 512 px (64x64x4 latents) with the SD-VAE architecture, and
#            50 DDIM sampling steps (amp off and bf16)
#   imdn     the bundled IMDN checkpoint on Set5, on CUDA and on the CPU: the same PSNR within 0.01 dB
#   report   gpu_check.json and gpu_check.md (figures, the paper-scale projection from the measured step times)
# Figures go to $OUT (the device tool's result folder) or, when it is unset, a new folder under ${TMPDIR:-/tmp}.
#
#   bash scripts/gpu_check.sh [--cpu-smoke] [--out DIR]
#   --cpu-smoke: the same steps and code paths on the CPU at tiny sizes (about 2.5 minutes on 2 shared CPU cores,
#                mostly Python start-ups importing torch, diffusers and BasicSR; the test suite runs it,
#                tests/test_misc/test_gpu_check.py); the wheel step also checks a wheel of this package built here.
# On a GPU machine without a registry: copy the working tree with .whl/ and run it under a 540 s limit.
# GPU_CHECK_STEPS="idc gsdd" runs only the steps named; GPU_CHECK_BREAK=<step> makes that step fail (tests);
# GPU_CHECK_BUDGET: seconds for all steps (480 on a GPU: each step gets at most what is left).
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
out="${OUT:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) smoke=1 ;;
    --out) out="$2"; shift ;;
    *) echo "[gpu_check] unknown argument $1 (use --cpu-smoke and / or --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$out" ] || out="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
mkdir -p "$out"

if [ "$smoke" = 1 ]; then
  python="${PYTHON:-.venv/bin/python}"
  [ -x "$python" ] || python=python3
  flags=(--cpu-smoke)
else
  python="${PYTHON:-python3}"  # the GPU machine's own python with its CUDA torch
  flags=()
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
steps=(device wheels tests idc gsdd minimax imdn)
[ -z "${GPU_CHECK_STEPS:-}" ] || read -r -a steps <<< "${GPU_CHECK_STEPS// report/}"
# Seconds per step: the GPU run's budget (about 8 minutes in all); on a (possibly shared) CPU, 300 each.
declare -A limits=([device]=60 [wheels]=120 [tests]=240 [idc]=150 [gsdd]=120 [minimax]=150 [imdn]=60)
if [ "$smoke" = 1 ]; then for step in "${!limits[@]}"; do limits[$step]=300; done; fi
budget="${GPU_CHECK_BUDGET:-480}"  # seconds for all steps (GPU run); a step gets at most what is left, less 15 s
[ "$smoke" = 0 ] || budget="${GPU_CHECK_BUDGET:-3600}"

statuses=()
failed=0
for step in "${steps[@]}"; do
  [ "$step" = report ] && continue
  echo "[gpu_check] step $step"
  site=()
  if [ "$step" = wheels ] && [ "$smoke" = 0 ]; then
    sitedir="$(mktemp -d /tmp/gpu_check_site.XXXXXX)"  # empty: the wheels go here, then first on PYTHONPATH
    site=(--site "$sitedir")
  fi
  rc=0
  left=$((budget - SECONDS - 15))
  lim="${limits[$step]:-300}"
  [ "$left" -ge "$lim" ] || lim="$left"
  if [ "$lim" -lt 20 ]; then
    echo "[gpu_check] step $step: not run, the ${budget} s budget is spent" | tee "$out/step_$step.log"
    failed=1
    statuses+=("$step=125")
    continue
  fi
  # set -e must not stop the loop: the status is what is collected.
  timeout "$lim" "$python" scripts/gpu_bench.py "$step" --out "$out" "${flags[@]}" \
    "${site[@]}" 2>&1 | tee "$out/step_$step.log" || rc=$?
  if [ "$rc" = 0 ] && [ "$step" = wheels ] && [ "$smoke" = 0 ]; then
    export PYTHONPATH="$sitedir:$PYTHONPATH"
  fi
  [ "$rc" = 124 ] && echo "[gpu_check] step $step: timed out after $lim s" | tee -a "$out/step_$step.log"
  [ "$rc" = 0 ] || failed=1
  statuses+=("$step=$rc")
done

rc=0
"$python" scripts/gpu_bench.py report --out "$out" "${flags[@]}" --status "${statuses[@]}" || rc=$?
if [ "$failed" != 0 ] || [ "$rc" != 0 ]; then
  echo "[gpu_check] FAILED: ${statuses[*]} (report exit $rc); logs and figures in $out" >&2
  exit 1
fi
echo "[gpu_check] passed: ${statuses[*]}; figures in $out"
