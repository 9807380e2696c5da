#!/usr/bin/env bash
# The GPU measurements dwp still owes, as ONE device call (a lent H100/H200 gives a session about
# 15 minutes of device time in all and at most 10 minutes a call; see BENCHMARKS.md for the rows
# each stage fills). Stages run in order of value under one overall budget (BUDGET seconds,
# default 530); each stage also has its own limit, cut to what the budget has left, and a stage
# that fails or times out is logged while the next one still runs. At most 8 files come back
# from the device tool, so each stage writes one file (run folders travel as tar files).
#
#   bash benchmarks/gpu_session.sh prepare        # here, before the call: copies MNIST, notMNIST
#                                                 # and a prior folder into .gpu/ (git-ignored)
#   device run: command "bash benchmarks/gpu_session.sh run", carry [".gpu"], timeout_s 560
#   bash benchmarks/gpu_session.sh smoke          # the same stages, tiny, on the CPU (a check of
#                                                 # this script; its numbers mean nothing)
#
# Stages (run): 1. 10 notMNIST source nets, paper widths and length, bf16 (issue 4: <= 90 s);
# 2. their kernel sets (collect-kernels); 3. the paper's VAE priors on those kernels (300
# epochs; conv2 on 20,000 kernels); 4. one classification-grid cell, 10 seeds batched vs one at a
# time (issue 6 speed); 5. 100 source nets for 2 epochs (to extrapolate the 100-net run); 6. 10
# nets batched vs one at a time, 2 epochs (the ratio); 7. with the time left, more source nets
# (seed 1) and their kernels.
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
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT" "$WORK"
LOG=$OUT/session.log
PY=${PYTHON:-python3}
DWP=("$PY" -m dwp)
BUDGET=${BUDGET:-530}
T0=$SECONDS

left() { echo $((BUDGET - (SECONDS - T0))); }

stage() {  # stage NAME SECONDS COMMAND...: run under min(SECONDS, budget left - 5)
  local name=$1 limit=$2; shift 2
  local avail=$(( $(left) - 5 ))
  (( avail < limit )) && limit=$avail
  if (( limit < 10 )); then echo "== $name: skipped (budget spent)" | tee -a "$LOG"; return 1; fi
  local t0=$SECONDS
  echo "== $name (limit ${limit}s, at $((SECONDS - T0)) s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "== $name: rc=$rc after $((SECONDS - t0)) s" | tee -a "$LOG"
  return $rc
}

pack() {  # pack TAR DIR...: tar run folders (no net weights, no checkpoints) into $OUT
  local tarfile=$1; shift
  tar -cf "$OUT/$tarfile" --exclude='nets.safetensors' --exclude='checkpoint.safetensors' \
    -C "$WORK" "$@" >> "$LOG" 2>&1 && ls -la "$OUT/$tarfile" >> "$LOG"
}

stage env 60 bash -c "nvidia-smi -L 2>/dev/null; $PY -c \"import torch, platform; \
print(platform.python_version(), torch.__version__, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')\""

if [ "$smoke" = 1 ]; then
  src=(--nets 2 --widths 8 16 --epochs 2 --train-examples 500)
  cap=(--cap 2000)
  vae1=(--epochs 2); vae2=(--epochs 2 --max-train-kernels 500)
  grid=(--n 20 --seeds 2 --steps 3 --test-examples 200 --kernel-subsample 16 --threads 2)
  scale=(--nets 4 --widths 8 16 --epochs 1 --train-examples 500 --threads 2)
  ratio=(--nets 2 --widths 8 16 --epochs 1 --train-examples 500 --threads 2)
  limits=(120 60 120 120 60 60); per_net_extra=5
