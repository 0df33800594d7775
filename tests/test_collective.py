import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import optinc_jax
from optinc_jax import (
    TrainConfig,
    build_onn,
    load_run,
    make_scenario,
    mlp_forward_numpy,
    onn_apply_fn,
    predict_values,
    quantized_average,
    save_exported,
    train_onn,
)
from optinc_jax.encoding.quantize import (
    NONFINITE_EXPONENT,
    dequantize_blocks,
    quantize_blocks,
    quantize_gradients,
)
from optinc_jax.network import collective
from optinc_jax.network.collective import (
    ErrorModel,
    OnnTable,
    average_codes,
    error_model,
    exact_onn_table,
    make_onn_table,
    onn_lookup_table,
    optinc_allreduce,
    pmean,
    pmean_with_stats,
)
from optinc_jax.paper import TABLE_II

AXIS = "servers"
BLOCK = 16  # small blocks: many blocks per test array


def mesh_of(servers: int) -> Mesh:
    return Mesh(np.array(jax.devices()[:servers]), (AXIS,))


@functools.cache
def per_server(servers: int, **options):
    """Jitted ``(grads [N, ...], key) -> [N, ...]``: every server's ``pmean`` (cached)."""

    def body(tree, key):
        local = jax.tree.map(lambda x: x[0], tree)
        inject = {"key": key} if options.get("mode") == "inject" else {}
        return jax.tree.map(lambda x: x[None], pmean(local, AXIS, **options, **inject))

    mapped = jax.shard_map(
        body, mesh=mesh_of(servers), in_specs=(P(AXIS), P()), out_specs=P(AXIS), check_vma=False
    )
    return jax.jit(mapped)


def run_pmean(grads, servers, key=None, **options):
    """``pmean`` on ``servers`` devices; checks that every server got the same result."""
    key = jax.random.key(0) if key is None else key
    out = per_server(servers, **options)(grads, key)
    for leaf in jax.tree.leaves(out):
        for server in range(1, servers):
            np.testing.assert_array_equal(leaf[server], leaf[0])
    return jax.tree.map(lambda x: np.asarray(x[0]), out)


def random_gradients(seed: int, servers: int, size: int) -> np.ndarray:
    """``[N, size]`` float32 gradients with block scales from 2^-30 to 2^30, some zero blocks."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((servers, size)).astype(np.float32)
    blocks = -(-size // BLOCK)
    scale = np.repeat(2.0 ** rng.integers(-30, 31, blocks), BLOCK)[:size]
    g *= scale.astype(np.float32)
    g[:, : 2 * BLOCK] = 0.0  # two all-zero blocks
    g[rng.integers(servers), 3 * BLOCK : 4 * BLOCK] = 0.0  # zero on one server only
    return g


def reference_ideal(grads, bits, rounding="floor"):
    """Independent: quantize every server, exact integer average, dequantize."""
    u, exponents = quantize_gradients(grads, bits=bits, block_size=BLOCK)
    if rounding == "floor":
        t = quantized_average(u)
    else:
        t = np.round(np.asarray(u, np.int64).sum(axis=0) / grads.shape[0]).astype(np.int32)
    return np.asarray(dequantize_blocks(t, exponents, bits=bits, block_size=BLOCK)), exponents


def steps_of(exponents, bits, size):
    """Quantization step ``2^e_max / (2^(B-1) - 1)`` of every element, float64."""
    step = 2.0 ** np.asarray(exponents, np.float64) / (2 ** (bits - 1) - 1)
    return np.repeat(step, BLOCK)[:size]


# ----------------------------------------------------------------- bit-exact quantizer


@functools.cache
def _both_quantizers(bits):
    """The package's quantizer and an ``ldexp`` reference written here, both jitted."""
    encoding = jax.jit(
        lambda g, e: (
            quantize_blocks(g, e, bits=bits, block_size=g.shape[1]),
            dequantize_blocks(
                quantize_blocks(g, e, bits=bits, block_size=g.shape[1]),
                e,
                bits=bits,
                block_size=g.shape[1],
            ),
        )
    )

    def reference(g, e):
        q_max = 2 ** (bits - 1) - 1
        poisoned_block = e == NONFINITE_EXPONENT
        poisoned = poisoned_block[:, None] | ~jnp.isfinite(g)
        scale = jnp.where(poisoned_block, 0, e)[:, None]
        scaled = jnp.ldexp(jnp.where(poisoned, 0, g), -scale)
        q = jnp.clip(jnp.round(scaled * q_max).astype(jnp.int32), -q_max, q_max)
        u = jnp.where(poisoned, 0, q) + 2 ** (bits - 1)
        fraction = (u - 2 ** (bits - 1)).astype(g.dtype) / jnp.asarray(q_max, g.dtype)
        back = jnp.ldexp(fraction, scale)
        return u, jnp.where(poisoned_block[:, None], jnp.nan, back)

    return encoding, jax.jit(reference)


