#!/usr/bin/env bash
# The main job on a fresh machine: install into .venv, then segment the bundled hippocampus sample
# with the bundled E2MISeg checkpoint, writing a Slicer segmentation and a PNG overlay preview.
set -euo pipefail
# The tests and tools read and print UTF-8 (µ, ², …) whatever the machine's locale is.
export PYTHONUTF8=1
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup_env.sh"
out="${1:-$here/out/demo}"
mkdir -p "$out"
"${E2MISEG_VENV:-$here/.venv}/bin/e2miseg" predict \
  "$here/E2MISegModule/Resources/SampleData/hippocampus_008.nii.gz" \
  --model e2miseg-hippocampus --device auto \
  -o "$out/hippocampus_008.seg.nrrd" --preview "$out/hippocampus_008.png"
echo "Open $out/hippocampus_008.seg.nrrd in 3D Slicer with the image to edit it."