else
  src=(--nets 10 --widths 256 512 --epochs 100)
  cap=(--cap 60000)     # 60k train + 60k test 5x5 kernels: ~12 MB, under the 16 MiB per file
  vae1=(); vae2=(--max-train-kernels 20000)
  grid=(--n 50 --seeds 10 --steps 200 --kernel-subsample 512)
  scale=(--nets 100 --widths 256 512 --epochs 2)
  ratio=(--nets 10 --widths 256 512 --epochs 2)
  limits=(170 40 150 130 80 80); per_net_extra=0
fi
common=(--device "$dev" --precision bf16 --no-progress)
iwae=(--iwae-k 1,100 --iwae-max-kernels 500 --device "$dev" --no-progress)

# 1-2. ten source nets and their kernels
t_src=$SECONDS
stage source10 "${limits[0]}" "${DWP[@]}" train-source "${src[@]}" "${common[@]}" \
  --checkpoint-every 1000 --out "$WORK/src10"
src_s=$((SECONDS - t_src))
stage kernels10 "${limits[1]}" "${DWP[@]}" collect-kernels "$WORK/src10" "${cap[@]}" \
  --out "$WORK/kernels-src10"
pack src10.tar src10 kernels-src10

# 3. the paper's VAE priors on them (conv1 and conv2 side by side, one shell command)
k10=$WORK/kernels-src10
prior1=$(printf '%q ' "${DWP[@]}" train-prior "$k10/conv1.safetensors" "${vae1[@]}" "${iwae[@]}" \
  --out "$WORK/prior-src10-conv1")
prior2=$(printf '%q ' "${DWP[@]}" train-prior "$k10/conv2.safetensors" "${vae2[@]}" "${iwae[@]}" \
  --out "$WORK/prior-src10-conv2")
stage priors10 "${limits[2]}" bash -c "$prior1 & p=\$!; $prior2; rc=\$?; wait \$p || rc=1; exit \$rc"
pack prior-src10.tar prior-src10-conv1 prior-src10-conv2

# 4. one grid cell: 10 seeds batched vs one at a time
stage bnn-grid "${limits[3]}" "$PY" benchmarks/bnn_grid.py --method dwp --prior-dir .gpu/prior \
  "${grid[@]}" --device "$dev" --out "$OUT/bnn_grid.jsonl"

# 5-6. 100 nets (2 epochs), and batched vs one at a time
stage source100x2 "${limits[4]}" "$PY" benchmarks/source_nets.py "${scale[@]}" --modes batched \
  --precision bf16 --device "$dev" --out "$OUT/source_nets_100x2.json"
stage source-ratio "${limits[5]}" "$PY" benchmarks/source_nets.py "${ratio[@]}" \
  --modes batched sequential --precision bf16 --device "$dev" --out "$OUT/source_nets_ratio.json"

# 7. more source nets with what is left: size the run from stage 1's time per net
per_net=$(( per_net_extra > 0 ? per_net_extra : (src_s + 9) / 10 ))
extra=$(( ($(left) - 45) * 8 / 10 / (per_net > 0 ? per_net : 1) ))
(( extra > 90 )) && extra=90
if (( extra >= 5 )); then
  if [ "$smoke" = 1 ]; then extra_src=(--nets 2 --widths 8 16 --epochs 2 --train-examples 500)
  else extra_src=(--nets "$extra" --widths 256 512 --epochs 100); fi
  stage source-extra $(( $(left) - 30 )) "${DWP[@]}" train-source "${extra_src[@]}" --seed 1 \
    "${common[@]}" --checkpoint-every 1000 --out "$WORK/src-extra" &&
  stage kernels-extra 25 "${DWP[@]}" collect-kernels "$WORK/src-extra" "${cap[@]}" \
    --out "$WORK/kernels-src-extra" &&
  pack src-extra.tar src-extra kernels-src-extra
else
  echo "== source-extra: skipped ($(left) s left, ${per_net} s per net)" | tee -a "$LOG"
fi
echo "outputs in $OUT after $((SECONDS - T0)) s:" | tee -a "$LOG"; ls -la "$OUT" | tee -a "$LOG"
