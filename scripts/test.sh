#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set up .venv, then run pytest on CPU.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup_env.sh"
cd "$here"
exec "${E2MISEG_VENV:-$here/.venv}/bin/python" -m pytest Testing "$@"
