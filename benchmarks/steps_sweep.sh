#!/usr/bin/env bash
# Choose the number of training steps per method on the validation split, not the test set.
#
# Trains `dwp train-bnn` at N images for every (method, steps, seed) given, two runs at a time
# with one thread each (CPU-2), then scores every run on the validation split of
# benchmarks/bnn_validation.py (MNIST training images not among the N).
#
#   PRIOR=benchmarks/priors/notmnist-cpu3aug N=50 SEEDS="0 1 2 3 4" STEPS="100 250 500 1000 2000" \
#       METHODS="dwp sn lu" bash benchmarks/steps_sweep.sh
#
# METHODS=mvn (the fitted Gaussian) fits its priors on KERNELS=kernel-set folder.
# Runs go to runs/steps-{method}{TAG}-n{N}-t{steps}-s{seed} (TAG, default empty, tells dwp
# runs with other prior folders apart, e.g. TAG=-fmnist); finished runs (metrics.json present)
# are skipped and unfinished ones resume from their last checkpoint (train-bnn writes one every
# 500 steps), so a killed sweep resumes. Each finished run's record (its metrics.json, via
# benchmarks/add_runs.py) is appended to $RUNS_OUT (default mnist-n{N}-steps-cpu.jsonl) and its
# validation row to $VAL_OUT, both in git, so that results outlive the git-ignored run folders.
# EXTRA (default empty) is passed to every train-bnn command, e.g. EXTRA="--init prior-mean"
# with TAG=-pmean for a variant of the default recipe.
# Each row's note says how many runs shared the CPU: $JOBS, unless SIDE_BY_SIDE says otherwise
# (e.g. SIDE_BY_SIDE=2 for two JOBS=1 sweeps started side by side).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
DWP=${DWP:-.venv/bin/dwp}
N=${N:-50}
SEEDS=${SEEDS:-"0 1 2 3 4"}
STEPS=${STEPS:-"1000 2000 4000"}
METHODS=${METHODS:-"dwp sn lu"}
PRIOR=${PRIOR:-benchmarks/priors/notmnist-cpu3aug}
JOBS=${JOBS:-2}
VAL_OUT=${VAL_OUT:-benchmarks/results/bnn-validation-cpu.jsonl}
TAG=${TAG:-}
EXTRA=${EXTRA:-}
RUNS_OUT=${RUNS_OUT:-benchmarks/results/mnist-n$N-steps-cpu.jsonl}
SIDE_BY_SIDE=${SIDE_BY_SIDE:-$JOBS}

jobs_file=$(mktemp)
trap 'rm -f "$jobs_file"' EXIT
outs=()
for steps in $STEPS; do
  for method in $METHODS; do
    for seed in $SEEDS; do
      out=runs/steps-$method$TAG-n$N-t$steps-s$seed
      outs+=("$out")
      [[ -f $out/metrics.json ]] && continue
      extra=""
      if [[ $method == dwp ]]; then
        extra="--prior-dir $PRIOR --freeze-reverse --kernel-subsample 128"
      elif [[ $method == mvn ]]; then
        extra="--kernels ${KERNELS:?METHODS=mvn needs KERNELS=kernel-set folder}"
      fi
      echo "OMP_NUM_THREADS=1 $DWP train-bnn --prior $method $extra $EXTRA --n $N --seed $seed \
--steps $steps --device cpu --no-progress --out $out > $out.log 2>&1 || echo FAILED $out" >> "$jobs_file"
    done
  done
done

echo "$(wc -l < "$jobs_file") runs to train"
xargs -P "$JOBS" -I{} bash -c {} < "$jobs_file"

runs=()
for out in "${outs[@]}"; do
  [[ -f $out/metrics.json ]] && runs+=("$out")
done
[[ ${#runs[@]} -gt 0 ]] || { echo "no finished runs"; exit 1; }
# name the CPU in each row's note: float rounding and speed differ between CPU-2's machines;
# the SIMD level is the one torch dispatches its CPU kernels to
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
simd=$("$PY" -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')
"$PY" benchmarks/add_runs.py "$RUNS_OUT" "${runs[@]}" \
  --note "CPU-2 (${cpu:-unknown CPU}, $simd), 1 thread, $SIDE_BY_SIDE runs side by side (benchmarks/steps_sweep.sh)"
OMP_NUM_THREADS=2 "$PY" benchmarks/bnn_validation.py "${runs[@]}" --threads 2 --out "$VAL_OUT"
