from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from optinc_jax.encoding.dataset import exhaustive_dataset, make_dataset_spec
from optinc_jax.learning.evaluate import evaluate_exhaustive


def _oracle(params, x, *, servers, symbols_per_input, symbols, flip_low_when_zero):
    """Exact symbols of floor(mean); optionally wrong (+1 on symbol 0) when x_0 == 0."""
    del params
    digits = jnp.round(x * servers).astype(jnp.int32)
    place = (4**symbols_per_input) ** jnp.arange(x.shape[-1], dtype=jnp.int32)
    target = digits @ place // servers
    y = ((target[:, None] // 4 ** jnp.arange(symbols)[None, :]) % 4).astype(jnp.float32)
    if flip_low_when_zero:
        bump = (digits[:, 0] == 0) & (y[:, 0] < 3)
        y = y.at[:, 0].add(bump.astype(jnp.float32))
    return y


def _oracle_for(spec, flip):
    return partial(
        _oracle,
        servers=spec.servers,
        symbols_per_input=spec.symbols_per_input,
        symbols=spec.symbols,
        flip_low_when_zero=flip,
    )


def _brute_force(spec, flip):
    data = exhaustive_dataset(spec.bits, spec.servers, spec.inputs)
    y = np.asarray(_oracle_for(spec, flip)(None, data.inputs))
    t_hat = (np.clip(np.round(y), 0, 3).astype(np.int64) * 4 ** np.arange(spec.symbols)).sum(-1)
    errors = t_hat - np.asarray(data.target)
    values, counts = np.unique(errors[errors != 0], return_counts=True)
    return int((errors == 0).sum()), dict(zip(values.tolist(), counts.tolist(), strict=True))


@pytest.mark.parametrize("chunk_size", [1000, 2857, 1 << 16])
def test_exact_oracle_and_planted_errors(chunk_size):
    spec = make_dataset_spec(8, 4, 4)
    perfect = evaluate_exhaustive(_oracle_for(spec, False), None, spec, chunk_size=chunk_size)
    assert perfect.correct == perfect.total == 28561
    assert perfect.accuracy == 1.0 and perfect.error_histogram == {}
    flawed = evaluate_exhaustive(_oracle_for(spec, True), None, spec, chunk_size=chunk_size)
    correct, histogram = _brute_force(spec, True)
    assert flawed.correct == correct < flawed.total
    assert flawed.error_histogram == histogram == {1: 28561 - correct}


def test_sharded_equals_single_device():
    assert jax.device_count() == 8, "conftest should provide 8 CPU devices"
    spec = make_dataset_spec(8, 4, 4)
    oracle = _oracle_for(spec, True)
    single = evaluate_exhaustive(oracle, None, spec, chunk_size=3001)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = evaluate_exhaustive(oracle, None, spec, chunk_size=3001, mesh=mesh)
    assert sharded == single


def test_bad_arguments():
    spec = make_dataset_spec(4, 2, 2)
    oracle = _oracle_for(spec, False)
    with pytest.raises(ValueError, match="chunk_size"):
        evaluate_exhaustive(oracle, None, spec, chunk_size=0)
    with pytest.raises(ValueError, match="data axis"):
        evaluate_exhaustive(oracle, None, spec, mesh=Mesh(np.array(jax.devices()), ("x",)))


def test_equal_architectures_compile_once():
    """Rebuilt models (new parameters, new objects) reuse the evaluation's compilation."""
    from optinc_jax import build_onn, onn_apply_fn
    from optinc_jax.learning import evaluate as evaluate_module

    spec = make_dataset_spec(4, 3, 2)
    before = evaluate_module._accumulate_chunk._cache_size()
    results = []
    for seed in range(4):
        apply_fn, params = onn_apply_fn(build_onn((2, 16, 2), symbols_per_input=1, seed=seed))
        results.append(evaluate_exhaustive(apply_fn, params, spec, chunk_size=64))
    assert evaluate_module._accumulate_chunk._cache_size() - before == 1
    assert len({result.correct for result in results}) > 1  # the parameters did differ


def test_chunk_indices_that_would_overflow_int32_are_refused():
    class Huge:
        size = 2**31 - 100
        bits = 2

        def samples(self, indices):  # never reached
            raise AssertionError

    with pytest.raises(ValueError, match="beyond int32"):
        evaluate_exhaustive(None, None, Huge(), chunk_size=1000)
