#!/usr/bin/env bash
# Prepare, on a machine with internet or a package index, what benchmarks/gpu_throughput.sh needs on a GPU machine
# that has PyTorch but nothing else of ours: wheels of the missing pure-Python packages and the neighbour search
# of the baseline commit. Everything goes into .gpu/ (ignored by git), which the GPU run must carry along.
#
#   bash benchmarks/gpu_throughput_prepare.sh [BASELINE_COMMIT] [PYTHON_VERSION]
set -euo pipefail
baseline=${1:-fabe584}     # main before the pilot and the TF32 search again (issue 16's "today")
pyver=${2:-3.12}           # the GPU image's Python
cd "$(git rev-parse --show-toplevel)"
marker="made by benchmarks/gpu_throughput_prepare.sh"
if [ -e .gpu ] && ! grep -qs "$marker" .gpu/README; then
  echo ".gpu/ exists and was not made by this script; move it away first" >&2; exit 1
fi
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu/wheels && mkdir -p .gpu/wheels  # ours (marker above): one version of each wheel
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation py \
  --platform any --ignore-requires-python -d .gpu/wheels mlxtend torchid
git show "$baseline:actid/neighbors.py" > .gpu/neighbors_baseline.py
printf "%s\nbaseline %s\n" "$marker" "$baseline" > .gpu/README
ls -la .gpu .gpu/wheels
