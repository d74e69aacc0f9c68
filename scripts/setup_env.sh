#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the engine, the training
# package and the test tools. Idempotent: a second run installs nothing new.
set -euo pipefail
# The tests and tools read and print UTF-8 (µ, ², …) whatever the machine's locale is.
export PYTHONUTF8=1
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${E2MISEG_VENV:-$here/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
pip() { "$venv/bin/python" -m pip "$@"; }
# Torch first and pinned: an unpinned torch pulls a multi-GB CUDA build on Linux.
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  pip install -q "torch==2.13.0"
fi
stamp="$venv/.e2miseg-installed"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ] || [ "$here/training/pyproject.toml" -nt "$stamp" ]; then
  pip install -q -e "$here[test]"
  if [ -f "$here/training/pyproject.toml" ]; then pip install -q -e "$here/training"; fi
  touch "$stamp"
fi
