import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from optinc_jax import CommunicationVolume, communication_volume, ring_pmean, ring_pmean_with_stats
from optinc_jax.network.collective import pmean
from optinc_jax.paper import COMMUNICATION_RING

AXIS = "ring"


@functools.cache
def per_server(servers: int, fn_name: str, **options):
    """Jitted ``grads [N, ...] -> [N, ...]``: every server's result (cached)."""
    fn = {"ring": ring_pmean, "optinc": pmean, "lax": jax.lax.pmean}[fn_name]

    def body(tree):
        local = jax.tree.map(lambda x: x[0], tree)
        return jax.tree.map(lambda x: x[None], fn(local, AXIS, **options))

    mesh = Mesh(np.array(jax.devices()[:servers]), (AXIS,))
    return jax.jit(
        jax.shard_map(body, mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS), check_vma=False)
    )


def run(grads, servers, fn_name, **options):
    out = per_server(servers, fn_name, **options)(grads)
    for leaf in jax.tree.leaves(out):  # every server ends with the same values
        for server in range(1, servers):
            np.testing.assert_array_equal(leaf[server], leaf[0])
    return jax.tree.map(lambda x: np.asarray(x[0]), out)


@pytest.mark.parametrize("servers", [2, 4, 8])
@given(seed=st.integers(0, 2**32 - 1))
def test_float_ring_equals_lax_pmean(servers, seed):
    rng = np.random.default_rng(seed)
    grads = jnp.asarray(rng.standard_normal((servers, 1001)).astype(np.float32))
    ring = run(grads, servers, "ring")
    np.testing.assert_allclose(ring, run(grads, servers, "lax"), rtol=1e-6, atol=1e-7)
    # values whose sums are exact in any order: equal bit for bit
    dyadic = jnp.asarray(rng.integers(-1000, 1000, (servers, 1001)) / 8.0, jnp.float32)
    np.testing.assert_array_equal(run(dyadic, servers, "ring"), run(dyadic, servers, "lax"))


