#!/usr/bin/env bash
# The GPU measurements dwp still owes, as ONE device call (a lent H100/H200 gives a session about
# 15 minutes of device time in all and at most 10 minutes a call; see BENCHMARKS.md for the rows
# each stage fills). Stages run in order of value, each under its own time limit; a stage that
# fails or times out is logged and the next one still runs. Everything lands in $OUT (at most
# 8 files come back from the device tool, so each stage writes one file).
#
#   bash benchmarks/gpu_session.sh prepare        # here, before the call: copies MNIST, notMNIST
#                                                 # and a prior folder into .gpu/ (git-ignored)
#   device run: command "bash benchmarks/gpu_session.sh run", carry [".gpu"], timeout_s 570
#   bash benchmarks/gpu_session.sh smoke          # the same stages, tiny, on the CPU (a check of
#                                                 # this script; its numbers mean nothing)
#
# The GPU image has torch, torchvision, safetensors, typer, tqdm, rich and matplotlib, so the
# package runs from src/ without an install. PRIOR (for prepare) defaults to runs/prior-cpu3.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
mode=${1:-}

case $mode in
  prepare)
    prior=${PRIOR:-runs/prior-cpu3}
    data=${DWP_DATA_ROOT:-$ROOT/../shared/datasets}
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    rm -rf .gpu && mkdir -p .gpu/data .gpu/prior
    cp -r "$data/mnist" "$data/notmnist" .gpu/data/
    cp -rL "$prior"/. .gpu/prior/            # -L: prior folders may be symlinks
    du -sh .gpu
    exit 0 ;;
  run) dev=cuda; smoke=0 ;;
  smoke) dev=cpu; smoke=1 ;;
  *) echo "usage: $0 prepare|run|smoke" >&2; exit 2 ;;
esac

[ -d .gpu/data ] || { echo "no .gpu/data: run '$0 prepare' first (and carry .gpu)" >&2; exit 2; }
export DWP_DATA_ROOT=$ROOT/.gpu/data PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
LOG=$OUT/session.log
PY=${PYTHON:-python3}

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "== $name: rc=$rc after $((SECONDS - t0)) s" | tee -a "$LOG"
}

stage env 60 "$PY" -c "import torch, platform; print(platform.python_version(), torch.__version__,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"

if [ "$smoke" = 1 ]; then
  src=(--nets 2 --widths 8 16 --epochs 1 --train-examples 500 --threads 2)
  pri=(--n7 300 --epochs7 2 --n5 1000 --epochs5 1 --threads 2)
  grid=(--n 20 --seeds 2 --steps 3 --test-examples 200 --kernel-subsample 16 --threads 2)
  limits=(300 300 300)
else
  # 10 notMNIST source nets at the paper's widths and length (goal <= 90 s on an H100)
  src=(--nets 10 --widths 256 512 --epochs 100 --precision bf16)
  pri=()
  # one grid cell, 10 seeds batched vs one at a time, shortened (per-step times extrapolate)
  grid=(--n 50 --seeds 10 --steps 300 --kernel-subsample 512)
  limits=(230 110 170)
fi

stage source-nets "${limits[0]}" "$PY" benchmarks/source_nets.py "${src[@]}" --modes batched \
  --device "$dev" --out "$OUT/source_nets.json"
stage priors "${limits[1]}" "$PY" benchmarks/priors.py "${pri[@]}" --device "$dev" \
  --out "$OUT/priors.json"
stage bnn-grid-dwp "${limits[2]}" "$PY" benchmarks/bnn_grid.py --method dwp \
  --prior-dir .gpu/prior "${grid[@]}" --device "$dev" --out "$OUT/bnn_grid.jsonl"
echo "outputs in $OUT:"; ls -la "$OUT"
