"""Every float32 matrix product of the simulator's hot paths runs in full precision.

A CPU computes float32 products in full whatever the ``precision``; an NVIDIA GPU's default
rounds the inputs to TensorFloat-32 (10 mantissa bits) and a TPU's to bfloat16. So these
tests read the traced programs: every ``dot_general`` on float32 or complex64 operands in
them must carry ``Precision.HIGHEST``, which no CPU run could check.
"""

import functools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optinc_jax as oi
from optinc_jax import TrainConfig, build_training, train_epoch

SHORT_FLOATS = (jnp.float32, jnp.complex64, jnp.bfloat16, jnp.float16)


def _subjaxprs(value):
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _subjaxprs(item)


def reduced_precision_products(function, *args) -> list[str]:
    """Every matrix product in ``function(*args)``'s traced program (nested programs of
    jit, scan, cond, while and custom derivatives included) on float32-or-shorter operands
    whose precision is not ``HIGHEST`` on both sides, as readable strings."""
    found = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                short = any(v.aval.dtype in SHORT_FLOATS for v in eqn.invars)
                precision = eqn.params.get("precision")
                full = isinstance(precision, tuple) and all(
                    p == jax.lax.Precision.HIGHEST for p in precision
                )
                if short and not full:
                    shapes = [f"{v.aval.dtype}{list(v.aval.shape)}" for v in eqn.invars]
                    found.append(f"dot_general{shapes} precision={precision}")
            for value in eqn.params.values():
                for sub in _subjaxprs(value):
                    visit(sub)

    visit(jax.make_jaxpr(function)(*args).jaxpr)
    return found


def test_the_check_finds_a_default_precision_product():
    # the negative control: a plain @ and a plain einsum are found, nested in jit and scan
    @jax.jit
    def plain(a, b):
        def body(carry, _):
            return carry @ b, None

        return jax.lax.scan(body, a, length=2)[0] + jnp.einsum("ij,jk->ik", a, b)

    a = jnp.ones((3, 3), jnp.float32)
    assert len(reduced_precision_products(plain, a, a)) == 2
    assert reduced_precision_products(oi.full_matmul, a, a) == []
    # float64 and integer products are exact already; the check leaves them alone
    assert (
        reduced_precision_products(jnp.matmul, np.ones((2, 2), np.int32), np.ones(2, np.int32))
        == []
    )


@pytest.mark.parametrize(
    "changes",
    [
        {},  # stage 2 "hybrid", the project's default
        {"stage2": "literal"},  # the paper's reconstruction MSE
        {"stage2": "ste", "focus_fraction": 0.25},
        {"symbol_weight_base": 0.5, "leak_start": 0.1, "leak_until": 10},
    ],
)
@pytest.mark.parametrize("stage", [1, 2])
def test_a_training_epoch_multiplies_in_full_precision(changes, stage):
    config = TrainConfig.for_scenario("8b4s", batch_size=8, **changes)
    setup = build_training(config)
    hard = None
    if config.focus_fraction:
        hard, _ = oi.find_hard_samples(
            setup.apply_fn, setup.initial_state.params, setup.dataset, margin=0.1
        )
    epoch = functools.partial(
        train_epoch,
        apply_fn=setup.apply_fn,
        dataset=setup.dataset,
        config=config,
        stage=stage,
        steps=2,
        hard=hard,
        leak=jnp.float32(0.1) if config.leak_start else None,
    )
    assert reduced_precision_products(epoch, setup.initial_state, jax.random.key(0)) == []


def test_projection_and_approximation_multiply_in_full_precision():
    setup = build_training(TrainConfig.for_scenario("8b4s"))
    params = setup.initial_state.params
    project = functools.partial(oi.projection_diag_unitary, approx_layers=(2, 3, 4))
    assert reduced_precision_products(project, params) == []
    w = jax.random.normal(jax.random.key(0), (6, 10))
    for side in ("left", "right"):
        approximate = functools.partial(oi.approx_diag_unitary, side=side, refine_steps=2)
        assert reduced_precision_products(approximate, w) == []