@given(
    seed=st.integers(0, 2**32 - 1),
    bits=st.sampled_from([2, 8, 16]),
    shift=st.integers(-3, 3),
)
def test_quantizer_is_the_ldexp_reference_bit_for_bit(seed, bits, shift):
    rng = np.random.default_rng(seed)
    exponents = np.concatenate([[-125, 128, NONFINITE_EXPONENT], rng.integers(-125, 129, 13)])
    # values below each block's exponent (the clip saturates where shift > 0)
    scale = exponents[:, None].clip(-125, 128) - 1 + shift
    g = np.clip(rng.uniform(-1, 1, (16, 8)) * 2.0**scale, -3e38, 3e38).astype(np.float32)
    g[1, 0] = np.finfo(np.float32).max
    g[2, 3] = np.nan
    g[5, :] = 0.0
    e = jnp.asarray(exponents, jnp.int32)
    encoding, reference = _both_quantizers(bits)
    chex.assert_trees_all_equal(encoding(g, e), reference(g, e))


# ------------------------------------------------------------------------- ideal mode


@pytest.mark.parametrize("servers", [4, 8])
@given(seed=st.integers(0, 2**32 - 1))
def test_ideal_is_the_floor_of_the_mean_of_the_quantized_values(servers, seed):
    size = 16 * BLOCK + 5
    grads = random_gradients(seed, servers, size)
    out = run_pmean(jnp.asarray(grads), servers, bits=8, block_size=BLOCK)
    expected, exponents = reference_ideal(grads, 8)
    np.testing.assert_array_equal(out, expected)
    # within 1.5 quantization steps of the exact average
    exact = np.asarray(jax.jit(lambda g: g.mean(0))(grads), np.float64)
    assert np.all(np.abs(out - exact) <= 1.5 * steps_of(exponents, 8, size))


@pytest.mark.parametrize("bits", [2, 4, 16])
def test_ideal_other_bit_widths_and_nearest(bits):
    grads = random_gradients(1, 4, 8 * BLOCK)
    for rounding in ("floor", "nearest"):
        out = run_pmean(jnp.asarray(grads), 4, bits=bits, block_size=BLOCK, rounding=rounding)
        np.testing.assert_array_equal(out, reference_ideal(grads, bits, rounding)[0])


def test_the_result_is_the_lax_pmean_of_the_quantized_gradients_under_pmap():
    grads = random_gradients(2, 4, 8 * BLOCK)
    mapped = jax.pmap(lambda g: pmean(g, "i", block_size=BLOCK), axis_name="i")
    out = np.asarray(mapped(jnp.asarray(grads)))
    np.testing.assert_array_equal(out, np.broadcast_to(reference_ideal(grads, 8)[0], out.shape))


def test_a_single_server_gets_its_own_quantized_gradient():
    g = random_gradients(3, 1, 5 * BLOCK)
    u, e = quantize_gradients(g, bits=8, block_size=BLOCK)
    expected = dequantize_blocks(u[0], e, bits=8, block_size=BLOCK)
    np.testing.assert_array_equal(run_pmean(jnp.asarray(g), 1, block_size=BLOCK), expected)


