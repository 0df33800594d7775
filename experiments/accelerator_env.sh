# Sourced by the accelerator scripts (experiments/accelerator_*.sh), from the repository
# root: sets py (PYTHON, default python3) and runs (a fresh scratch directory), makes the
# project importable, and writes the machine's description to "$out/environment.txt"
# (out must be set and exist).
py=${PYTHON:-python3}
runs=$(mktemp -d)
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
{
    date -u
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    fi
    $py -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, jax.devices())"
} 2>&1 | tee "$out/environment.txt"
