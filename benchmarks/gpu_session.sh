#!/usr/bin/env bash
# The GPU measurements dwp still owes, as ONE device call (a lent H100/H200 gives a session about
# 15 minutes of device time in all and at most 10 minutes a call; see BENCHMARKS.md for the rows
# each stage fills). Stages run in order of value under one overall budget (BUDGET seconds,
# default 530); each stage also has its own limit, cut to what the budget has left, and a stage
# that fails or times out is logged while the next one still runs. At most 8 files come back
# from the device tool, so each stage writes one file (run folders travel as tar files).
#
#   bash benchmarks/gpu_session.sh prepare        # here, before the call: copies MNIST and
#                                                 # notMNIST into .gpu/ (git-ignored)
#   device run: command "bash benchmarks/gpu_session.sh run", carry [".gpu"], timeout_s 560
#   bash benchmarks/gpu_session.sh smoke          # the same stages, tiny, on the CPU (a check of
#                                                 # this script; its numbers mean nothing)
#
# Stages (run), in order of value. The H200 session (2026-11-27) and the H100 session
# (2026-11-28) measured source nets, their kernels, profiles, VAE speed and 200-step grid cells
# (BENCHMARKS.md "First GPU session", "Second GPU session"); the default order does what they
# left open:
#  1. graph: the like-for-like CUDA-graph check (bnn_graph_check.py);
#  2. impl: 10 nets x 2 epochs batched (mixed, native) and one at a time (mixed); the fastest
#     batched implementation is used from then on and its epoch time sizes the source runs;
#  3. src10x100: issue 4's row, 10 paper-width nets x 100 epochs, and their kernel sets, when
#     projected to fit;
#  4. bnnconv: a 10-seed dwp cell (200 steps, CUDA graph) with the BNN's one-channel conv1 as
#     im2col (mixed, the default since stop 23) and as grouped F.conv2d (native);
#  5. detgrid: the deterministic baseline's 10 seeds x 4 weight decays trained together (since
#     stop 23) vs its single runs (200 steps);
#  6. src100x2: 100 nets x 2 epochs;
#  7. gridfull: 10-seed dwp and deterministic cells at paper length (N = 50, 10,000 steps) and
#     N = 1000 cells (dwp, sn, det; 500 steps), CUDA-graph replay: the measured basis for the
#     whole grid's time; then the sn and det N = 1000 cells with the data term in bf16;
#  7b. sizes: the sn cells of N = 50, 100, 200 (10 seeds, 500 steps) in one padded training,
#     then one training per size (what --batch-sizes-up-to saves);
#  8. profile: a plain net and 10 batched nets (mixed) with dwp's pool-first feature stack and
#     with the paper's LeakyReLU-then-pool order (stop 27), in interleaved rounds, and the
#     profiler table of the mixed step;
#  9. priors (VAE training speed); 10. series: with the time left, the next slice of the
#     100-net paper-width series (issue 4's 100-net run, split across sessions: nets
#     SERIES_FIRST.., default 0, as many as fit or SERIES_NETS) and its kernel sets; a session
#     that continues the series sets SERIES_FIRST to the next index (STAGES=series PER_NET=10
#     alone runs only that), and 'dwp merge-kernels' joins the kernel sets here.
#
# STAGES="impl src10x100 graph" runs only those stages, in that order (names: impl src10x100
# src100x2 graph bnnconv detgrid grid gridfull sizes profile priors series; default: graph impl
# src10x100 bnnconv detgrid src100x2 gridfull sizes profile priors series); MAX10=SECONDS caps the
# projected time of the 10 x 100-epoch row; IMPL_MODES sets the source_nets.py modes of the
# impl stage; PROFILE_ARGS replaces the profile stage's variant and round arguments to
# profile_source_step.py.
#
# The GPU image has torch, torchvision, safetensors, typer, tqdm, rich and matplotlib, so the
# package runs from src/ without an install. No stage needs a trained prior (the dwp timing uses
# untrained VAEs of the same size); PRIOR=folder makes prepare copy one to .gpu/prior anyway.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
mode=${1:-}