def test_average_codes_by_brute_force():
    from fractions import Fraction

    for servers in (1, 3, 4, 8):
        totals = np.arange(servers * 255 + 1)
        floor = [int(Fraction(int(s), servers) // 1) for s in totals]
        nearest = [round(Fraction(int(s), servers)) for s in totals]  # ties to even
        np.testing.assert_array_equal(average_codes(jnp.asarray(totals), servers), floor)
        np.testing.assert_array_equal(
            average_codes(jnp.asarray(totals), servers, "nearest"), nearest
        )


@pytest.mark.parametrize(("servers", "floor_bias"), [(4, -0.375), (8, -0.4375)])
def test_measured_bias_of_floor_and_nearest(servers, floor_bias):
    # The numbers stated in the collective's docstring: 2^18 normal values per server.
    grads = np.random.default_rng(servers).standard_normal((servers, 1 << 18)).astype(np.float32)
    exact = np.asarray(jax.jit(lambda g: g.mean(0))(grads), np.float64)
    _, exponents = quantize_gradients(grads, bits=8, block_size=256)
    step = np.repeat(2.0 ** np.asarray(exponents, np.float64) / 127, 256)
    bias = {}
    for rounding in ("floor", "nearest"):
        body = functools.partial(pmean, axis_name=AXIS, rounding=rounding)
        mapped = jax.shard_map(body, mesh=mesh_of(servers), in_specs=P(AXIS), out_specs=P())
        out = np.asarray(jax.jit(mapped)(grads.reshape(-1)), np.float64)
        bias[rounding] = np.mean((out - exact) / step)
    assert abs(bias["floor"] - floor_bias) < 0.003, bias
    assert abs(bias["nearest"]) < 0.003, bias


# ------------------------------------------------------------------------- pytrees


def test_pytrees_of_odd_shapes_and_dtypes():
    rng = np.random.default_rng(4)
    servers = 4
    shapes = {"scalar": (), "cube": (3, 5, 7), "empty": (0, 3), "one": (1,), "row": (2 * BLOCK,)}
    tree = {
        "params": {
            name: rng.standard_normal((servers, *s)).astype(np.float32)
            for name, s in shapes.items()
        },
        "half": [rng.standard_normal((servers, 9, 2)).astype(jnp.bfloat16)],
    }
    out = run_pmean(jax.tree.map(jnp.asarray, tree), servers, block_size=BLOCK)
    assert jax.tree.structure(out) == jax.tree.structure(tree)
    # Reference: each leaf zero-padded to whole blocks on its own, all side by side
    # (bfloat16 upcast exactly to float32), averaged in one go.
    leaves = [*tree["params"].values(), tree["half"][0]]
    flat = [leaf.reshape(servers, -1).astype(np.float32) for leaf in leaves]
    padded = [np.pad(f, ((0, 0), (0, -f.shape[1] % BLOCK))) for f in flat]
    averaged = reference_ideal(np.concatenate(padded, axis=1), 8)[0]
    offsets = np.cumsum([0] + [p.shape[1] for p in padded])
    for k, (leaf, f) in enumerate(zip(leaves, flat, strict=True)):
        expected = averaged[offsets[k] : offsets[k] + f.shape[1]].reshape(leaf.shape[1:])
        got = out["half"][0] if k == len(leaves) - 1 else out["params"][list(shapes)[k]]
        assert got.shape == leaf.shape[1:] and got.dtype == leaf.dtype
        # bfloat16: the float32 average rounded once
        np.testing.assert_array_equal(got, expected.astype(leaf.dtype))


def test_stats_count_the_padded_blocks_and_each_dtype_exponent_field():
    counted = []

    def body(tree):
        out, stats = pmean_with_stats(tree, AXIS, bits=8, block_size=256)
        counted.append(stats)
        return out

    tree = {
        "a": jnp.zeros((4 * 1000,), jnp.float32),  # 1000 per server: 4 blocks
        "b": jnp.zeros((4 * 3,), jnp.float16),  # 3 per server: 1 block, 5 exponent bits
        "c": jnp.zeros((4 * 256,), jnp.bfloat16),  # 1 block, 8 exponent bits
    }
    mapped = jax.jit(jax.shard_map(body, mesh=mesh_of(4), in_specs=P(AXIS), out_specs=P()))
    mapped(tree)
    mapped(tree)  # cached: the second call does not trace (or count) again
    assert len(counted) == 1
    stats = counted[0]
    assert stats.servers == 4 and stats.elements == 1000 + 3 + 256 and stats.rounds == 1
    assert stats.gradient_bytes == 1259  # 8 bits per element
    assert stats.payload_bytes_sent == stats.payload_bytes_received == 6 * 256
    assert stats.exponent_bytes_sent == -(-(4 * 8 + 5 + 8) // 8) == 6
    assert stats.bytes_sent == 6 * 256 + 6


# ------------------------------------------------------------------------- non-finite


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_poisons_its_block_on_every_server_and_nothing_else(bad):
    servers = 4
    grads = random_gradients(5, servers, 8 * BLOCK)
    poisoned = grads.copy()
    poisoned[2, 5 * BLOCK + 3] = bad  # server 2, block 5
    poisoned[0, 6 * BLOCK] = np.nan  # server 0, block 6
    out = run_pmean(jnp.asarray(poisoned), servers, block_size=BLOCK)
    blocks = out.reshape(-1, BLOCK)
    assert np.all(np.isnan(blocks[5:7]))
    clean = grads.copy()
    clean[:, 5 * BLOCK : 7 * BLOCK] = 0.0
    expected = reference_ideal(clean, 8)[0].reshape(-1, BLOCK)
    np.testing.assert_array_equal(
        np.delete(blocks, [5, 6], axis=0), np.delete(expected, [5, 6], axis=0)
    )


# ----------------------------------------------------------------------------- onn


def test_exact_table_by_brute_force_over_server_values():
    table = exact_onn_table(4, 2, 2)  # r = 1, L = 7, 49 entries
    assert table.table.shape == (49,) and table.accuracy == 1.0 and table.levels == 7
    u = np.indices((16, 16)).reshape(2, 1, -1).astype(np.uint8)  # [N, 1, C]
    index = collective._table_index(jnp.asarray(u), table)
    np.testing.assert_array_equal(table.table[index][0], (u[0, 0].astype(int) + u[1, 0]) // 2)


def test_onn_with_an_exact_table_equals_ideal():
    grads = jnp.asarray(random_gradients(6, 4, 12 * BLOCK + 7))
    table = exact_onn_table(8, 4)
    assert table.table.shape == (28561,)
    onn = run_pmean(grads, 4, mode="onn", table=table, block_size=BLOCK)
    np.testing.assert_array_equal(onn, run_pmean(grads, 4, block_size=BLOCK))


def onn_reference(grads, values, bits=8):
    """Independent: quantize, PAM4 symbols, preprocessing counts, mixed-radix index."""
    servers = grads.shape[0]
    u, exponents = quantize_gradients(grads, bits=bits, block_size=BLOCK)
    symbols = (np.asarray(u)[..., None] >> (2 * np.arange(bits // 2))) & 3  # [N, size, K]
    counts = symbols.sum(axis=0)  # N x_m, r = 1
    levels = 3 * servers + 1
    index = counts @ (levels ** np.arange(bits // 2))
    t_hat = np.asarray(values)[index]
    return np.asarray(dequantize_blocks(t_hat, exponents, bits=bits, block_size=BLOCK)), counts


def test_onn_with_perturbed_table_entries_is_the_table_applied_to_the_inputs():
    exact = exact_onn_table(8, 4)
    values = np.asarray(exact.table).copy()
    values[::7] = (values[::7] + 3) % 256  # 1 in 7 entries wrong
    table = make_onn_table(values, bits=8, servers=4, source="perturbed")
    assert table.accuracy == pytest.approx(1 - len(values[::7]) / values.size)
    grads = random_gradients(7, 4, 12 * BLOCK)
    out = run_pmean(jnp.asarray(grads), 4, mode="onn", table=table, block_size=BLOCK)
    expected, _ = onn_reference(grads, values)
    np.testing.assert_array_equal(out, expected)
    assert not np.array_equal(out, reference_ideal(grads, 8)[0])


def test_onn_from_exported_weights_equals_running_the_network_on_the_same_inputs(tmp_path):
    model = build_onn((4, 16, 16, 4), symbols_per_input=1, seed=3)  # untrained: imperfect
    _, params = onn_apply_fn(model)
    arrays = optinc_jax.export_arrays(model, params, bits=8, servers=2, approx_layers=())
    path = save_exported(tmp_path / "weights.npz", arrays)
    table = onn_lookup_table(path)
    assert onn_lookup_table(str(path)) is table  # cached per path
    assert table.table.shape == (7**4,)
    assert table.bits == 8 and table.servers == 2 and table.accuracy < 1
    grads = random_gradients(8, 2, 10 * BLOCK)
    out = run_pmean(jnp.asarray(grads), 2, mode="onn", table=path, block_size=BLOCK)
    # run the network itself (float64 reference forward) on the preprocessed inputs
    _, counts = onn_reference(grads, table.table)
    y = mlp_forward_numpy(arrays, counts / 2.0)
    t_hat = np.clip(np.round(y), 0, 3).astype(np.int64) @ (4 ** np.arange(4))
    _, exponents = quantize_gradients(grads, bits=8, block_size=BLOCK)
    expected = dequantize_blocks(t_hat.astype(np.int32), exponents, bits=8, block_size=BLOCK)
    np.testing.assert_array_equal(out, expected)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 4-bit / 2-server ONN trained for 1 epoch: an imperfect network in a run dir."""
    scenario = make_scenario("collective-4b2s", bits=4, servers=2, layers=(2, 16, 2), inputs=2)
    config = TrainConfig(
        scenario=scenario, epochs=1, batch_size=8, switch_epoch=1, checkpoint_every=1
    )
    workdir = tmp_path_factory.mktemp("run")
    return workdir, train_onn(config, workdir, progress=False)


def test_onn_from_a_trained_run_equals_its_network_and_its_reported_accuracy(tiny_run):
    workdir, result = tiny_run
    table = onn_lookup_table(workdir)
    assert table.accuracy == result.evaluation.accuracy
    assert (table.bits, table.servers, table.inputs) == (4, 2, 2)
    run = load_run(workdir)
    grads = random_gradients(9, 2, 6 * BLOCK)
    out = run_pmean(jnp.asarray(grads), 2, bits=4, mode="onn", table=workdir, block_size=BLOCK)
    u, exponents = quantize_gradients(grads, bits=4, block_size=BLOCK)
    symbols = (np.asarray(u)[..., None] >> np.array([0, 2])) & 3
    x = (symbols.sum(axis=0) * np.float32(0.5)).astype(np.float32)  # [size, I = 2]
    t_hat = predict_values(run.apply_fn, run.params, jnp.asarray(x))
    expected = dequantize_blocks(t_hat, exponents, bits=4, block_size=BLOCK)
    np.testing.assert_array_equal(out, expected)


def test_error_model_of_a_run_is_its_measured_histogram(tiny_run):
    workdir, result = tiny_run
    model = error_model(workdir)
    record = json.loads((workdir / "result.json").read_text())
    histogram = {int(k): v for k, v in record["error_histogram"].items()}
    wrong = sum(histogram.values())
    assert model.rate == pytest.approx(1 - result.evaluation.accuracy)
    assert (model.bits, model.servers) == (4, 2)
    assert dict(zip(model.values, model.probabilities, strict=True)) == pytest.approx(
        {k: v / wrong for k, v in histogram.items()}
    )


# -------------------------------------------------------------------------- inject


@pytest.mark.parametrize("rate", [0.02, 0.3])  # values drawn sparsely / densely
def test_inject_has_the_configured_rate_and_error_shares(rate):
    servers, size = 4, 1 << 14
    model = ErrorModel(8, servers, rate=rate, values=(1, -1, 5), probabilities=(0.5, 0.3, 0.2))
    grads = np.random.default_rng(10).standard_normal((servers, size)).astype(np.float32) * 1e-3
    key = jax.random.key(11)
    out = run_pmean(jnp.asarray(grads), servers, key, mode="inject", errors=model)
    ideal = run_pmean(jnp.asarray(grads), servers)
    _, exponents = quantize_gradients(grads, bits=8, block_size=256)
    step = np.repeat(2.0 ** np.asarray(exponents, np.float64) / 127, 256)
    error = np.round((out.astype(np.float64) - ideal) / step).astype(int)
    wrong = error != 0
    sigma = np.sqrt(rate * (1 - rate) / size)
    assert abs(wrong.mean() - rate) < 5 * sigma
    for value, share in zip(model.values, model.probabilities, strict=True):
        observed = np.mean(error[wrong] == value)
        assert abs(observed - share) < 5 * np.sqrt(share * (1 - share) / wrong.sum()), value
    # deterministic in the key, different with another key
    again = run_pmean(jnp.asarray(grads), servers, key, mode="inject", errors=model)
    np.testing.assert_array_equal(again, out)
    other = run_pmean(jnp.asarray(grads), servers, jax.random.key(12), mode="inject", errors=model)
    assert not np.array_equal(other, out)


def test_inject_of_a_table_ii_row_at_16_bits():
    grads = jnp.asarray(random_gradients(13, 4, 8 * BLOCK))
    out = run_pmean(
        grads,
        4,
        bits=16,
        mode="inject",
        errors=TABLE_II[2],
        key=jax.random.key(0),
        block_size=BLOCK,
    )
    # rate 1e-7 on 128 values: the draws give no error here, so the result is ideal
    np.testing.assert_array_equal(out, run_pmean(grads, 4, bits=16, block_size=BLOCK))


def test_table_ii_rows_as_error_models():
    exact = error_model(TABLE_II[0])
    assert exact.rate == 0.0 and exact.values == () and (exact.bits, exact.servers) == (16, 4)
    known = error_model(TABLE_II[2])
    assert known.values == (1024,) and known.probabilities == (1.0,)
    assert known.rate == pytest.approx(1e-7)
    partly = error_model(TABLE_II[4])  # lost, lost, 12: lost values default to +1
    assert partly.values == (1, 12)
    assert partly.probabilities == pytest.approx((0.965, 0.035))
    assert error_model(TABLE_II[4], lost_value=(-1, 2)).values == (-1, 2, 12)
    with pytest.raises(ValueError, match="one value per lost error value"):
        error_model(TABLE_II[4], lost_value=(1,))
    with pytest.raises(ValueError, match="non-zero"):
        error_model(TABLE_II[1], lost_value=0)


def test_error_model_validation():
    with pytest.raises(ValueError, match="sum to 1"):
        ErrorModel(8, 4, rate=0.1, values=(1, 2), probabilities=(0.5, 0.4))
    with pytest.raises(ValueError, match="rate"):
        ErrorModel(8, 4, rate=1.5, values=(1,), probabilities=(1.0,))
    with pytest.raises(ValueError, match="at least one error value"):
        ErrorModel(8, 4, rate=0.1)
    with pytest.raises(ValueError, match="evaluation record"):
        error_model({"correct": 1})


# -------------------------------------------------------------------------- errors


def _trace(servers, tree=None, **options):
    tree = jnp.zeros((servers * BLOCK,)) if tree is None else tree
    body = functools.partial(pmean, axis_name=AXIS, **options)
    return jax.eval_shape(
        jax.shard_map(body, mesh=mesh_of(servers), in_specs=P(AXIS), out_specs=P()), tree
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "exact"}, "mode must be one of 'ideal', 'onn', 'inject', got 'exact'"),
        ({"rounding": "up"}, "rounding must be one of 'floor', 'nearest', got 'up'"),
        ({"bits": 7}, "bits must be even"),
        ({"bits": 32}, "bits must be even"),
        ({"block_size": 0}, "block_size must be an integer >= 1, got 0"),
        ({"mode": "onn"}, "needs table="),
        ({"mode": "inject", "errors": TABLE_II[1], "bits": 16}, "needs a PRNG key"),
        ({"mode": "inject", "key": jax.random.key(0)}, "needs errors="),
        ({"mode": "inject", "errors": TABLE_II[1], "key": jax.random.key(0)}, "16-bit unit"),
        ({"table": "nowhere.npz"}, "only with mode='onn'"),
        ({"key": jax.random.key(0)}, "only with mode='inject'"),
        ({"bits": 30}, "overflows the int32 sum"),
    ],
)
def test_clear_errors_for_bad_options(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _trace(4, **options)


def test_a_unit_for_another_server_count_names_the_supported_one():
    table = exact_onn_table(8, 4)
    with pytest.raises(
        ValueError, match=r"axis 'servers' has 8 servers.*supported server counts: 4"
    ):
        _trace(8, mode="onn", table=table)
    model = ErrorModel(8, 4, rate=0.0)
    with pytest.raises(ValueError, match="supported server counts: 4"):
        _trace(8, mode="inject", errors=model, key=jax.random.key(0))
    _trace(8)  # ideal: any N
    with pytest.raises(ValueError, match="rounding must be 'floor'"):
        _trace(4, mode="onn", table=table, rounding="nearest")


def test_non_float_leaves_and_bad_tables_are_refused():
    with pytest.raises(ValueError, match=r"leaf at \['n'\] has dtype int32"):
        _trace(4, tree={"n": jnp.zeros(8, jnp.int32)})
    with pytest.raises(ValueError, match="must have shape"):
        make_onn_table(np.zeros(5, np.int32), bits=8, servers=4)
    with pytest.raises(ValueError, match="must lie in"):
        make_onn_table(np.full(28561, 256), bits=8, servers=4)
    with pytest.raises(ValueError, match="run directory or an exported"):
        onn_lookup_table("/no/such/run")
    assert isinstance(exact_onn_table(2, 2, 1), OnnTable)


# ------------------------------------------------------------------------- optax


def test_optax_wrapper_in_a_shard_map_training_step():
    servers = 4
    mesh = mesh_of(servers)
    rng = np.random.default_rng(14)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = x @ np.arange(1.0, 6.0, dtype=np.float32)
    tx = optax.chain(optinc_allreduce(AXIS, block_size=BLOCK), optax.sgd(0.1))

    def step(params, opt_state, x, y):
        grads = jax.grad(lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    mapped = jax.jit(
        jax.shard_map(
            step,
            mesh=mesh,
            in_specs=(P(), P(), P(AXIS), P(AXIS)),
            out_specs=(P(), P()),
            check_vma=False,  # so that each device's own copy comes back
        )
    )
    params = {"w": jnp.zeros(5), "b": jnp.zeros(())}
    opt_state = tx.init(params)
    for _ in range(60):
        params, opt_state = mapped(params, opt_state, x, y)
    for leaf in jax.tree.leaves(params):  # the same parameters on every device
        shards = [np.asarray(s.data) for s in leaf.addressable_shards]
        assert len(shards) == servers
        for shard in shards[1:]:
            np.testing.assert_array_equal(shard, shards[0])
    np.testing.assert_allclose(params["w"], np.arange(1.0, 6.0), atol=0.05)
    assert int(opt_state[0].count) == 60


def test_optax_wrapper_draws_new_errors_every_step():
    model = ErrorModel(8, 4, rate=0.5, values=(1,), probabilities=(1.0,))
    tx = optinc_allreduce(AXIS, mode="inject", errors=model, key=jax.random.key(0))

    def two_steps(g):
        state = tx.init(g)
        first, state = tx.update(g, state)
        second, state = tx.update(g, state)
        return first, second

    mapped = jax.shard_map(two_steps, mesh=mesh_of(4), in_specs=P(AXIS), out_specs=P())
    first, second = jax.jit(mapped)(jnp.asarray(random_gradients(15, 4, 4 * 256)).reshape(-1))
    assert not np.array_equal(first, second)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        optinc_allreduce(AXIS, mode="inject", errors=model)
    with pytest.raises(ValueError, match="unknown pmean options"):
        optinc_allreduce(AXIS, axis_index_groups=None)


def test_a_record_with_invalid_outputs_is_no_error_model():
    record = {
        "correct": 90,
        "total": 100,
        "error_histogram": {"1": 5},
        "invalid": 5,
        "bits": 8,
        "servers": 4,
    }
    with pytest.raises(ValueError, match="5 outputs of the network were NaN"):
        error_model(record)
