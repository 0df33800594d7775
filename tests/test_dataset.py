import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optinc_jax import decode_pam4
from optinc_jax.encoding import dataset
from optinc_jax.encoding.dataset import (
    DatasetSpec,
    brute_force_dataset,
    dataset_chunk,
    dataset_chunks,
    dataset_samples,
    exhaustive_dataset,
    make_dataset_spec,
)


@pytest.mark.parametrize(
    ("bits", "servers", "levels", "size"),
    [(8, 4, 13, 28_561), (8, 8, 25, 390_625), (8, 16, 49, 5_764_801), (16, 4, 61, 13_845_841)],
)
def test_sizes(bits, servers, levels, size):
    spec = make_dataset_spec(bits, servers)
    assert spec.levels == levels
    assert spec.size == size == levels**4


def test_spec_properties_and_hashable():
    spec = make_dataset_spec(16, 4)
    assert (spec.symbols, spec.symbols_per_input) == (8, 2)
    assert spec == DatasetSpec(16, 4, 4)
    assert hash(spec) == hash(DatasetSpec(16, 4, 4))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((7, 4), "bits"),
        ((0, 4), "bits"),
        ((8, 0), "servers"),
        ((8, 4, 3), "inputs = 3"),
        ((8, 4, 0), "inputs"),
        ((12, 4), "inputs = 4"),
        ((30, 4, 1), "overflows int32"),
        ((8, 200), "overflows int32"),
    ],
)
def test_spec_rejects(args, match):
    with pytest.raises(ValueError, match=match):
        make_dataset_spec(*args)


def test_known_values():
    spec = make_dataset_spec(8, 4)
    samples = dataset_samples(spec, jnp.array([0, 1, spec.levels, spec.size - 1]))
    expected_inputs = np.array(
        [[0, 0, 0, 0], [0.25, 0, 0, 0], [0, 0.25, 0, 0], [3, 3, 3, 3]], np.float32
    )
    np.testing.assert_array_equal(samples.inputs, expected_inputs)
    # a = (0, 1, 0, 0) -> sum 4 -> t = 1; last: t = 255.
    chex.assert_trees_all_equal(samples.target, jnp.array([0, 0, 1, 255], jnp.int32))
    np.testing.assert_array_equal(samples.target_symbols[3], [3, 3, 3, 3])
    np.testing.assert_array_equal(samples.target_symbols[2], [1, 0, 0, 0])


def test_last_sample_16_bits():
    spec = make_dataset_spec(16, 4)
    last = dataset_samples(spec, jnp.array([spec.size - 1]))
    np.testing.assert_array_equal(last.inputs, np.full((1, 4), 15.0, np.float32))
    assert int(last.target[0]) == 2**16 - 1


def test_exhaustive_matches_formula():
    spec = make_dataset_spec(8, 4)
    full = exhaustive_dataset(8, 4)
    chex.assert_shape(full.inputs, (spec.size, 4))
    chex.assert_shape(full.target_symbols, (spec.size, 4))
    assert full.inputs.dtype == jnp.float32 and full.target.dtype == jnp.int32
    # Independent numpy recomputation from the mixed-radix digits.
    i = np.arange(spec.size)
    digits = np.stack([(i // spec.levels**m) % spec.levels for m in range(4)], axis=1)
    np.testing.assert_array_equal(full.inputs * 4, digits)
    np.testing.assert_array_equal(full.target, (digits @ (4 ** np.arange(4))) // 4)
    chex.assert_trees_all_equal(decode_pam4(full.target_symbols), full.target)
    # Every target value is reached.
    np.testing.assert_array_equal(np.unique(np.asarray(full.target)), np.arange(256))
    rng = np.random.default_rng(0)
    picks = rng.integers(0, spec.size, 50)
    chex.assert_trees_all_equal(
        dataset_samples(spec, jnp.asarray(picks)), jax.tree.map(lambda a: a[picks], full)
    )


@pytest.mark.parametrize(
    ("bits", "servers", "inputs"),
    [(4, 2, 1), (4, 2, 2), (4, 3, 2), (6, 2, 3), (8, 2, 4), (4, 4, 2), (2, 3, 1)],
)
def test_brute_force_agrees_with_grid(bits, servers, inputs):
    brute = brute_force_dataset(bits, servers, inputs)
    # (a) t is a function of x: no x appears with two targets among the distinct pairs ...
    distinct_x = np.unique(brute.inputs, axis=0)
    assert len(distinct_x) == len(brute.target)
    # (b) ... and the distinct x are exactly the grid, in grid order, with the grid targets.
    grid = exhaustive_dataset(bits, servers, inputs)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, brute), jax.tree.map(np.asarray, grid))


def test_brute_force_guard():
    with pytest.raises(ValueError, match="combinations"):
        brute_force_dataset(8, 3)


def test_exhaustive_size_guard():
    with pytest.raises(ValueError, match="dataset_chunks"):
        exhaustive_dataset(8, 32)


@pytest.mark.parametrize("chunk_size", [1000, 4096, 28_561, 30_000])
def test_chunks_cover_once(chunk_size):
    spec = make_dataset_spec(8, 4)
    full = exhaustive_dataset(8, 4)
    seen = np.zeros(spec.size, np.int64)
    starts = []
    for start, samples, valid in dataset_chunks(spec, chunk_size):
        starts.append(start)
        chex.assert_shape(samples.target, (chunk_size,))
        valid = np.asarray(valid)
        n = int(valid.sum())
        assert valid[:n].all() and not valid[n:].any()
        seen[start : start + n] += 1
        chex.assert_trees_all_equal(
            jax.tree.map(lambda a, n=n: np.asarray(a)[:n], samples),
            jax.tree.map(lambda a, start=start, n=n: np.asarray(a)[start : start + n], full),
        )
    np.testing.assert_array_equal(seen, 1)
    assert starts == list(range(0, spec.size, chunk_size))


def test_chunk_compiles_once():
    spec = make_dataset_spec(8, 8)
    before = dataset._chunk._cache_size()
    for start in (0, 1000, 5000, spec.size - 7):
        dataset_chunk(spec, start, 1000)
    assert dataset._chunk._cache_size() == before + 1


def test_chunk_rejects():
    spec = make_dataset_spec(8, 4)
    with pytest.raises(ValueError, match="start must lie in"):
        dataset_chunk(spec, spec.size, 10)
    with pytest.raises(ValueError, match="chunk_size"):
        dataset_chunk(spec, 0, 0)
    with pytest.raises(ValueError, match="chunk_size"):
        dataset_chunks(spec, -5)
    with pytest.raises(ValueError, match="indices must lie in"):
        dataset_samples(spec, jnp.array([-1]))
    with pytest.raises(ValueError, match="bits"):
        dataset_samples(DatasetSpec(7, 4), jnp.array([0]))


def test_dataset_samples_jittable():
    spec = make_dataset_spec(16, 4)
    f = jax.jit(dataset_samples, static_argnums=0)
    indices = jnp.array([0, 12345, spec.size - 1])
    chex.assert_trees_all_equal(f(spec, indices), dataset_samples(spec, indices))


@pytest.mark.slow
def test_exhaustive_16_bits_by_chunks():
    spec = make_dataset_spec(16, 4)
    counts = np.zeros(2**16, np.int64)
    for _, samples, valid in dataset_chunks(spec, 2**21):
        target = np.asarray(samples.target)[np.asarray(valid)]
        counts += np.bincount(target, minlength=2**16)
    assert counts.sum() == spec.size
    assert (counts > 0).all()
