#!/usr/bin/env bash
# The slicer-core logic tests on every slicer-core line PyPI serves (newest release of each 5.x line).
#
# Not part of .ci/run (it downloads each slicer-core wheel and takes minutes per line). Each line gets a
# small venv under .venv-matrix/<version> (gitignored) holding only slicer-core and what it pins (vtk);
# everything else (torch, SimpleITK, pytest, ...) comes from .venv through a site.addsitedir line, so
# the venv's own slicer-core and vtk come first on sys.path. Needs .venv (scripts/setup_env.sh) and PyPI.
#
#   bash scripts/slicer_matrix.sh            # every line
#   bash scripts/slicer_matrix.sh 5.12.4.0   # one release
set -euo pipefail
export PYTHONUTF8=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
main_python="${E2MISEG_VENV:-$here/.venv}/bin/python"
main_site="$("$main_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
tests=(Testing/test_slicer_logic.py Testing/test_edges_slicer.py Testing/test_edges_widget_logic.py
       Testing/test_bad_input_logic.py Testing/test_slicer_readme.py Testing/test_slicer_app_contract.py)

if [ "$#" -gt 0 ]; then
  releases=("$@")
else
  # "Available versions: 5.13.31053.0, 5.12.4.0, 5.11.0.6, ..." (newest first): keep the first of each 5.x line
  mapfile -t releases < <("$main_python" -m pip index versions slicer-core 2>/dev/null \
    | sed -n 's/^Available versions: //p' | tr ',' '\n' | tr -d ' ' | awk -F. '!seen[$1"."$2]++')
fi
[ "${#releases[@]}" -gt 0 ] || { echo "no slicer-core releases found (is PyPI reachable?)" >&2; exit 1; }

status=0
summary=()
for release in "${releases[@]}"; do
  venv="$here/.venv-matrix/$release"
  if [ ! -x "$venv/bin/python" ]; then
    "$main_python" -m venv "$venv"
    venv_site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "import site; site.addsitedir('$main_site')" > "$venv_site/zz_e2miseg_main_venv.pth"
    # (grep drops the notes about local index folders some machines configure; errors still show)
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-warn-conflicts "slicer-core==$release" \
      2> >(grep -v "^WARNING: Location" >&2)
  fi
  got="$("$venv/bin/python" -c 'import importlib.metadata as m, slicer, vtk; print(m.version("slicer-core"), "vtk", vtk.vtkVersion.GetVTKVersion(), slicer.__file__)')"
  echo "== slicer-core $release: $got"
  set +e
  "$venv/bin/python" -m pytest "${tests[@]}" -q -p no:cacheprovider > "$venv/pytest.log" 2>&1
  code=$?
  set -e
  tail -n 3 "$venv/pytest.log"
  summary+=("slicer-core $release: $(tail -n 1 "$venv/pytest.log")")
  [ "$code" -eq 0 ] || status=1
done
printf '%s\n' "== summary" "${summary[@]}"
exit $status
