import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import train_distributed as experiment
from optinc_jax import (
    CheckpointError,
    DistributedConfig,
    TrainingDiverged,
    init_data_parallel_state,
    make_allreduce,
    make_train_step,
    table_ii_row,
    train_distributed,
)
from optinc_jax.network.collective import ErrorModel, exact_onn_table
from optinc_jax.network.data import Batch, ImageData

LR = 0.1
SERVERS = 4


@pytest.fixture(scope="module")
def mesh4():
    return Mesh(np.array(jax.devices()[:SERVERS]), ("data",))


def mse(outputs, targets):
    return jnp.mean((outputs - targets) ** 2)


def tiny_model():
    return nnx.Linear(6, 3, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))


@pytest.fixture(scope="module")
def problem(mesh4):
    """A linear model, a batch of 4 x 4 examples, and the hand-computed SGD update."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype(np.float32)
    y = rng.normal(size=(16, 3)).astype(np.float32)
    graphdef, state = nnx.split(tiny_model())
    params = nnx.to_pure_dict(state)

    def shard_loss(p, i):
        nnx.replace_by_pure_dict(state, p)
        return mse(nnx.merge(graphdef, state)(x[4 * i : 4 * i + 4]), y[4 * i : 4 * i + 4])

    shard_grads = [jax.grad(shard_loss)(params, i) for i in range(SERVERS)]
    mean_grad = jax.tree.map(lambda *g: sum(g) / SERVERS, *shard_grads)
    expected = jax.tree.map(lambda p, g: p - LR * g, params, mean_grad)
    peak = jax.tree.map(lambda *g: jnp.max(jnp.abs(jnp.stack(g))), *shard_grads)
    sharding = NamedSharding(mesh4, P("data"))
    batch = Batch(*jax.device_put((x, y, np.ones(16, np.float32)), sharding))
    return batch, expected, peak


def one_step(allreduce, mesh, batch, *, step_index=0, key=0):
    """Parameters after one step from the same initial model, and the jitted step."""
    tx = optax.sgd(LR)
    graphdef, state = init_data_parallel_state(tiny_model(), tx)
    step = make_train_step(graphdef, tx, allreduce, mesh, loss_fn=mse)
    state, loss = step(state, batch, np.int32(step_index), jax.random.key(key))
    return nnx.to_pure_dict(state.params), loss, step


def quantization_step(peak, bits):
    """One LSB of the block of a leaf (one block each here): 2^e / (2^(B-1) - 1)."""
    return jax.tree.map(lambda m: 2.0 ** np.frexp(float(m))[1] / (2 ** (bits - 1) - 1), peak)


# ---- one step with each all-reduce against the hand-computed update ---------------------


def test_exact_step_is_the_hand_computed_pmean_update(problem, mesh4):
    batch, expected, _ = problem
    params, loss, _ = one_step(make_allreduce("exact"), mesh4, batch)
    chex.assert_trees_all_close(params, expected, rtol=1e-6, atol=1e-7)
    assert params["kernel"].sharding.is_fully_replicated
    x, y = np.asarray(batch.inputs), np.asarray(batch.targets)
    model = tiny_model()
    losses = [float(mse(model(x[4 * i : 4 * i + 4]), y[4 * i : 4 * i + 4])) for i in range(4)]
    assert float(loss) == pytest.approx(np.mean(losses), rel=1e-6)


def test_ring_step_equals_exact_to_float_tolerance(problem, mesh4):
    batch, expected, _ = problem
    exact, _, _ = one_step(make_allreduce("exact"), mesh4, batch)
    ring, _, _ = one_step(make_allreduce("ring"), mesh4, batch)
    chex.assert_trees_all_close(ring, exact, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(ring, expected, rtol=1e-6, atol=1e-7)


def test_optinc_ideal_step_is_within_the_quantization_bound(problem, mesh4):
    batch, expected, peak = problem
    ideal, _, _ = one_step(make_allreduce("optinc-ideal", bits=8), mesh4, batch)
    # Per server rounding <= 1/2 LSB, the unit's floor < 1 LSB: |average error| < 3/2 LSB.
    bound = jax.tree.map(lambda s: 1.5 * LR * s + 1e-6, quantization_step(peak, 8))
    errors = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ideal, expected)
    assert all(errors[k] <= bound[k] for k in errors), (errors, bound)
    assert any(errors[k] > 1e-6 for k in errors)  # quantized: not the exact average


def test_optinc_onn_with_an_exact_table_is_optinc_ideal_exactly(problem, mesh4):
    batch, _, _ = problem
    ideal, _, _ = one_step(make_allreduce("optinc-ideal", bits=8), mesh4, batch)
    onn, _, _ = one_step(make_allreduce("optinc-onn", onn=exact_onn_table(8, 4)), mesh4, batch)
    chex.assert_trees_all_equal(onn, ideal)


def test_optinc_inject_adds_exactly_the_drawn_errors(problem, mesh4):
    batch, _, peak = problem
    ideal, _, _ = one_step(make_allreduce("optinc-ideal", bits=8), mesh4, batch)
    none = ErrorModel(8, 4, rate=0.0)
    clean, _, _ = one_step(make_allreduce("optinc-inject", errors=none), mesh4, batch)
    chex.assert_trees_all_equal(clean, ideal)
    always = ErrorModel(8, 4, rate=1.0, values=(1,), probabilities=(1.0,))
    shifted, _, _ = one_step(make_allreduce("optinc-inject", errors=always), mesh4, batch)
    lsb = quantization_step(peak, 8)  # every average one LSB up: every parameter LR LSB down
    chex.assert_trees_all_close(
        jax.tree.map(lambda a, b: a - b, ideal, shifted),
        jax.tree.map(lambda s, p: jnp.full(p.shape, LR * s), lsb, ideal),
        rtol=1e-4,
    )


def test_optinc_inject_with_the_worst_table_ii_row_is_a_16_bit_unit(problem, mesh4):
    batch, expected, peak = problem
    allreduce = make_allreduce("optinc-inject", errors="table2:worst")
    assert allreduce.bits == 16 and allreduce.errors.servers == 4
    assert allreduce.errors.rate == pytest.approx(1 - table_ii_row("worst").accuracy_percent / 100)
    params, _, _ = one_step(allreduce, mesh4, batch)
    bound = jax.tree.map(lambda s: 1.5 * LR * s + 1e-6, quantization_step(peak, 16))
    errors = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), params, expected)
    assert all(errors[k] <= bound[k] for k in errors)


def test_the_step_compiles_once(problem, mesh4):
    batch, _, _ = problem
    tx = optax.sgd(LR)
    graphdef, state = init_data_parallel_state(tiny_model(), tx)
    state = jax.device_put(state, NamedSharding(mesh4, P()))  # where the step leaves it
    step = make_train_step(graphdef, tx, make_allreduce("optinc-ideal"), mesh4, loss_fn=mse)
    for index in range(3):
        state, _ = step(state, batch, np.int32(index), jax.random.key(0))
    assert step._cache_size() == 1


# ---- validation ------------------------------------------------------------------------


def test_server_count_must_match_the_unit(mesh4):
    mesh2 = Mesh(np.array(jax.devices()[:2]), ("data",))
    allreduce = make_allreduce("optinc-onn", onn=exact_onn_table(8, 4))
    graphdef, _ = nnx.split(tiny_model())
    with pytest.raises(ValueError, match=r"servers must equal the optinc-onn unit's N = 4"):
        make_train_step(graphdef, optax.sgd(LR), allreduce, mesh2)
    with pytest.raises(ValueError, match=r"servers must equal the optinc-inject unit's N = 4"):
        DistributedConfig(allreduce="optinc-inject", servers=8).make_allreduce()
    make_train_step(graphdef, optax.sgd(LR), make_allreduce("optinc-ideal"), mesh2)  # any N


def test_allreduce_options_are_validated():
    with pytest.raises(ValueError, match="allreduce must be one of"):
        make_allreduce("tree")
    with pytest.raises(ValueError, match="bits is used only by the optinc all-reduces"):
        make_allreduce("exact", bits=8)
    with pytest.raises(ValueError, match="bits must be the optinc-inject unit's 16 bits"):
        make_allreduce("optinc-inject", bits=8)
    with pytest.raises(ValueError, match="needs onn="):
        make_allreduce("optinc-onn")
    with pytest.raises(ValueError, match="Table II row must be an integer in"):
        make_allreduce("optinc-inject", errors="table2:9")
    with pytest.raises(ValueError, match="servers must be an integer >= 1"):
        DistributedConfig(servers=0)


# ---- whole runs: resume, divergence, the experiment --------------------------------------

RUN = DistributedConfig(steps=4, eval_every=2, checkpoint_every=2, log_every=2)
"""The small ResNet on 8 x 8 x 1 images, 4 servers x 16: the smoke experiment's step."""