case $mode in
  prepare)
    data=${DWP_DATA_ROOT:-$ROOT/../shared/datasets}
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    rm -rf .gpu && mkdir -p .gpu/data
    cp -r "$data/mnist" "$data/notmnist" .gpu/data/
    if [ -n "${PRIOR:-}" ]; then             # optional: a trained prior folder to take along
      mkdir -p .gpu/prior && cp -rL "$PRIOR"/. .gpu/prior/   # -L: it may hold symlinks
    fi
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
    -C "$WORK" "$@" >> "$LOG" 2>&1
  if (( $(stat -c %s "$OUT/$tarfile") > 16000000 )); then  # over the 16 MiB a file may bring back
    echo "== $tarfile over 16 MB: packed again without the 5x5 kernel tensors" | tee -a "$LOG"
    tar -cf "$OUT/$tarfile" --exclude='nets.safetensors' --exclude='checkpoint.safetensors' \
      --exclude='conv2.safetensors' -C "$WORK" "$@" >> "$LOG" 2>&1
  fi
  ls -la "$OUT/$tarfile" >> "$LOG"
}

stage env 60 bash -c "nvidia-smi -L 2>/dev/null; $PY -c \"import torch, platform; \
print(platform.python_version(), torch.__version__, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')\""

if [ "$smoke" = 1 ]; then
  prof=(--widths 8 16 --nets 2 --batch 16 --steps 2 --warmup 1)
  scale=(--nets 4 --widths 8 16 --epochs 1 --train-examples 500 --threads 2)
  impl_cmp=(--nets 2 --widths 8 16 --epochs 1 --train-examples 500 --threads 2)
  grid=(--n 20 --seeds 2 --steps 5 --test-examples 200 --threads 2)
  cell50=(--n 20 --seeds 2 --steps 10 --test-examples 200 --threads 2)
  cell1000=(--n 40 --seeds 2 --steps 5 --test-examples 200 --threads 2)
  small=(--seeds 2 --steps 5 --test-examples 200 --threads 2); small_n=(20 40)
  pri=(--n7 300 --epochs7 2 --n5 1000 --epochs5 1 --threads 2)
  src_args=(--nets 2 --widths 8 16 --epochs 2 --train-examples 500)
  cap=(--cap 2000); limits=(120 60 60 60); per_net=5; full_epochs=2; max10=${MAX10:-100}
else
  prof=(--nets 10 ${PROFILE_ARGS:---variants plain-bf16 plain-bf16-paperorder mixed-bf16-10 \
    mixed-bf16-10-paperorder --repeats 3 --profile-impls mixed})
  scale=(--nets 100 --widths 256 512 --epochs 2)
  impl_cmp=(--nets 10 --widths 256 512 --epochs 2)
  grid=(--n 50 --seeds 10 --steps 200)
  cell50=(--n 50 --seeds 10 --steps 10000)
  cell1000=(--n 1000 --seeds 10 --steps 500)
  small=(--seeds 10 --steps 500); small_n=(50 100 200)
  pri=(--epochs5 10)
  src_args=(--widths 256 512 --epochs 100)
  # 40k train + 40k test 5x5 kernels (8 MB) + all 7x7 kernels of up to 90 nets (4.5 MB) + net
  # indices: under the 16 MiB a file may bring back
  cap=(--cap 40000)
  limits=(60 100 80 100); full_epochs=100
  per_net=${PER_NET:-23}  # fallback; H200 2026-11-27: 10 nets x 100 epochs took 223 s (H100
                         # 2026-11-28 with mixed: 95 s, so PER_NET=10 there)
  max10=${MAX10:-150}  # run the 10-net x 100-epoch row only if projected to take <= this
fi

# seconds per net for FULL_EPOCHS epochs of an implementation, from the fastest (autotuned)
# epoch of a source_nets JSON: per_net_from JSON MODE
per_net_from() {
  "$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); m = sys.argv[2]; \
c = r['config']; x = [v for v in r['results'] if v['mode'] == m][0]; \
e = x.get('epoch_s') or [x['wall_s'] / c['epochs']]; \
print(max(1, round(min(e) / c['nets'] * $full_epochs)))" "$1" "$2" 2>/dev/null
}
# the implementation whose fastest epoch was fastest: native, mixed or unfold
fastest_impl() {
  "$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); \
t = {v['mode']: min(v.get('epoch_s') or [v['wall_s']]) for v in r['results'] \
if v['mode'].startswith('batched')}; \
m = min(t, key=t.get); print(m.split('-', 1)[1] if '-' in m else 'native')" "$1" 2>/dev/null
}