def test_losses_and_their_gradients_multiply_in_full_precision():
    y = jax.random.normal(jax.random.key(1), (5, 4)) + 1.5
    target = jnp.arange(5, dtype=jnp.int32) * 40
    symbols = oi.encode_pam4(target, bits=8)
    weights = oi.symbol_weights(4, base=0.5)
    losses = [
        lambda y: oi.weighted_symbol_mse(y, symbols, weights, tolerance=0.1),
        lambda y: oi.reconstruction_mse(y, target, bits=8),
        lambda y: oi.rounded_reconstruction_mse(y, target, bits=8),
        lambda y: jnp.sum(oi.receiver_hinge(y, symbols, 0.3)),
    ]
    for loss in losses:
        assert reduced_precision_products(jax.value_and_grad(loss), y) == []


def test_meshes_and_mappings_multiply_in_full_precision():
    n = 4
    x = jax.random.normal(jax.random.key(2), (n + 2, n))  # a batch >= n: the matrix path
    clements = oi.random_clements_phases(jax.random.key(3), n)
    orthogonal = oi.random_orthogonal_phases(jax.random.key(4), n)
    assert reduced_precision_products(oi.apply_clements, clements, x) == []
    assert reduced_precision_products(oi.apply_orthogonal, orthogonal, x) == []
    mapping = oi.map_matrix_svd(np.random.default_rng(0).normal(size=(3, n)))
    assert reduced_precision_products(oi.reconstruct_matrix, mapping) == []
    assert reduced_precision_products(oi.apply_svd_mapping, mapping, x) == []


def test_the_deployed_circuit_multiplies_in_full_precision():
    rng = np.random.default_rng(0)
    arrays = {
        "input_shift": 1.5,
        "input_scale": 0.7,
        "output_scale": 1.3,
        "output_shift": 1.5,
        "bits": np.int64(4),
        "servers": np.int64(2),
        "inputs": np.int64(3),
        "approx_layers": np.asarray([2], np.int64),
        "weights_0": rng.normal(size=(4, 3)).astype(np.float32),
        "biases_0": np.zeros(4, np.float32),
        "weights_1": np.asarray(oi.approx_diag_unitary(rng.normal(size=(4, 4)))),
        "biases_1": np.zeros(4, np.float32),
        "weights_2": rng.normal(size=(2, 4)).astype(np.float32),
        "biases_2": np.zeros(2, np.float32),
    }
    chip = oi.splitter_error(oi.compile_circuit(arrays), jax.random.key(5), 0.02)
    x = jnp.asarray(rng.uniform(0, 3, size=(8, 3)), jnp.float32)
    assert reduced_precision_products(oi.circuit_forward, chip, x) == []


TRAIN_SCRIPT = """
import sys
from optinc_jax import TrainConfig, train_onn
config = TrainConfig.for_scenario(
    "8b4s", epochs=2, switch_epoch=1, batch_size=64, focus_fraction=0.25, approx="1-5",
    finish_rounds=1, refit_iterations=2,
)
train_onn(config, sys.argv[1], progress=False)
"""


# slow (about 26 s): the parts' own tests above cover each program; this is the whole run
@pytest.mark.slow
def test_a_whole_training_run_compiles_every_float32_product_in_full_precision(tmp_path):
    # End to end: every program XLA compiles in a short run (the epochs with focused draws,
    # both loss stages, the scoring pass, the projection, the finishing, the refit, the
    # evaluation, optax's schedule), read from XLA's own dump of them.
    dump = tmp_path / "hlo"
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump} --xla_dump_hlo_as_text"
    env = {**os.environ, "XLA_FLAGS": flags, "OPENBLAS_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT, str(tmp_path / "run")],
        env=env,
        check=True,
        timeout=600,
    )
    programs = sorted(dump.glob("*before_optimizations.txt"))
    products = [
        line
        for program in programs
        for line in program.read_text().splitlines()
        if " dot(" in line and re.search(r"= (f32|c64|bf16|f16)\[", line)
    ]
    assert len(programs) > 20 and len(products) > 50, (len(programs), len(products))
    assert [line for line in products if "operand_precision={highest,highest}" not in line] == []
