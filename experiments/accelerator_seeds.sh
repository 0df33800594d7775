#!/usr/bin/env bash
# One accelerator call: a scenario's preset trained in full from several seeds at once, to
# measure how often it reaches 100 % (on the 2-core CPU one 8b8s seed takes 34 minutes).
#
# Runs `python -m experiments.recipe_sweep` with one variant (default: the 8b8s preset,
# layers 2-7 approximated, unchanged) once per seed, PARALLEL processes sharing the GPU,
# each stopped after MINUTES of wall time at the end of an epoch before its last. Writes to
# OUT: environment.txt, gpu_utilization.csv (sampled every 5 s), recipe_sweep.json / .png
# (every seed's wrong inputs over the epochs and at its end), runs.tgz (each run's
# result.json, training.png and report) and checkpoints.tgz (each run's last checkpoint).
#
# Measured on one H100 (2026-12-05, results/accelerator/h100_2026-12-05/): 3 seeds at once
# ran the 8b8s preset's 250 epochs, finishing and refit in 361-379 s each (first epoch,
# with compilation, 31-33 s; then 0.78-0.79 s per epoch, scoring, projection and
# checkpoint included; the finishing and refit 133-151 s). 8 at once compiled for 158-161 s
# before their first epoch ended and then took 2.0-2.2 s per epoch each: 8 seeds do not
# fit one 10-minute call. Hence the defaults. Usage, from the repository root, with the
# project's packages importable by PYTHON (default python3):
#     OUT=runs/accelerator_seeds [SEEDS=0,1,2] [PARALLEL=3] [MINUTES=5.3] \
#         [SCENARIO=8b8s] [VARIANT='preset={}'] experiments/accelerator_seeds.sh
set -u
out=${OUT:-runs/accelerator_seeds}
seeds=${SEEDS:-0,1,2}
parallel=${PARALLEL:-3}
minutes=${MINUTES:-5.3}
scenario=${SCENARIO:-8b8s}
variant=${VARIANT:-preset=\{\}}
mkdir -p "$out"
. experiments/accelerator_env.sh
echo "scenario $scenario, variant $variant, seeds $seeds, parallel $parallel, minutes $minutes" |
    tee -a "$out/environment.txt"
monitor=
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 \
        >"$out/gpu_utilization.csv" 2>&1 &
    monitor=$!
fi
start=$(date +%s)
$py -m experiments.recipe_sweep --scenario "$scenario" --variant "$variant" --seeds "$seeds" \
    --parallel "$parallel" --minutes "$minutes" --out "$runs"
echo "recipe_sweep: exit $? after $(($(date +%s) - start)) s"
[ -n "$monitor" ] && kill "$monitor"
cp "$runs/recipe_sweep.json" "$runs/recipe_sweep.png" "$out/" 2>/dev/null
tar czf "$out/runs.tgz" -C "$runs" --exclude=checkpoints --exclude=.lock .
last_checkpoints=()
for checkpoints in "$runs"/*/checkpoints; do
    last=$(ls "$checkpoints" | sort -n | tail -1)
    [ -n "$last" ] && last_checkpoints+=("${checkpoints#"$runs"/}/$last")
done
tar czf "$out/checkpoints.tgz" -C "$runs" "${last_checkpoints[@]}"
ls -l "$out"
