#!/usr/bin/env bash
# Issue 16's table on one GPU, in one go (about 6-8 minutes on an H100/H200). Run from the repository root after
# benchmarks/gpu_throughput_prepare.sh, with .gpu/ present (carried to the GPU machine):
#
#   bash benchmarks/gpu_throughput.sh [OUTDIR]
#
# Rows: 1. the grokking paper grid, separate processes vs one batched model (1,000 steps of the 16 runs);
#       2-3. a ResNet-18 epoch (actid's loop before/after the CUDA layout, bare step eager/compiled) and one
#       evaluation with the 6 layers' TwoNN on 10,000 images, against the baseline neighbour search;
#       4. TwoNN, actid vs torchid, at n x D = 20k/100k x 512/4096.
set -uo pipefail
out=${1:-${OUT:-/tmp}}
mkdir -p "$out"
pip_target=/tmp/gpu_site
python3 -m pip install -q --no-index --no-deps --no-compile --ignore-requires-python --target "$pip_target" .gpu/wheels/*.whl || exit 1
export PYTHONPATH="$PWD:$pip_target" TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
run() {  # name, timeout in seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  local start=$(date +%s)
  timeout "$limit" "$@" > "$out/$name.md" 2> "$out/$name.err"
  echo "rc $? in $(( $(date +%s) - start )) s"; cat "$out/$name.md"; tail -3 "$out/$name.err"
}
run resnet 300 python3 benchmarks/bench_resnet.py --device cuda --width 64 --train-images 50000 --val-images 10000 \
  --amp --compile --steps 100 --pretrain-steps 200 --baseline-neighbors .gpu/neighbors_baseline.py
run id 120 python3 benchmarks/bench_id.py --device cuda --no-skdim --torchid --n 20000 100000 --D 512 4096
run batched 240 python3 benchmarks/bench_batched.py --profile paper --device cuda --jobs 16 --steps 1000 --repeats 1
