"""The cascade of OptINC units: level datasets, the chain, margins, area, training."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from optinc_jax import (
    CascadeLevel,
    IdealLevel,
    TrainConfig,
    brute_force_level_inputs,
    cascade_area,
    cascade_average_codes,
    cascade_for_servers,
    cascade_forward,
    cascade_layers,
    cascade_lookup,
    cascade_table,
    check_cascade,
    ideal_levels,
    level_input_margin,
    level_output_deviation,
    level_scenario,
    link_input_deviation,
    load_cascade_levels,
    make_cascade,
    make_dataset_spec,
    make_level_dataset,
    make_scenario,
    pmean,
    reachable_inputs,
    train_cascade,
)
from optinc_jax.network import cascade as cascade_module

LEVEL_CASES = [
    (4, (2,), 2),
    (4, (2, 2), 2),
    (4, (3, 2), 2),
    (4, (2, 3), 1),
    (4, (2, 2, 2), 2),
    (2, (2, 2, 2), 1),
    (2, (3, 2, 2), 1),
    (6, (2,), 3),
    (4, (4,), 2),
    (4, (4, 2), 2),
]


def all_server_values(bits: int, servers: int) -> np.ndarray:
    """Every combination of ``servers`` values of ``bits`` bits: ``[(2^B)^S, S]``."""
    return np.indices((2**bits,) * servers).reshape(servers, -1).T.astype(np.int32)


def double_floor(u: np.ndarray, fanins) -> np.ndarray:
    values = u.astype(np.int64)
    for n in fanins:
        values = values.reshape(len(u), -1, n).sum(-1) // n
    return values[:, 0]


@pytest.mark.parametrize("final", [True, False])
@pytest.mark.parametrize(("bits", "fanins", "inputs"), LEVEL_CASES)
def test_level_dataset_and_reachable_set_match_brute_force(bits, fanins, inputs, final):
    dataset = make_level_dataset(bits, fanins, inputs=inputs, final=final)
    index, target = brute_force_level_inputs(dataset)
    samples = dataset.samples(jnp.arange(dataset.size))
    np.testing.assert_array_equal(np.asarray(samples.target)[index], target)
    reached = np.zeros(dataset.size, bool)
    reached[index] = True
    np.testing.assert_array_equal(
        np.asarray(reachable_inputs(dataset, jnp.arange(dataset.size))), reached
    )
    # Symbols decode to the target and every output is a PAM4 level.
    symbols = np.asarray(samples.target_symbols)
    assert symbols.shape == (dataset.size, dataset.output_symbols)
    assert symbols.min() >= 0 and symbols.max() <= 3
    np.testing.assert_array_equal(symbols @ 4 ** np.arange(symbols.shape[1]), samples.target)
    # Padded inputs are zero; data inputs lie on their grids.
    x = np.asarray(samples.inputs)
    assert x.shape == (dataset.size, dataset.onn_inputs)
    assert not x[:, dataset.inputs :].any()
    np.testing.assert_allclose(
        x[:, 0] * dataset.scale, np.round(x[:, 0] * dataset.scale), atol=1e-4
    )


def test_level_one_has_the_papers_inputs_and_keeps_the_remainder():
    exact = make_level_dataset(8, (4,), final=False)
    grid = make_dataset_spec(8, 4)
    indices = jnp.arange(grid.size)
    ours, paper = exact.samples(indices), grid.samples(indices)
    np.testing.assert_array_equal(np.asarray(ours.inputs)[:, :4], paper.inputs)
    total = np.asarray(paper.inputs, np.float64) @ 4.0 ** np.arange(4) * 4  # exact sum S
    total = np.rint(total).astype(np.int64)
    np.testing.assert_array_equal(ours.target, total % 4 + 4 * (total // 4))
    np.testing.assert_array_equal(ours.target // 4, paper.target)


def test_paper_sizes_and_unreachable_points():
    level1, level2 = (make_cascade(8, (4, 4)).level_dataset(level) for level in (1, 2))
    assert (level1.size, level1.bits, level1.onn_inputs) == (28561, 10, 5)
    assert (level2.size, level2.bits, level2.onn_inputs, level2.low_levels) == (134017, 8, 4, 61)
    unreachable = ~np.asarray(reachable_inputs(level2, jnp.arange(level2.size)))
    assert unreachable.sum() == 105
    deep = make_cascade(8, (4, 4, 4))
    assert [deep.level_dataset(level).bits for level in (1, 2, 3)] == [10, 12, 8]
    assert deep.level_dataset(3).low_levels == 4 * (4 * 16 - 1) + 1


def test_naive_levels_are_the_papers_grid():
    cascade = make_cascade(8, (4, 4), variant="naive")
    assert cascade.level_dataset(2) == make_dataset_spec(8, 4)


@pytest.mark.parametrize(
    ("bits", "fanins", "inputs"),
    [(4, (2, 2), 2), (2, (3, 2), 1), (2, (2, 2, 2), 1), (2, (2, 4), 1)],
)
def test_ideal_cascades_against_brute_force_over_all_server_combinations(bits, fanins, inputs):
    u = all_server_values(bits, math.prod(fanins))
    exact = make_cascade(bits, fanins, inputs=inputs)
    naive = exact._replace(variant="naive")
    got = np.asarray(cascade_forward(exact, ideal_levels(exact), jnp.asarray(u)))
    np.testing.assert_array_equal(got, u.sum(1) // u.shape[1])
    got_naive = np.asarray(cascade_forward(naive, ideal_levels(naive), jnp.asarray(u)))
    np.testing.assert_array_equal(got_naive, double_floor(u, fanins))
    assert (got_naive != got).any()  # the naive cascade is wrong somewhere


@given(st.lists(st.integers(0, 255), min_size=1, max_size=16), st.sampled_from(["exact", "naive"]))
def test_fewer_servers_are_zero_padded(values, variant):
    cascade = make_cascade(8, (4, 4), variant=variant)
    levels = ideal_levels(cascade)
    u = jnp.array([values], jnp.int32)
    padded = jnp.pad(u, ((0, 0), (0, 16 - len(values))))
    got = cascade_forward(cascade, levels, u)
    np.testing.assert_array_equal(got, cascade_forward(cascade, levels, padded))
    if variant == "exact":
        assert int(got[0]) == sum(values) // 16


def test_bad_server_counts_are_refused():
    cascade = make_cascade(8, (4, 4))
    with pytest.raises(ValueError, match=r"17 servers .* maximum 16"):
        cascade_forward(cascade, ideal_levels(cascade), jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(ValueError, match="servers = 65 exceeds the maximum 64"):
        cascade_for_servers(65, max_levels=3)
    assert cascade_for_servers(64, max_levels=3).fanins == (4, 4, 4)
    assert cascade_for_servers(3).fanins == (4,)
    with pytest.raises(ValueError, match="u"):
        cascade_forward(cascade, ideal_levels(cascade), jnp.full((1, 4), 256, jnp.int32))
    with pytest.raises(ValueError, match="one CascadeLevel per level"):
        cascade_forward(cascade, ideal_levels(cascade)[:1], jnp.zeros((1, 4), jnp.int32))


def test_check_cascade_counts_naive_errors_and_no_exact_ones():
    exact = make_cascade(8, (4, 4))
    naive = exact._replace(variant="naive")
    for source in ("gradients", "uniform"):
        report = check_cascade(
            exact, ideal_levels(exact), vectors=4096, chunk_size=2048, source=source
        )
        assert report["vectors_checked"] == 4096 and report["errors"] == 0
        report = check_cascade(
            naive, ideal_levels(naive), vectors=4096, chunk_size=2048, source=source
        )
        assert report["errors"] > 0 and report["double_floor"]["errors"] == 0
        # The double floor is never above the exact average and at most 1 below (4 x 4).
        assert set(report["error_histogram"]) == {"-1"}


def test_a_deep_ideal_cascade_is_exact():
    cascade = make_cascade(8, (4, 4, 4))
    report = check_cascade(
        cascade, ideal_levels(cascade), vectors=2048, chunk_size=1024, source="uniform"
    )
    assert report["errors"] == 0


def test_margin_of_an_ideal_level_is_half_its_resolution():
    # The ideal level rounds x_0 * 4 and x_1 * 2: a shift of 1/8 (x_0) or 1/4 (x_1) can flip.
    dataset = make_cascade(4, (2, 2), inputs=2).level_dataset(2)
    level = CascadeLevel(IdealLevel(dataset), None)
    margin = level_input_margin(level, dataset, deltas=[2.0**-k for k in range(6, 0, -1)])
    assert margin["per_input"] == [1 / 16, 1 / 8]
    assert margin["margin"] == 1 / 16
    np.testing.assert_array_equal(level_output_deviation(level, dataset), [0, 0])
    with pytest.raises(ValueError, match="deltas"):
        level_input_margin(level, dataset, deltas=[0.1, 0.05])


def test_link_input_deviation_merges_the_remainder_digits():
    cascade = make_cascade(8, (4, 4))
    np.testing.assert_allclose(
        link_input_deviation(cascade, 1, [0.4, 0.1, 0.2, 0.3, 0.05]), [0.2, 0.2, 0.3, 0.05]
    )
    deep = make_cascade(8, (4, 4, 4))
    np.testing.assert_allclose(
        link_input_deviation(deep, 2, [0.1, 0.2, 0.0, 0.0, 0.0, 0.0]), [(0.1 + 0.8) / 16, 0, 0, 0]
    )


def test_structures_and_area():
    cascade = make_cascade(8, (4, 4))
    assert cascade_layers((4, 64, 128, 256, 128, 64, 4), inputs=4, outputs=4, inserted=()) == (
        4,
        64,
        128,
        256,
        128,
        64,
        4,
    )
    scenarios = [level_scenario(cascade, level) for level in (1, 2)]
    assert [s.layers_string for s in scenarios] == [
        "5-64-64-128-256-128-64-64-5",
        "4-64-64-128-256-128-64-64-4",
    ]
    assert scenarios[1].approx == tuple(range(1, 9))
    area = cascade_area(cascade, scenarios)
    assert area["base_mzis"] == 41664
    # Two approximated 64 x 64 matrices: 2 (64 * 63 / 2 + 64) = 4160 MZIs.
    assert area["paper_structure_mzis"] == 41664 + 4160
    assert area["paper_structure_overhead"] == pytest.approx(4160 / 41664)
    assert area["levels"][1]["mzis"] == 41664 + 4160
    # 5 inputs and outputs: 13 blocks of 5 x 5 (15 MZIs) each instead of 16 of 4 x 4 (10).
    assert area["levels"][0]["mzis"] == 41664 + 4160 + 2 * (13 * 15 - 16 * 10)
    assert area["regenerators"] == 4 * 5
    assert "onn_area" in area["rule"]


def test_forward_compiles_once_per_shape():
    cascade = make_cascade(4, (2, 2), inputs=2)
    levels = ideal_levels(cascade)
    u = jnp.zeros((3, 4), jnp.int32)
    cascade_forward(cascade, levels, u)
    before = cascade_module._forward._cache_size()
    cascade_forward(cascade, levels, u + 1)
    assert cascade_module._forward._cache_size() == before


TINY_CONFIG = TrainConfig(
    epochs=100,
    batch_size=16,
    steps_per_epoch=100,
    switch_epoch=70,
    learning_rate=1e-2,
    checkpoint_every=200,
    eval_every=2,
)


def tiny_scenarios(cascade, width=64):
    symbols = cascade.bits // 2
    base = make_scenario(
        "tiny",
        bits=cascade.bits,
        servers=2,
        layers=(cascade.inputs, width, width, symbols),
        inputs=cascade.inputs,
    )
    return [
        level_scenario(cascade, level, base=base, inserted=(), approx=(2,))
        for level in range(1, cascade.num_levels + 1)
    ]


def test_a_small_cascade_trains_to_exact_and_is_exact_over_all_server_combinations(tmp_path):
    cascade = make_cascade(4, (2, 2), inputs=2)
    levels, results = train_cascade(
        cascade, tmp_path, configs=TINY_CONFIG, scenarios=tiny_scenarios(cascade), progress=False
    )
    assert [r.evaluation.accuracy for r in results] == [1.0, 1.0]
    assert results[0].record["approx"] == [2]  # trained with the projection
    u = all_server_values(4, 4)
    got = np.asarray(cascade_forward(cascade, levels, jnp.asarray(u)))
    np.testing.assert_array_equal(got, u.sum(1) // 4)
    # The raw first-level outputs deviate; the analog link is what the margin decides.
    deviation = level_output_deviation(levels[0], cascade.level_dataset(1))
    assert deviation.shape == (3,) and 0 < deviation.max() < 0.5
    margin = level_input_margin(levels[1], cascade.level_dataset(2))
    analog = np.asarray(cascade_forward(cascade, levels, jnp.asarray(u), link="analog"))
    if (link_input_deviation(cascade, 1, deviation) < margin["margin"]).all():
        np.testing.assert_array_equal(analog, u.sum(1) // 4)
    # The trained levels, reloaded and tabulated, give the collective its cascade.
    reloaded = load_cascade_levels(cascade, tmp_path)
    table = cascade_table(cascade, reloaded, source=str(tmp_path))
    assert table.accuracies == (1.0, 1.0)
    np.testing.assert_array_equal(np.asarray(cascade_lookup(table, u.T)), u.sum(1) // 4)
    grads = jax.random.normal(jax.random.key(3), (4, 1000))
    through_onns = pmean_over_servers(grads, mode="onn", table=table, bits=4)
    through_ideal_units = pmean_over_servers(grads, cascade=cascade, bits=4)
    np.testing.assert_array_equal(through_onns, through_ideal_units)
    np.testing.assert_array_equal(through_onns, pmean_over_servers(grads, bits=4))
    # A rerun reuses the finished levels.
    _, rerun = train_cascade(
        cascade, tmp_path, configs=TINY_CONFIG, scenarios=tiny_scenarios(cascade), progress=False
    )
    assert [r.epochs for r in rerun] == [r.epochs for r in results]


def test_a_three_level_cascade_trains_to_exact_end_to_end(tmp_path):
    cascade = make_cascade(2, (2, 2, 2), inputs=1)
    assert [cascade.level_dataset(level).size for level in (1, 2, 3)] == [7, 15, 31]
    config = TINY_CONFIG.replace(batch_size=8, learning_rate=3e-3)
    levels, results = train_cascade(
        cascade, tmp_path, configs=config, scenarios=tiny_scenarios(cascade, 64), progress=False
    )
    assert [r.evaluation.accuracy for r in results] == [1.0, 1.0, 1.0]
    u = all_server_values(2, 8)
    got = np.asarray(cascade_forward(cascade, levels, jnp.asarray(u)))
    np.testing.assert_array_equal(got, u.sum(1) // 8)


def pmean_over_servers(grads, **options):
    """``optinc_jax.pmean`` of ``grads [N, ...]`` over ``N`` devices (one server each)."""
    servers = grads.shape[0]
    mesh = Mesh(np.array(jax.devices()[:servers]), ("servers",))

    def average(g):
        return pmean(g[0], "servers", **options)

    mapped = jax.shard_map(average, mesh=mesh, in_specs=P("servers"), out_specs=P())
    return np.asarray(jax.jit(mapped)(grads))


@pytest.mark.parametrize(
    ("bits", "fanins", "inputs", "variant"),
    [
        (4, (2, 2), 2, "exact"),
        (4, (2, 2), 2, "naive"),
        (2, (2, 2, 2), 1, "exact"),
        (2, (2, 2, 2), 1, "naive"),
        (2, (3, 2), 1, "exact"),
    ],
)
def test_cascade_tables_match_brute_force_over_all_server_combinations(
    bits, fanins, inputs, variant
):
    cascade = make_cascade(bits, fanins, inputs=inputs, variant=variant)
    table = cascade_table(cascade)
    assert table.accuracies == (1.0,) * len(fanins)
    assert [t.shape[0] for t in table.tables] == [
        cascade.level_dataset(level).size for level in range(1, len(fanins) + 1)
    ]
    u = all_server_values(bits, cascade.servers)
    expected = u.sum(1) // cascade.servers if variant == "exact" else double_floor(u, fanins)
    looked_up = np.asarray(cascade_lookup(table, u.T))
    assert looked_up.shape == expected.shape
    np.testing.assert_array_equal(looked_up, expected)
    averaged = np.asarray(cascade_average_codes(cascade, u.T))
    assert averaged.shape == expected.shape
    np.testing.assert_array_equal(averaged, expected)


def test_a_wrong_level_table_entry_shows_in_the_lookup_and_its_accuracy():
    cascade = make_cascade(4, (2, 2), inputs=2)
    good = cascade_table(cascade)
    broken_level = IdealLevel(cascade.level_dataset(2))
    bad_index = 7
    levels = (
        CascadeLevel(IdealLevel(cascade.level_dataset(1)), None),
        CascadeLevel(lambda params, x: broken_level(params, x).at[bad_index].add(1.0), None),
    )
    # The level-2 function is wrong on one row of every batch: the chunk's row 7.
    bad = cascade_table(cascade, levels)
    assert bad.accuracies[0] == 1.0 and bad.accuracies[1] < 1.0
    u = all_server_values(4, 4)
    wrong = np.asarray(cascade_lookup(bad, u.T)) != np.asarray(cascade_lookup(good, u.T))
    assert wrong.any()


def test_pmean_goes_through_the_cascade_for_more_servers_than_a_unit():
    grads = jax.random.normal(jax.random.key(0), (8, 3072)) * jnp.logspace(-3, 1, 3072)[None]
    exact = make_cascade(8, (4, 2))
    naive = make_cascade(8, (4, 2), variant="naive")
    ideal = pmean_over_servers(grads)  # one ideal 8-server unit: floor(sum u / 8)
    np.testing.assert_array_equal(pmean_over_servers(grads, cascade=exact), ideal)
    through_table = pmean_over_servers(grads, mode="onn", table=cascade_table(exact))
    np.testing.assert_array_equal(through_table, ideal)
    floored_twice = pmean_over_servers(grads, cascade=naive)
    assert 0.05 < np.mean(floored_twice != ideal) < 0.5  # eq. 9 is wrong on some inputs
    assert np.all(floored_twice <= ideal)  # and only ever low
    # Fewer servers than inputs: dark inputs (code 0) fill the cascade, and the output
    # code t = floor(sum u / 8) is read as 2 t: the ideal 4-server average floored to even.
    four = pmean_over_servers(grads[:4], cascade=exact)
    differs = ~np.isclose(four, pmean_over_servers(grads[:4]), rtol=1e-5, atol=0)
    assert 0.2 < np.mean(differs) < 0.8  # the odd averages
    exponents = (
        np.floor(np.log2(np.max(np.abs(np.asarray(grads[:4])).reshape(4, -1, 256), axis=(0, 2))))
        + 1
    )
    step = np.repeat(2.0**exponents / 127, 256)  # each block's quantization step
    codes = np.round(np.asarray(grads[:4]) / step) + 128  # the servers' offset-binary codes
    expected = (2 * (codes.sum(0) // 8) - 128) * step
    np.testing.assert_allclose(four, expected, rtol=1e-6, atol=0)


def test_pmean_refuses_more_servers_than_the_cascade_holds():
    with pytest.raises(ValueError, match="more than the 4 inputs of the cascade"):
        pmean_over_servers(jnp.ones((8, 4)), cascade=make_cascade(8, (2, 2)))
    with pytest.raises(ValueError, match="cascade= is used only with mode='ideal'"):
        pmean(jnp.ones(4), "servers", mode="inject", cascade=make_cascade(8, (2, 2)))
    with pytest.raises(ValueError, match="the cascade is of 4-bit units"):
        pmean(jnp.ones(4), "servers", cascade=make_cascade(4, (2, 2), inputs=2))
