#!/usr/bin/env bash
# Fetch, on a machine with the package registry, the wheels scripts/gpu_check.sh needs on a GPU machine that has
# PyTorch but no registry (the project's device machines): basicsr (built here: it ships no wheel), mmengine,
# diffusers and their small pure-Python dependencies, for Python 3.12 on x86-64 Linux. They go to .whl/ (ignored by
# git through .git/info/exclude); carry that folder to the GPU machine with the working tree.
#   bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
py=.venv/bin/python
plat=(--python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
$py -m pip download -q --no-deps "${plat[@]}" -d .whl mmengine==0.10.7 diffusers==0.42.1 addict termcolor yapf \
  lmdb future platformdirs
$py -m pip wheel -q --no-deps --no-build-isolation -w .whl basicsr==1.4.2 -c requirements/constraints.txt
ls -l .whl
