#!/usr/bin/env bash
# One accelerator session, about 5 minutes on one H200 (294 s measured): what Table I's
# waiting rows cost.
#
# 1. benchmarks.bench_recipe: the parts of an epoch (optimizer steps, scoring pass,
#    projection) of 8b8s, 8b16s and 16b4s at the preset batch size and at 2048.
# 2. experiments.accelerator_check: 8b16s (layers 2-9 approximated, its preset) trained
#    for 1.6 minutes, every epoch timed and evaluated; a timed 16b4s exhaustive evaluation.
# 3. The same for 8b8s (layers 2-7) for 1.2 minutes, and its exhaustive evaluation.
#
# Each part runs under its own `timeout` and writes its JSON as soon as it ends, so one
# failing part costs only its own result. Usage, from the repository root, with the
# project's packages importable by PYTHON (default python3):
#     OUT=runs/accelerator_session experiments/accelerator_session.sh
set -u
out=${OUT:-runs/accelerator_session}
mkdir -p "$out"
. experiments/accelerator_env.sh
timeout 170 $py -m benchmarks.bench_recipe --skip-demo --scenarios 8b8s,8b16s,16b4s \
    --batch-sizes preset,2048 --out "$out"
echo "bench_recipe: exit $?"
timeout 190 $py -m experiments.accelerator_check --train-scenario 8b16s --train-minutes 1.6 \
    --eval-scenario 16b4s --out "$runs/check_8b16s" >"$out/check_8b16s.json"
echo "accelerator_check 8b16s: exit $?"
timeout 120 $py -m experiments.accelerator_check --train-scenario 8b8s --train-minutes 1.2 \
    --eval-scenario 8b8s --out "$runs/check_8b8s" >"$out/check_8b8s.json"
echo "accelerator_check 8b8s: exit $?"
