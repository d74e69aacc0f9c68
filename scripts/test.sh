#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set up .venv, then run pytest on CPU.
set -euo pipefail
# The tests and tools read and print UTF-8 (µ, ², …) whatever the machine's locale is.
export PYTHONUTF8=1
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup_env.sh"
cd "$here"
exec "${E2MISEG_VENV:-$here/.venv}/bin/python" -m pytest Testing "$@"
