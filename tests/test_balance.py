"""Target-balanced sampling: exact grouping, equal class frequencies, wired into runs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from optinc_jax import (
    ONN,
    TrainConfig,
    batch_share,
    class_weights,
    draw_balanced,
    draw_epoch_indices,
    find_hard_samples,
    finish_on_hard_set,
    load_run,
    make_dataset_spec,
    onn_apply_fn,
    target_classes,
    train_onn,
)


def _targets(spec):
    return np.asarray(spec.samples(jnp.arange(spec.size)).target)


@pytest.mark.parametrize(("bits", "servers", "inputs", "chunk"), [(4, 2, 2, 5), (8, 4, 4, 4096)])
def test_classes_group_every_index_by_its_target(bits, servers, inputs, chunk):
    spec = make_dataset_spec(bits, servers, inputs)
    classes = target_classes(spec, chunk_size=chunk)
    targets = _targets(spec)
    present, counts = np.unique(targets, return_counts=True)
    np.testing.assert_array_equal(np.asarray(classes.targets), present)
    np.testing.assert_array_equal(np.asarray(classes.counts), counts)
    order = np.asarray(classes.order)
    np.testing.assert_array_equal(np.sort(order), np.arange(spec.size))  # each index once
    for target, start, count in zip(present, np.asarray(classes.starts), counts, strict=True):
        members = order[start : start + count]
        assert np.all(targets[members] == target) and np.all(np.diff(members) > 0)


def test_balanced_draws_give_every_target_the_same_share():
    spec = make_dataset_spec(8, 4)  # 28,561 inputs over 256 targets, 1 to ~300 each
    classes = target_classes(spec)
    counts = np.asarray(classes.counts)
    assert counts.min() == 1 and counts.max() > 100 * counts.min()
    draws = 512_000
    indices = np.asarray(draw_balanced(jax.random.key(0), classes, (draws,)))
    assert indices.min() >= 0 and indices.max() < spec.size
    per_target = np.bincount(_targets(spec)[indices], minlength=256)
    expected = draws / len(counts)  # 2,000 each
    # binomial sd ~ 44.6: every class within 5 sd (the chance that one of 256 falls
    # outside is ~1.5e-4 for a correct draw; this seed is fixed)
    assert np.all(np.abs(per_target - expected) < 5 * np.sqrt(expected))
    # within a class, its members are equally likely: the largest class, chi-square
    biggest = int(np.argmax(counts))
    start = int(classes.starts[biggest])
    members = np.asarray(classes.order[start : start + counts[biggest]])
    hits = np.bincount(np.searchsorted(members, indices[np.isin(indices, members)]))
    assert len(hits) == counts[biggest]
    chi2 = float(np.sum((hits - hits.mean()) ** 2 / hits.mean()))
    assert chi2 < counts[biggest] + 5 * np.sqrt(2 * counts[biggest])


def test_uniform_draws_would_miss_the_rare_targets_the_balanced_ones_reach():
    spec = make_dataset_spec(8, 4)
    classes = target_classes(spec)
    rare = set(np.asarray(classes.targets)[np.asarray(classes.counts) <= 4].tolist())
    targets = _targets(spec)
    key = jax.random.key(1)
    uniform = targets[np.asarray(jax.random.randint(key, (25_600,), 0, spec.size))]
    balanced = targets[np.asarray(draw_balanced(key, classes, (25_600,)))]
    share_uniform = np.isin(uniform, list(rare)).mean()
    share_balanced = np.isin(balanced, list(rare)).mean()
    assert share_balanced > 10 * share_uniform
    assert abs(share_balanced - len(rare) / len(classes.targets)) < 0.01


@pytest.mark.parametrize("focus", [0, 16])
def test_epoch_draw_adds_balanced_columns_and_keeps_the_others(focus):
    spec = make_dataset_spec(8, 4)
    classes = target_classes(spec)
    hard = None
    if focus:
        apply_fn, params = onn_apply_fn(
            ONN((4, 8, 4), rngs=nnx.Rngs(0), input_shift=1.5, input_scale=2 / 3)
        )
        hard, _ = find_hard_samples(apply_fn, params, spec, margin=0.25, chunk_size=4096)
    common = dict(size=spec.size, steps=10, batch_size=64, permutation_limit=2**20)
    key = jax.random.key(3)
    without = draw_epoch_indices(key, **common, focus=focus, hard=hard)
    with_balance = draw_epoch_indices(
        key, **common, focus=focus, hard=hard, balance=20, classes=classes
    )
    assert with_balance.shape == without.shape == (10, 64)
    plain = 64 - focus - 20
    # the uniform columns are the same permutation, cut shorter; the hard ones are unchanged
    np.testing.assert_array_equal(
        with_balance[:, :plain].ravel(), without[:, : 64 - focus].ravel()[: 10 * plain]
    )
    if focus:
        np.testing.assert_array_equal(with_balance[:, -focus:], without[:, -focus:])
    balanced = np.asarray(with_balance[:, plain : plain + 20])
    assert np.isin(balanced, np.arange(spec.size)).all()
    with pytest.raises(ValueError, match="leave room"):
        draw_epoch_indices(key, **common, balance=64, classes=classes)


def test_balance_fraction_is_validated_and_optional():
    assert "balance_fraction" not in TrainConfig().to_json()
    config = TrainConfig(balance_fraction=0.25, focus_fraction=0.25)
    assert TrainConfig.from_json(config.to_json()) == config
    assert batch_share(256, 0.25, name="balance_fraction") == 64
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="balance_fraction"):
            TrainConfig(balance_fraction=bad)
    with pytest.raises(ValueError, match="must be below 1"):
        TrainConfig(balance_fraction=0.5, focus_fraction=0.5)


def test_a_balanced_run_differs_from_a_uniform_one_and_resumes_identically(
    tmp_path, train_killed_after
):
    config = TrainConfig(
        epochs=3, steps_per_epoch=20, checkpoint_every=1, stop_at_full_accuracy=False
    )
    balanced = config.replace(balance_fraction=0.25)
    uniform_run = train_onn(config, tmp_path / "uniform", progress=False)
    straight = train_onn(balanced, tmp_path / "straight", progress=False)
    assert straight.record["history"]["loss"] != uniform_run.record["history"]["loss"]
    train_killed_after(balanced, tmp_path / "resumed", 2)
    resumed = train_onn(balanced, tmp_path / "resumed", progress=False, resume=True)
    chex.assert_trees_all_close(resumed.params, straight.params, atol=0, rtol=0)


def test_class_weights_give_every_target_the_same_total():
    spec = make_dataset_spec(8, 4)
    classes = target_classes(spec)
    targets = jnp.asarray(_targets(spec))
    weights = np.asarray(class_weights(classes, targets), np.float64)
    assert weights.sum() == pytest.approx(spec.size, rel=1e-5)
    per_target = np.bincount(np.asarray(targets), weights=weights)
    np.testing.assert_allclose(per_target, spec.size / 256, rtol=1e-5)
    # the rarest target (one input) weighs the most, by the ratio of the class sizes
    counts = np.asarray(classes.counts)
    assert weights.max() / weights.min() == pytest.approx(counts.max() / counts.min(), rel=1e-5)


def test_a_balanced_finishing_weighs_the_rare_targets_and_never_ends_worse(tmp_path):
    config = TrainConfig(epochs=8, checkpoint_every=8, stop_at_full_accuracy=False)
    train_onn(config, tmp_path, progress=False)
    run = load_run(tmp_path)
    common = dict(approx_layers=run.approx_layers, rounds=3, steps=3, learning_rate=3e-4)
    plain = finish_on_hard_set(run.apply_fn, run.params, run.dataset, **common)
    classes = target_classes(run.dataset)
    balanced = finish_on_hard_set(run.apply_fn, run.params, run.dataset, classes=classes, **common)
    assert balanced.wrong_before == plain.wrong_before > 0
    assert balanced.wrong_after <= balanced.wrong_before
    assert balanced.wrong_by_round != plain.wrong_by_round  # a different gradient

    # one server: every target has one input, every weight is exactly 1, the finishing
    # is the plain one
    dataset = make_dataset_spec(4, 1, inputs=2)
    apply_fn, params = onn_apply_fn(
        ONN((2, 16, 2), rngs=nnx.Rngs(0), input_shift=1.5, input_scale=2 / 3, output_shift=1.5)
    )
    one_each = target_classes(dataset)
    assert np.all(np.asarray(class_weights(one_each, jnp.arange(16))) == 1.0)
    small = dict(rounds=2, steps=2, learning_rate=1e-2, chunk_size=16)
    equal = finish_on_hard_set(apply_fn, params, dataset, classes=one_each, **small)
    unweighted = finish_on_hard_set(apply_fn, params, dataset, **small)
    assert unweighted.wrong_before > 0 and len(unweighted.wrong_by_round) > 1
    assert equal.wrong_by_round == unweighted.wrong_by_round
    chex.assert_trees_all_close(equal.params, unweighted.params, atol=0, rtol=0)


def test_the_run_passes_the_classes_to_its_finishing(tmp_path):
    config = TrainConfig(
        epochs=2,
        steps_per_epoch=10,
        checkpoint_every=1,
        stop_at_full_accuracy=False,
        finish_rounds=2,
        finish_learning_rate=1e-3,
    )
    plain = train_onn(config, tmp_path / "plain", progress=False)
    balanced = train_onn(config.replace(finish_balance=True), tmp_path / "b", progress=False)
    assert plain.record["history"]["loss"] == balanced.record["history"]["loss"]
    finish_plain = plain.record["history"]["finish"]
    finish_balanced = balanced.record["history"]["finish"]
    assert finish_plain["wrong_before"] == finish_balanced["wrong_before"]
    assert finish_plain["wrong_by_round"] != finish_balanced["wrong_by_round"]
    assert TrainConfig.from_json(config.replace(finish_balance=True).to_json()).finish_balance
    assert "finish_balance" not in config.to_json()
    with pytest.raises(ValueError, match="finish_balance must be a bool"):
        TrainConfig(finish_balance=1)
