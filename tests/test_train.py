import json

import chex
import jax
import numpy as np
import pytest

from optinc_jax import (
    export_arrays,
    load_exported,
    machine_description,
    make_scenario,
    mlp_forward_numpy,
    onn_weights,
    register_scenario,
    save_exported,
)
from optinc_jax.learning import step as step_module
from optinc_jax.learning import trainer as trainer_module
from optinc_jax.learning.checkpoint import CheckpointError
from optinc_jax.learning.config import TrainConfig, projection_due
from optinc_jax.learning.trainer import build_training, load_run, train_onn
from optinc_jax.photonics.approx import approx_diag_unitary, diag_unitary_residual

register_scenario(
    make_scenario(
        "test-4b2s", bits=4, servers=2, layers=(2, 64, 64, 64, 2), approx=(1, 2, 3, 4), inputs=2
    ),
    overwrite=True,
)
TINY = TrainConfig(
    scenario="test-4b2s",
    epochs=200,
    batch_size=8,
    switch_epoch=150,
    learning_rate=1e-2,
    symbol_weight_base=1.0,
    checkpoint_every=25,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny")
    return workdir, train_onn(TINY, workdir, progress=False)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("layers", [(1, 2, 3, 4), (2, 4)])
def test_the_recorded_residual_is_the_largest_of_the_selected_matrices(side, layers):
    # On the random initial network (far from the hardware form) the one-program residual
    # equals the core's per-matrix diag_unitary_residual, maximised over the selection.
    config = TINY.replace(approx_side=side)
    params = build_training(config).initial_state.params
    residuals = [
        float(diag_unitary_residual(weight, side=side)) for weight, _ in onn_weights(params)
    ]
    got = trainer_module._approx_residual(config, layers, params)
    assert got == pytest.approx(max(residuals[index - 1] for index in layers), rel=1e-5)
    assert min(residuals) > 0.05 and len(set(residuals)) == len(residuals)


def test_tiny_scenario_reaches_exact_projected_accuracy(trained):
    tmp_path, result = trained
    assert result.evaluation.accuracy == 1.0
    assert result.epochs <= TINY.epochs
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["accuracy"] == 1.0 and record["error_histogram"] == {}
    assert record["config"]["scenario"] == "test-4b2s" and record["epochs"] == result.epochs
    assert 0 < record["area_ratio"] < 1 and record["train_seconds"] > 0
    assert record["machine"] == machine_description()  # the CPU the epochs depend on
    assert (tmp_path / "training.png").stat().st_size > 10_000
    # every selected matrix is exactly (to float error) of diag x unitary form
    for weight, _ in onn_weights(result.params):
        np.testing.assert_allclose(weight, approx_diag_unitary(weight), atol=1e-5)
    # and the record says how exactly: the largest relative distance, float rounding
    assert 0 <= record["approx_residual"] < 2e-6


def test_resuming_a_finished_run_trains_no_further(trained):
    run_dir, result = trained
    assert result.epochs < TINY.epochs  # it stopped at the first projected 100 %
    again = train_onn(TINY, run_dir, progress=False, resume=True)
    assert again.epochs == result.epochs and again.evaluation == result.evaluation


def test_export_agrees_with_independent_numpy_evaluation(trained, tmp_path):
    run_dir, result = trained
    loaded = load_run(run_dir)
    assert loaded.epoch == result.epochs
    # the reloaded network is bit for bit the one that was evaluated
    chex.assert_trees_all_close(loaded.params, result.params, atol=0, rtol=0)
    arrays = export_arrays(
        loaded.model, loaded.params, bits=4, servers=2, approx_layers=loaded.approx_layers
    )
    path = save_exported(tmp_path / "weights.npz", arrays)
    exported = load_exported(path)
    # an independent evaluation: brute force over all server combinations in numpy
    u = np.array(np.meshgrid(np.arange(16), np.arange(16))).reshape(2, -1)
    symbols = (u[:, :, None] // 4 ** np.arange(2)) % 4  # [server, combo, K]
    x = symbols.sum(axis=0) / 2.0  # r = 1: x_m = mean of symbol m
    y = mlp_forward_numpy(exported, x)
    t_hat = (np.clip(np.round(y), 0, 3) * 4 ** np.arange(2)).sum(-1)
    accuracy = np.mean(t_hat == u.sum(0) // 2)
    assert accuracy == result.evaluation.accuracy == 1.0


def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path, train_killed_after):
    config = TINY.replace(epochs=7, stop_at_full_accuracy=False, checkpoint_every=2)
    straight = train_onn(config, tmp_path / "straight", progress=False)

    train_killed_after(config, tmp_path / "resumed", 5)
    with pytest.raises(CheckpointError, match="resume"):
        train_onn(config, tmp_path / "resumed", progress=False)
    with pytest.raises(CheckpointError, match="config"):
        train_onn(config.replace(seed=1), tmp_path / "resumed", progress=False, resume=True)
    resumed = train_onn(config, tmp_path / "resumed", progress=False, resume=True)
    assert resumed.epochs == straight.epochs == 7
    chex.assert_trees_all_close(resumed.params, straight.params, atol=0, rtol=0)
    assert resumed.record["history"]["loss"] == straight.record["history"]["loss"]


def test_a_conditioned_full_row_follows_the_approximated_one_then_trains_freely(
    tmp_path, train_killed_after
):
    def is_projected(params):
        return all(
            np.allclose(weight, approx_diag_unitary(weight), atol=1e-5)
            for weight, _ in onn_weights(params)
        )

    approximated = TINY.replace(epochs=3, stop_at_full_accuracy=False, checkpoint_every=1)
    full = approximated.replace(approx="none")
    conditioned = full.replace(condition_until=3)
    # Conditioned through the last epoch, the full row is the approximated row, bit for bit
    # (same draws, same projections), only its area differs.
    reference = train_onn(approximated, tmp_path / "approximated", progress=False)
    same = train_onn(conditioned, tmp_path / "same", progress=False)
    chex.assert_trees_all_close(same.params, reference.params, atol=0, rtol=0)
    assert same.record["history"] == reference.record["history"]
    assert same.record["area_ratio"] == 1.0 > reference.record["area_ratio"]
    assert same.record["approx_residual"] is None and reference.record["approx_residual"] < 2e-6
    # Released after epoch 2, its last epoch trains the matrices freely.
    released = conditioned.replace(condition_until=2)
    free_end = train_onn(released, tmp_path / "released", progress=False)
    assert not is_projected(free_end.params)
    assert free_end.record["history"]["loss"][:2] == reference.record["history"]["loss"][:2]
    assert not is_projected(train_onn(full, tmp_path / "free", progress=False).params)

    # killed right after the release, it resumes to the uninterrupted result
    train_killed_after(released, tmp_path / "resumed", 2)
    resumed = train_onn(released, tmp_path / "resumed", progress=False, resume=True)
    chex.assert_trees_all_close(resumed.params, free_end.params, atol=0, rtol=0)


def test_corrupt_checkpoint_is_reported(tmp_path):
    train_onn(TINY.replace(epochs=2, stop_at_full_accuracy=False), tmp_path, progress=False)
    for path in (tmp_path / "checkpoints").rglob("*"):
        if path.is_file() and "record" not in str(path):
            path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_run(tmp_path)


def test_config_validation():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="stage2"):
        TrainConfig(stage2="paper")
    with pytest.raises(ValueError, match="unknown scenario"):
        TrainConfig(scenario="nope")


def test_epoch_is_compiled_once_per_stage_and_reused_by_an_equal_run(tmp_path):
    config = TINY.replace(epochs=6, switch_epoch=3, stop_at_full_accuracy=False)
    before = step_module.train_epoch._cache_size()
    train_onn(config, tmp_path / "first", progress=False)
    assert step_module.train_epoch._cache_size() - before == 2
    # A second run of an equal config (new model, new closures) compiles nothing new.
    train_onn(config, tmp_path / "second", progress=False)
    assert step_module.train_epoch._cache_size() - before == 2


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        TINY.replace(pad_levels=1, bias_learning_rate_scale=2.0, stage2_learning_rate_scale=0.5),
    ],
    ids=["plain", "padded-biases-scaled"],
)
def test_the_abstract_set_up_has_the_run_s_shapes_and_compiles_nothing(config, compilations):
    with compilations() as compiled:
        shapes = build_training(config, abstract=True)
    assert compiled == []
    setup = build_training(config)
    leaves = jax.tree.leaves(shapes.initial_state)
    assert leaves and all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)
    assert jax.tree.structure(shapes.initial_state) == jax.tree.structure(setup.initial_state)

    def described(tree):
        return jax.tree.map(lambda x: (x.shape, x.dtype, x.weak_type), tree)

    assert described(shapes.initial_state) == described(setup.initial_state)
    # the same forward (what the compiled programs are keyed by) and the same data
    assert shapes.apply_fn == setup.apply_fn and hash(shapes.apply_fn) == hash(setup.apply_fn)
    assert shapes.steps_per_epoch == setup.steps_per_epoch
    assert shapes.train_dataset.size == setup.train_dataset.size
    assert shapes.judged_range() == setup.judged_range()


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [TrainConfig(), TrainConfig.for_scenario("8b4s")],
    ids=["paper-defaults", "preset-of-make-demo"],
)
def test_default_scenario_reaches_exact_projected_accuracy(tmp_path, config):
    """The README main job: 8b4s, every layer approximated, 100 % after projection."""
    result = train_onn(config, tmp_path, progress=False)
    assert result.evaluation.accuracy == 1.0
    assert abs(result.record["area_ratio"] - 0.392) < 0.001


