#!/usr/bin/env bash
# Every speed benchmark of issue 7, one after the other, on a quiet machine (nothing else running).
# Results: benchmarks/results/{inference_vs_monai,conv_roofline,precision,training_throughput}.{json,md}
# (each records the machine and whether it was quiet). About an hour with the defaults on 2 cores.
#
#   bash benchmarks/run_all.sh                 # full run
#   PAIRS=1 ITERATIONS=12 bash benchmarks/run_all.sh   # shorter
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
THREADS=${THREADS:-2}
export PYTHONUTF8=1

if pgrep -f "e2miseg[-_]train(\.cli)? fit" >/dev/null; then
    echo "warning: e2miseg-train fit is running; timings will not be representative (results are marked LOADED)" >&2
fi
"$PY" benchmarks/inference_vs_monai.py --threads "$THREADS" --pairs "${PAIRS:-3}" ${IVM_ARGS:-}
"$PY" benchmarks/conv_roofline.py --threads "$THREADS" ${ROOFLINE_ARGS:-}
# bfloat16 accuracy check and speed (skipped, with a message, on CPUs without native bfloat16)
"$PY" benchmarks/precision.py --threads "$THREADS" ${PRECISION_ARGS:-}
"$PY" benchmarks/training_throughput.py --threads "$THREADS" --iterations "${ITERATIONS:-40}" --pairs "${TRAIN_PAIRS:-2}" ${TRAIN_ARGS:-}
"$PY" benchmarks/quote_in_readme.py   # docs/benchmarks.md quotes these tables (and memory_ct's) verbatim
for name in inference_vs_monai conv_roofline precision training_throughput; do
    echo; cat "benchmarks/results/$name.md"
done