def tiny_digits(poison=False):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(96, 8, 8, 1)).astype(np.float32)
    if poison:
        train[:] = np.nan
    held = rng.normal(size=(40, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 10, 96).astype(np.int32)
    return ImageData(train, labels, held, labels[:40], 10, "tiny-digits", "test")


class Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_identical_result(tmp_path):
    data = tiny_digits()
    whole = train_distributed(RUN, tmp_path / "whole", data=data, progress=False)

    def kill(step, history):
        if step == 2:
            raise Killed

    with pytest.raises(Killed):
        train_distributed(RUN, tmp_path / "killed", data=data, progress=False, on_log=kill)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        train_distributed(RUN, tmp_path / "killed", data=data, progress=False)
    resumed = train_distributed(RUN, tmp_path / "killed", data=data, progress=False, resume=True)
    chex.assert_trees_all_equal(resumed.state.params, whole.state.params)
    chex.assert_trees_all_equal(resumed.state.rest, whole.state.rest)  # batch statistics
    for key in ("loss", "eval_step", "heldout_loss", "heldout_accuracy"):
        assert resumed.record["history"][key] == whole.record["history"][key]
    assert len(whole.record["history"]["loss"]) == 4
    record = json.loads((tmp_path / "whole" / "result.json").read_text())
    assert record["status"] == "finished" and record["metric"] == "accuracy"
    assert record["final"] == record["history"]["heldout_accuracy"][-1]
    # A finished run asked to resume returns its stored result.
    again = train_distributed(RUN, tmp_path / "whole", data=data, progress=False, resume=True)
    assert again.record == record
    with pytest.raises(CheckpointError, match="written for another run"):
        train_distributed(
            RUN.replace(seed=1), tmp_path / "whole", data=data, resume=True, progress=False
        )


def test_a_diverged_run_stops_with_an_error_and_reports_no_metric(tmp_path):
    # NaN images: NaN gradients and parameters, while relu(NaN) = 0 keeps the loss finite.
    message = r"training diverged by step 2 \(a parameter became non-finite"
    with pytest.raises(TrainingDiverged, match=message):
        train_distributed(RUN, tmp_path, data=tiny_digits(poison=True), progress=False)
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["status"] == "diverged" and record["diverged_by_step"] == 2
    assert "final" not in record and "metric" not in record
    assert record["last_checkpoint_step"] is None  # the NaN state is never checkpointed
    assert not (tmp_path / "checkpoints" / "2").exists()


def test_the_smoke_experiment_writes_rows_with_the_exact_seeds_spread(tmp_path):
    config = experiment.preset("smoke").replace(
        models=("resnet_small",), allreduces=("exact", "optinc-ideal"), exact_seeds=(0, 1)
    )
    rows = experiment.run(config, tmp_path)
    assert [(r["allreduce"], r["seed"]) for r in rows] == [
        ("exact", 0), ("exact", 1), ("optinc-ideal", 0)
    ]  # fmt: skip
    written = json.loads((tmp_path / "train_distributed.json").read_text())
    assert written == rows
    exact = [r["final"] for r in rows if r["allreduce"] == "exact"]
    for row in rows:
        assert row["model"] == "resnet_small" and row["steps"] == 4
        assert row["metric"] == "accuracy" and 0 <= row["final"] <= 1
        assert row["exact_mean"] == pytest.approx(np.mean(exact))
        assert row["exact_std"] == pytest.approx(np.std(exact, ddof=1))
        assert row["difference"] == pytest.approx(row["final"] - np.mean(exact))
        assert row["paired_difference"] == pytest.approx(row["final"] - exact[row["seed"]])
    assert rows[2]["bits"] == 8 and rows[2]["paper_difference"] == pytest.approx(-0.0003)
    assert (tmp_path / "train_distributed.png").stat().st_size > 0
    assert (
        "| resnet_small | optinc-ideal | 0 | 8 |" in (tmp_path / "train_distributed.md").read_text()
    )


def test_command_line_selects_runs_and_refuses_ambiguous_data(tmp_path):
    config, out = experiment.parse_args(
        ["--quick", "--model", "llama_small", "--allreduce", "exact", "ring", "--steps", "7",
         "--data", "corpus.txt", "--out", str(tmp_path)]
    )  # fmt: skip
    assert config.models == ("llama_small",) and config.allreduces == ("exact", "ring")
    assert config.steps == 7 and config.text_data == "corpus.txt" and out == tmp_path
    assert config.exact_seeds == (0, 1, 2, 3, 4)
    with pytest.raises(SystemExit):
        experiment.parse_args(["--data", "x"])  # both kinds of model selected
    with pytest.raises(SystemExit):
        experiment.parse_args(["--quick", "--config", "full"])
