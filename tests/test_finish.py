"""Hinge finishing: trains on exactly the inputs its hinge charges, never returns worse."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optinc_jax import (
    TrainConfig,
    evaluate_exhaustive,
    finish_on_hard_set,
    load_run,
    make_scenario,
    projection_diag_unitary,
    receiver_hinge,
    symbol_margins,
    train_onn,
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-96, 288), min_size=1, max_size=16),
    st.lists(st.integers(0, 3), min_size=16, max_size=16),
    st.sampled_from([0.125, 0.25, 0.3125, 0.375]),
)
def test_hinge_charges_exactly_the_inputs_within_the_margin_the_finishing_scores(
    sixty_fourths, targets, tolerance
):
    # Dyadic amplitudes: both sides are computed exactly, ties included.
    y = jnp.asarray(sixty_fourths, jnp.float32) / 64
    target = jnp.asarray(targets[: len(sixty_fourths)], jnp.int32)
    hinge = np.asarray(receiver_hinge(y, target, tolerance))
    margin = np.asarray(symbol_margins(y, target))
    np.testing.assert_array_equal(hinge > 0, margin < 0.5 - tolerance)
    for value, level, charged in zip(np.asarray(y), targets, hinge, strict=False):
        outer = (level == 0 and value < 0) or (level == 3 and value > 3)
        expected = 0.0 if outer else max(abs(value - level) - tolerance, 0.0)
        assert charged == pytest.approx(expected, abs=0)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """An 8b4s network, every matrix approximated, stopped early with wrong inputs left."""
    config = TrainConfig(scenario="8b4s", epochs=40, checkpoint_every=40)
    workdir = tmp_path_factory.mktemp("run")
    train_onn(config, workdir, progress=False)
    return load_run(workdir)


def test_finishing_cuts_the_wrong_inputs_and_keeps_the_matrices_on_the_hardware(short_run):
    dataset, approx = short_run.dataset, short_run.approx_layers
    assert approx == (1, 2, 3, 4, 5, 6)
    start = evaluate_exhaustive(short_run.apply_fn, short_run.params, dataset)
    before = start.total - start.correct
    assert 100 < before < 2000
    result = finish_on_hard_set(
        short_run.apply_fn,
        short_run.params,
        dataset,
        approx_layers=approx,
        rounds=6,
        steps=5,
        learning_rate=3e-4,
    )
    assert result.wrong_before == before
    assert result.wrong_after < 0.8 * before
    assert result.wrong_after == min(result.wrong_by_round)
    assert result.wrong_by_round[result.best_round] == result.wrong_after
    assert result.wrong_by_round.index(result.wrong_after) == result.best_round
    assert len(result.wrong_by_round) == len(result.hard_by_round) == 7
    evaluation = evaluate_exhaustive(short_run.apply_fn, result.params, dataset)
    assert evaluation.total - evaluation.correct == result.wrong_after
    assert sum(result.symbol_errors_after) >= result.wrong_after > 0
    # Every approximated matrix is still diagonal x unitary: projecting again is a no-op.
    again = projection_diag_unitary(result.params, approx)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(result.params), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_finishing_returns_the_given_network_when_every_round_is_worse(short_run):
    dataset = short_run.dataset
    given_params = jax.tree.map(np.asarray, short_run.params)
    result = finish_on_hard_set(
        short_run.apply_fn, short_run.params, dataset, rounds=2, steps=3, learning_rate=10.0
    )
    assert result.best_round == 0
    assert result.wrong_after == result.wrong_before
    assert all(wrong > result.wrong_before for wrong in result.wrong_by_round[1:])
    for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(given_params), strict=True):
        np.testing.assert_array_equal(a, b)
    # The caller's parameters are not consumed by the donated steps.
    for a, b in zip(jax.tree.leaves(short_run.params), jax.tree.leaves(given_params), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tolerance", 0.5, "tolerance"),
        ("slack", 0.4, "slack"),
        ("rounds", 0, "rounds"),
        ("steps", 0, "steps"),
        ("learning_rate", 0.0, "learning_rate"),
    ],
)
def test_finishing_refuses_values_outside_their_ranges(short_run, field, value, message):
    with pytest.raises(ValueError, match=message):
        finish_on_hard_set(
            short_run.apply_fn, short_run.params, short_run.dataset, **{field: value}
        )


def _short_finished_run(**overrides) -> TrainConfig:
    """Two short epochs of 8b4s with a free last matrix, finished and refit at the end."""
    fields = dict(
        scenario="8b4s",
        approx="none",
        epochs=2,
        steps_per_epoch=10,
        switch_epoch=1,
        checkpoint_every=1,
        finish_rounds=2,
        finish_learning_rate=1e-3,
        refit_iterations=3,
    )
    return TrainConfig(**(fields | overrides))


def _without_seconds(record: dict) -> dict:
    return {key: value for key, value in record.items() if key != "seconds"}


def test_a_run_finishes_then_refits_and_a_killed_run_resumes_to_the_same_network(
    tmp_path, train_killed_after
):
    config = _short_finished_run()
    plain = train_onn(
        dataclasses.replace(config, finish_rounds=0, refit_iterations=0),
        tmp_path / "plain",
        progress=False,
    )
    result = train_onn(config, tmp_path / "run", progress=False)
    finish, refit = result.record["history"]["finish"], result.record["history"]["refit"]
    # The finishing starts from the trained network and the refit from the finished one.
    assert finish["wrong_before"] == plain.evaluation.total - plain.evaluation.correct
    assert finish["wrong_after"] < finish["wrong_before"] and finish["seconds"] > 0
    np.testing.assert_allclose(refit["wrong_symbols_before"], finish["symbol_errors_after"], atol=2)
    # What the run reports is what its directory holds.
    loaded = load_run(tmp_path / "run")
    again = evaluate_exhaustive(loaded.apply_fn, loaded.params, loaded.dataset)
    assert again.correct == result.evaluation.correct
    assert again.error_histogram == result.evaluation.error_histogram

    train_killed_after(config, tmp_path / "killed", 1)
    resumed = train_onn(config, tmp_path / "killed", resume=True, progress=False)
    history = resumed.record["history"]
    assert _without_seconds(history["finish"]) == _without_seconds(finish)
    assert _without_seconds(history["refit"]) == _without_seconds(refit)
    assert resumed.evaluation.correct == result.evaluation.correct
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(result.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_data_parallel_run_finishes_on_one_device(tmp_path):
    from jax.sharding import Mesh

    config = _short_finished_run(approx=None, refit_iterations=0, finish_rounds=1)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = train_onn(config, tmp_path, progress=False, mesh=mesh)
    assert sharded.record["devices"] == len(jax.devices()) == 8
    finish = sharded.record["history"]["finish"]
    assert finish["wrong_after"] == sharded.evaluation.total - sharded.evaluation.correct
    loaded = load_run(tmp_path)
    again = evaluate_exhaustive(loaded.apply_fn, loaded.params, loaded.dataset)
    assert again.correct == sharded.evaluation.correct


def test_finish_fields_are_validated_and_optional_in_records():
    with pytest.raises(ValueError, match="finish_slack"):
        TrainConfig(finish_rounds=1, finish_tolerance=0.2, finish_slack=0.3)
    with pytest.raises(ValueError, match="finish_steps"):
        TrainConfig(finish_steps=0)
    config = TrainConfig(finish_rounds=3, finish_learning_rate=3e-4)
    assert TrainConfig.from_json(config.to_json()) == config
    assert not any(name.startswith("finish_") for name in TrainConfig().to_json())


def _finish_approximated(run, **options):
    """The finishing of ``run``'s network, its approximated matrices kept on the hardware."""
    return finish_on_hard_set(
        run.apply_fn, run.params, run.dataset, approx_layers=run.approx_layers, **options
    )