def test_data_parallel_training_matches_one_device(tmp_path):
    from jax.sharding import Mesh

    config = TINY.replace(epochs=3, stop_at_full_accuracy=False)
    single = train_onn(config, tmp_path / "single", progress=False)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = train_onn(config, tmp_path / "sharded", progress=False, mesh=mesh)
    assert sharded.record["devices"] == 8
    # without focus or a stop margin a mesh run evaluates without the scoring pass
    assert "scored_epoch" not in sharded.record["history"]
    chex.assert_trees_all_close(sharded.params, single.params, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(
        sharded.record["history"]["loss"], single.record["history"]["loss"], rtol=1e-5
    )
    with pytest.raises(ValueError, match="divisible"):
        train_onn(config.replace(batch_size=12), tmp_path / "bad", progress=False, mesh=mesh)


def test_stop_margin_without_focus_scores_every_evaluation_on_a_mesh(tmp_path):
    from jax.sharding import Mesh

    config = TINY.replace(epochs=3, stop_margin=0.1)
    single = train_onn(config, tmp_path / "single", progress=False)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = train_onn(config, tmp_path / "sharded", progress=False, mesh=mesh)
    for result in (single, sharded):
        assert result.record["history"]["scored_epoch"] == [1, 2]  # the last: full evaluation
    np.testing.assert_allclose(
        sharded.record["history"]["min_margin"], single.record["history"]["min_margin"], atol=1e-4
    )


def test_projection_schedule():
    config = TINY.replace(project_every=3, project_start=1)
    assert [e for e in range(1, 12) if projection_due(config, e)] == [4, 7, 10]
    assert all(projection_due(TINY, e) for e in range(1, 5))


def test_json_is_written_strict_and_atomically(tmp_path):
    import optinc_jax as oi

    path = tmp_path / "result.json"
    oi.write_json_atomically(path, {"accuracy": 1.0, "errors": {"-1": 2}})
    assert json.loads(path.read_text()) == {"accuracy": 1.0, "errors": {"-1": 2}}
    # NaN or infinity would be invalid JSON: refused, and the file on disk is untouched.
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="JSON"):
            oi.write_json_atomically(path, {"accuracy": bad})
        assert json.loads(path.read_text())["accuracy"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


@pytest.mark.parametrize("stage", [1, 2])
def test_stage2_tolerance_shapes_the_loss_of_stage_2_only(stage):
    from optinc_jax import draw_epoch_indices, symbol_weights, two_stage_loss
    from optinc_jax.learning.trainer import build_training

    config = TINY.replace(symbol_tolerance=0.1, stage2_tolerance=0.45)
    setup = build_training(config)
    key = jax.random.key(7)
    # one optimizer step: its loss is the loss of the initial parameters on the first batch
    _, loss = step_module.train_epoch(
        jax.tree_util.tree_map(lambda leaf: leaf.copy(), setup.initial_state),
        key,
        apply_fn=setup.apply_fn,
        dataset=setup.dataset,
        config=config,
        stage=stage,
        steps=1,
    )
    indices = draw_epoch_indices(
        key,
        size=setup.dataset.size,
        steps=1,
        batch_size=config.batch_size,
        permutation_limit=step_module.PERMUTATION_LIMIT,
    )
    samples = setup.dataset.samples(indices[0])
    y = setup.apply_fn(setup.initial_state.params, samples.inputs)

    def expected(tolerance):
        return two_stage_loss(
            y,
            samples.target_symbols,
            samples.target,
            stage=stage,
            bits=setup.dataset.bits,
            weights=symbol_weights(setup.dataset.bits // 2, base=config.symbol_weight_base),
            tolerance=tolerance,
        )

    np.testing.assert_allclose(loss, expected({1: 0.1, 2: 0.45}[stage]), rtol=1e-5)
    assert not np.isclose(expected(0.1), expected(0.45), rtol=1e-3)  # the zones differ here
