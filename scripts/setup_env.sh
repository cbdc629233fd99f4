#!/usr/bin/env bash
# Create (or update) the virtual environment .venv with everything basicsr_distill needs, offline-safe:
#   1. torch==2.13.0 first (the CPU build on disk; any unpinned torch would pull several GB of CUDA packages),
#   2. basicsr==1.4.2 from source with --no-build-isolation (so that it builds against the torch above),
#   3. this package in editable mode with its test extras.
# Every pip call carries requirements/constraints.txt. Re-running is cheap: a stamp skips finished installs.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
CONSTRAINTS=requirements/constraints.txt

pip_q() {  # quiet pip that hides the harmless "Location ... is ignored" notes of this machine's pip config
  "$VENV/bin/pip" install -q --disable-pip-version-check -c "$CONSTRAINTS" "$@" 2> >(grep -v 'is ignored: it is neither' >&2)
}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.basicsr_distill_stamp"
want=$(cat setup.py "$CONSTRAINTS" scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "[setup] installing into $VENV (torch 2.13.0 CPU, basicsr 1.4.2, basicsr_distill) ..."
  pip_q torch==2.13.0
  pip_q --no-build-isolation basicsr==1.4.2
  pip_q -e '.[test]'
  echo "$want" > "$stamp"
fi
"$VENV/bin/python" -c "import basicsr_distill, basicsr, torch; print('[setup] ok: torch', torch.__version__, \
'| basicsr', basicsr.__version__, '| basicsr_distill', basicsr_distill.__version__)"
