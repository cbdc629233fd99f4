#!/usr/bin/env bash
# README quick start, command 1: set up .venv (scripts/setup_env.sh), then run the main job (scripts/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python scripts/demo.py "$@"