source_run() {  # source_run NAME NETS SEED [FIRST]: train-source + collect-kernels + pack
  local name=$1 nets=$2 seed=$3 first=${4:-0} args=("${src_args[@]}")
  [ "$smoke" = 1 ] || args+=(--nets "$nets")
  stage "source-$name" $(( per_net * nets * 13 / 10 + 40 )) "${DWP[@]}" train-source \
    "${args[@]}" --seed "$seed" --first-net "$first" --device "$dev" --precision bf16 \
    --conv-impl "$impl" \
    --no-progress --checkpoint-every 1000 --out "$WORK/src-$name" &&
  stage "kernels-$name" 40 "${DWP[@]}" collect-kernels "$WORK/src-$name" "${cap[@]}" \
    --out "$WORK/kernels-src-$name" &&
  pack "src-$name.tar" "src-$name" "kernels-src-$name"
}

impl=${IMPL:-auto}; mode_of_impl=batched  # auto: mixed on CUDA (fastest on the H100, 2026-11-28)
stage_impl() {  # 10 nets x 2 epochs, each implementation (and one at a time: the ratio issue 4
  # asks for); the fastest batched one is used from then on
  stage source10-impl 120 "$PY" benchmarks/source_nets.py "${impl_cmp[@]}" \
    --modes ${IMPL_MODES:-batched-mixed sequential-mixed batched} --precision bf16 --device "$dev" \
    --out "$OUT/source_nets_10x2_impl.json"
  impl=$(fastest_impl "$OUT/source_nets_10x2_impl.json" || echo native)
  [ -n "$impl" ] || impl=native
  mode_of_impl=batched; [ "$impl" = native ] || mode_of_impl=batched-$impl
  per_net=$(per_net_from "$OUT/source_nets_10x2_impl.json" "$mode_of_impl" || echo "$per_net")
  echo "== convolution implementation from here on: $impl (~${per_net} s per net for" \
    "$full_epochs epochs)" | tee -a "$LOG"
}
stage_src10x100() {  # issue 4's row, when its projected time is affordable
  if (( per_net * 10 <= max10 )); then
    source_run 10x100 10 3
  else
    echo "== source-10x100: skipped (projected $((per_net * 10)) s > ${max10} s)" | tee -a "$LOG"
  fi
}
stage_src100x2() {
  stage source100x2 "${limits[1]}" "$PY" benchmarks/source_nets.py "${scale[@]}" \
    --modes "$mode_of_impl" --precision bf16 --device "$dev" --out "$OUT/source_nets_100x2.json"
}
stage_graph() { stage bnn-graph-check 60 "$PY" benchmarks/bnn_graph_check.py; }
stage_grid() {
  local method extra_grid
  for method in dwp sn; do
    extra_grid=(); [ $method = dwp ] && extra_grid=(--untrained-dwp --kernel-subsample 512)
    stage "bnn-grid-$method" "${limits[2]}" "$PY" benchmarks/bnn_grid.py --method $method \
      "${extra_grid[@]}" "${grid[@]}" --sides batched batched_graph --device "$dev" \
      --out "$OUT/bnn_grid.jsonl"
  done
}
stage_bnnconv() {  # the BNN's one-channel conv1 as im2col (mixed, the default since stop 23)
  # against grouped F.conv2d (native) under vmap: a 10-seed dwp cell, 200 steps, CUDA graph
  local impl
  for impl in native mixed; do
    stage "bnn-conv-$impl" 60 "$PY" benchmarks/bnn_grid.py --method dwp --untrained-dwp \
      --kernel-subsample 512 "${grid[@]}" --sides batched_graph --conv-impl $impl \
      --device "$dev" --out "$OUT/bnn_grid.jsonl"
  done
}
stage_detgrid() {  # the deterministic baseline's seeds x weight decays trained together (since
  # stop 23) against its single runs (4 candidates + the final net, one after the other)
  stage bnn-grid-det "${limits[2]}" "$PY" benchmarks/bnn_grid.py --method det "${grid[@]}" \
    --sides batched_graph one_at_a_time --device "$dev" --out "$OUT/bnn_grid.jsonl"
}
stage_gridfull() {  # measured cell times for the whole grid: N = 50 at paper length, N = 1000
  # (the costliest size) for 500 steps; CUDA-graph replay only
  stage bnn-cell-dwp-n50 200 "$PY" benchmarks/bnn_grid.py --method dwp --untrained-dwp \
    --kernel-subsample 512 "${cell50[@]}" --sides batched_graph --device "$dev" \
    --out "$OUT/bnn_grid.jsonl"
  stage bnn-cell-det-n50 120 "$PY" benchmarks/bnn_grid.py --method det "${cell50[@]}" \
    --sides batched_graph --device "$dev" --out "$OUT/bnn_grid.jsonl"
  local method extra_grid
  for method in dwp sn det; do
    extra_grid=(); [ $method = dwp ] && extra_grid=(--untrained-dwp --kernel-subsample 512)
    stage "bnn-cell-$method-n1000" 60 "$PY" benchmarks/bnn_grid.py --method $method \
      "${extra_grid[@]}" "${cell1000[@]}" --sides batched_graph --device "$dev" \
      --out "$OUT/bnn_grid.jsonl"
  done
  # the same N = 1000 cells with the data term in bf16 (since stop 24): compute-bound cells
  for method in sn det; do
    stage "bnn-cell-$method-n1000-bf16" 60 "$PY" benchmarks/bnn_grid.py --method $method \
      "${cell1000[@]}" --sides batched_graph --precision bf16 --device "$dev" \
      --out "$OUT/bnn_grid.jsonl"
  done
}
stage_sizes() {  # the small sizes of a method in one padded training (experiment
  # classification --batch-sizes-up-to, since stop 24) against one training per size
  stage bnn-cells-sn-merged 90 "$PY" benchmarks/bnn_grid.py --method sn --n "${small_n[@]}" \
    "${small[@]}" --sides batched_graph --device "$dev" --out "$OUT/bnn_grid.jsonl"
  local n
  for n in "${small_n[@]}"; do
    stage "bnn-cell-sn-n$n-500" 60 "$PY" benchmarks/bnn_grid.py --method sn --n "$n" \
      "${small[@]}" --sides batched_graph --device "$dev" --out "$OUT/bnn_grid.jsonl"
  done
}
stage_profile() {  # the table is printed into the log; at most 8 files come back
  stage profile "${limits[0]}" "$PY" benchmarks/profile_source_step.py "${prof[@]}" \
    --device "$dev" --out "$OUT/profile_source.json"
  rm -f "$OUT/profile_source.txt"
}
stage_priors() {
  stage priors "${limits[3]}" "$PY" benchmarks/priors.py "${pri[@]}" --device "$dev" \
    --out "$OUT/priors.json"
}
stage_series() {  # a slice of one 100-net series (issue 4's 100-net run, split across
  # sessions): nets SERIES_FIRST .. of series seed SERIES_SEED; SERIES_NETS nets, or as many as
  # the budget fits. Later sessions continue at the next index; 'dwp merge-kernels' joins the
  # kernel sets brought back.
  local first=${SERIES_FIRST:-0} nets=${SERIES_NETS:-}
  if [ -z "$nets" ]; then
    nets=$(( ($(left) - 60) * 10 / 13 / per_net ))
    (( nets > 100 - first )) && nets=$(( 100 - first ))
  fi
  [ "$smoke" = 1 ] && nets=2  # smoke runs take src_args' 2 nets
  if (( nets >= 1 )); then
    source_run "series-s${SERIES_SEED:-0}-f$first-n$nets" "$nets" "${SERIES_SEED:-0}" "$first"
  else
    echo "== source-series: skipped ($(left) s left, ${per_net} s per net)" | tee -a "$LOG"
  fi
}

for s in ${STAGES:-graph impl src10x100 bnnconv detgrid src100x2 gridfull sizes profile priors series}; do
  "stage_$s"
done
echo "outputs in $OUT after $((SECONDS - T0)) s:" | tee -a "$LOG"; ls -la "$OUT" | tee -a "$LOG"