def test_a_hard_set_summed_in_chunks_takes_the_same_steps(short_run):
    def finish(gradient_chunk):
        return _finish_approximated(
            short_run, rounds=1, steps=2, learning_rate=3e-4, gradient_chunk=gradient_chunk
        )

    whole, chunked = finish(1 << 18), finish(1000)  # 1000 does not divide the padded rows
    assert whole.hard_by_round[0] > 3000  # several chunks, the last one padded
    assert chunked.wrong_by_round == whole.wrong_by_round
    assert whole.best_round == chunked.best_round == 1  # the stepped networks are compared
    for a, b in zip(jax.tree.leaves(chunked.params), jax.tree.leaves(whole.params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_backtracking_undoes_a_round_that_raised_the_hinge_and_shortens_the_step(short_run):
    def finish(backtrack):
        return _finish_approximated(
            short_run, rounds=6, steps=3, learning_rate=0.3, backtrack=backtrack
        )

    plain, backtracked = finish(0.0), finish(0.1)
    # A step of 0.3 throws the network off and the plain finishing never comes back.
    assert plain.best_round == 0 and plain.wrong_after == plain.wrong_before
    assert plain.learning_rate_by_round == (0.3,) * 6 and plain.hinge_by_round == ()
    # Backtracking steps again from where a round started, ten times shorter, whenever the
    # round raised the whole-grid hinge, and keeps the step after a round that lowered it.
    wrong, rates = backtracked.wrong_by_round, backtracked.learning_rate_by_round
    hinges = backtracked.hinge_by_round
    assert wrong[:2] == plain.wrong_by_round[:2] and wrong[1] > wrong[0]
    assert len(rates) == len(hinges) == 6 and rates[0] == 0.3
    accepted = hinges[0]
    for index in range(1, len(rates)):
        raised = hinges[index] > accepted
        assert rates[index] == pytest.approx(rates[index - 1] * (0.1 if raised else 1.0))
        accepted = accepted if raised else hinges[index]
    assert hinges[1] > hinges[0] and rates[-1] < 1e-2
    assert backtracked.wrong_after < 0.9 * backtracked.wrong_before
    evaluation = evaluate_exhaustive(short_run.apply_fn, backtracked.params, short_run.dataset)
    assert evaluation.total - evaluation.correct == backtracked.wrong_after
    with pytest.raises(ValueError, match="backtrack"):
        finish(1.0)
    with pytest.raises(ValueError, match="finish_backtrack"):
        TrainConfig(finish_rounds=1, finish_backtrack=-0.5)
    config = TrainConfig(finish_rounds=3, finish_backtrack=0.5)
    assert TrainConfig.from_json(config.to_json()) == config


def test_a_network_the_finishing_brings_to_full_accuracy_is_not_refit(tmp_path):
    # trained on past its first 100 % (epoch 2 of 6): the finishing finds it right
    # everywhere at its round 0
    scenario = make_scenario(
        "finish-4b1s", bits=4, servers=1, layers=(2, 16, 2), approx=(1, 2), inputs=2
    )
    config = _short_finished_run(
        scenario=scenario,
        epochs=6,
        steps_per_epoch=200,
        batch_size=4,
        switch_epoch=3,
        learning_rate=1e-2,
        stop_at_full_accuracy=False,
    )
    assert config.approx == "none"
    result = train_onn(config, tmp_path, progress=False)
    assert result.record["history"]["finish"]["wrong_after"] == 0
    assert "refit" not in result.record["history"]
    assert result.evaluation.correct == result.evaluation.total