def test_float_ring_on_a_pytree_of_odd_shapes_and_dtypes():
    rng = np.random.default_rng(0)
    tree = {
        "scalar": rng.standard_normal((4,)).astype(np.float32),
        "cube": rng.standard_normal((4, 3, 5, 7)).astype(np.float32),
        "empty": np.zeros((4, 0), np.float32),
        "half": (rng.integers(-64, 64, (4, 3, 3)) / 4).astype(jnp.bfloat16),
    }
    tree = jax.tree.map(jnp.asarray, tree)
    ring, reference = run(tree, 4, "ring"), run(tree, 4, "lax")
    for name in tree:
        assert ring[name].shape == tree[name].shape[1:] and ring[name].dtype == tree[name].dtype
    np.testing.assert_allclose(ring["cube"], reference["cube"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ring["scalar"], reference["scalar"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(ring["half"], reference["half"])  # exact sums


@pytest.mark.parametrize("servers", [4, 8])
@pytest.mark.parametrize("rounding", ["floor", "nearest"])
def test_quantized_ring_equals_optinc_ideal(servers, rounding):
    rng = np.random.default_rng(servers)
    scale = np.repeat(2.0 ** rng.integers(-20, 20, 40), 16)[:630].astype(np.float32)
    grads = jnp.asarray(rng.standard_normal((servers, 630)).astype(np.float32) * scale)
    options = {"bits": 8, "rounding": rounding, "block_size": 16}
    np.testing.assert_array_equal(
        run(grads, servers, "ring", **options), run(grads, servers, "optinc", **options)
    )


def test_a_single_server_ring_returns_its_gradient():
    g = jnp.arange(10.0)[None]
    np.testing.assert_array_equal(run(g, 1, "ring"), g[0])


def _ring_stats(servers, tree, **options):
    counted = []

    def body(tree):
        out, stats = ring_pmean_with_stats(tree, AXIS, **options)
        counted.append(stats)
        return out

    mesh = Mesh(np.array(jax.devices()[:servers]), (AXIS,))
    jax.eval_shape(jax.shard_map(body, mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS)), tree)
    return counted[0]


def test_ring_counts_the_chunks_it_sends():
    # 1000 float32 per server on 8 servers: 8 chunks of 125, 14 rounds
    stats = _ring_stats(8, jax.ShapeDtypeStruct((8 * 1000,), jnp.float32))
    assert stats.rounds == 14 and stats.gradient_bytes == 4000
    assert stats.payload_bytes_sent == stats.payload_bytes_received == 14 * 125 * 4
    assert stats.sent_ratio == 1.75 and stats.exponent_bytes_sent == 0
    # 1001 elements: chunks of 126 (zero padding is sent too)
    stats = _ring_stats(8, jax.ShapeDtypeStruct((8 * 1001,), jnp.float32))
    assert stats.payload_bytes_sent == 14 * 126 * 4
    # quantized, 4 servers, 1024 elements in 4 blocks of 256: sums of 4 values need
    # 8 + 2 bits; exponents (8 bits) go through a ring max of 4 one-element chunks
    stats = _ring_stats(4, jax.ShapeDtypeStruct((4 * 1024,), jnp.float32), bits=8)
    assert stats.collective == "ring-quantized" and stats.gradient_bytes == 1024
    assert stats.payload_bytes_sent == (3 * 256 * 10 + 3 * 256 * 8) // 8
    assert stats.exponent_bytes_sent == 6 * 1


def test_ring_rejects_bad_options():
    shape = jax.ShapeDtypeStruct((8,), jnp.float32)
    with pytest.raises(ValueError, match="bits must be even"):
        _ring_stats(4, shape, bits=5)
    with pytest.raises(ValueError, match="rounding must be one of"):
        _ring_stats(4, shape, bits=8, rounding="ceil")
    with pytest.raises(ValueError, match="has dtype int32"):
        _ring_stats(4, jax.ShapeDtypeStruct((8,), jnp.int32))


def test_communication_volume_reproduces_fig_6():
    rows = communication_volume((4, 8, 16), size=1 << 12)
    assert [row.servers for row in rows] == [4, 8, 16]
    assert [row.ring for row in rows] == [COMMUNICATION_RING[n] for n in (4, 8, 16)]
    assert [row.ring for row in rows] == [1.5, 1.75, 1.875]
    assert all(row.optinc == 1.0 for row in rows)
    assert all(row.optinc_exponent_overhead == 8 / (256 * 8) for row in rows)
    # 4 and 8 servers ran on the 8 devices; 16 was traced over an abstract mesh
    assert [row.executed for row in rows] == [True, True, False]
    assert rows[0].ring_bytes_sent == 1.5 * 4 * (1 << 12)
    assert rows[0].optinc_bytes_sent == 1 << 12 and rows[0].optinc_exponent_bytes_sent == 16
    document = json.loads(json.dumps([row._asdict() for row in rows]))
    assert {"servers", "ring", "optinc", "optinc_exponent_overhead"} <= set(document[0])


def test_communication_volume_shows_padding_and_other_bit_widths():
    (row,) = communication_volume(3, size=1000, bits=16, block_size=100)
    assert isinstance(row, CommunicationVolume)
    assert row.ring == 4 * 334 * 4 / (4 * 1000)  # 3 chunks of 334
    assert row.optinc == 1.0 and row.optinc_exponent_overhead == 10 * 8 / (1000 * 16)
    with pytest.raises(ValueError, match="servers must be an integer >= 1, got 0"):
        communication_volume(0)
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        communication_volume(4, size=0)


def test_collective_benchmark_runs_on_a_tiny_gradient(tmp_path):
    from benchmarks import bench_collective

    report = bench_collective.run(tmp_path, params=6000, servers=4, repeats=1)
    methods = [row["method"] for row in report["rows"]]
    assert methods[0] == "lax.pmean" and "optinc ideal" in methods and "ring 8-bit" in methods
    assert report["params_per_server"] == 6000 and report["rows"][0]["ratio_vs_pmean"] == 1.0
    by_method = {row["method"]: row for row in report["rows"]}
    assert by_method["ring float32"]["max_abs_diff_vs_pmean"] < 1e-6
    assert json.loads((tmp_path / "bench_collective.json").read_text())["servers"] == 4
    assert (tmp_path / "bench_collective.png").stat().st_size > 10_000
