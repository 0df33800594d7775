"""Nothing lost, nothing silently wrong: run-directory lock, divergence, full disk, errors."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

from optinc_jax import (
    MemoryFootprint,
    RunDirectoryBusy,
    RunDirectoryUnwritable,
    available_memory_bytes,
    make_scenario,
    require_fits_memory,
    run_directory_lock,
    training_footprint,
)
from optinc_jax.cli import main
from optinc_jax.learning import trainer as trainer_module
from optinc_jax.learning.checkpoint import CheckpointError, CheckpointWriteError, TrainCheckpointer
from optinc_jax.learning.config import TrainConfig
from optinc_jax.learning.trainer import TrainingDiverged, load_run, train_onn

SCENARIO = make_scenario(
    "robust-4b2s", bits=4, servers=2, layers=(2, 32, 32, 2), approx=(1, 2, 3), inputs=2
)
CONFIG = TrainConfig(
    scenario=SCENARIO,
    epochs=6,
    batch_size=8,
    checkpoint_every=1,
    eval_every=2,
    stop_at_full_accuracy=False,
)
CHILD_ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "XLA_FLAGS": ""}


def _optinc() -> str:
    return str(Path(sys.executable).with_name("optinc"))


# ---------------------------------------------------------------- one writer per directory


def test_a_locked_run_directory_refuses_a_second_writer_until_its_holder_dies(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                from optinc_jax import run_directory_lock
                with run_directory_lock({str(tmp_path)!r}):
                    print("locked", flush=True)
                    time.sleep(120)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryBusy, match=f"PID {holder.pid}"):
            train_onn(CONFIG, tmp_path, progress=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
        holder.stdout.close()
    result = train_onn(CONFIG.replace(epochs=1), tmp_path, progress=False)
    assert result.epochs == 1 and (tmp_path / "result.json").is_file()


def test_the_lock_is_released_after_a_run_and_on_error(tmp_path):
    with run_directory_lock(tmp_path) as directory:
        assert (directory / ".lock").read_text().strip() == str(os.getpid())
    with pytest.raises(KeyError), run_directory_lock(tmp_path):
        raise KeyError("boom")
    with run_directory_lock(tmp_path):
        pass


@pytest.mark.slow
def test_two_concurrent_cli_runs_on_one_directory(tmp_path):
    """One fails with the other's PID; the other finishes with an intact, strict result."""
    out = tmp_path / "run"
    args = [_optinc(), "train", "--out", str(out), "--quiet", "--json", "--epochs", "40"]
    first = subprocess.Popen(
        [*args, "--steps-per-epoch", "20"], stdout=subprocess.PIPE, text=True, env=CHILD_ENV
    )
    deadline = time.monotonic() + 300
    while not (out / ".lock").is_file() or not (out / ".lock").read_text().strip():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    second = subprocess.run(
        [*args, "--steps-per-epoch", "5"], capture_output=True, text=True, env=CHILD_ENV
    )
    assert first.poll() is None, "the first run ended before the second tried; test is moot"
    assert second.returncode == 1 and second.stdout == ""
    assert f"in use by another run (PID {first.pid})" in second.stderr
    assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
    stdout, _ = first.communicate(timeout=600)
    assert first.returncode == 0
    printed = json.loads(stdout)
    record = json.loads((out / "result.json").read_text())
    assert {key: value for key, value in printed.items() if key != "run_dir"} == {
        key: value for key, value in record.items() if key != "history"
    }
    assert record["status"] == "finished" and record["config"]["steps_per_epoch"] == 20


def test_an_unwritable_run_directory_is_refused_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RunDirectoryUnwritable, match="cannot write to the run directory"):
        train_onn(CONFIG, blocker / "run", progress=False)
    result = CliRunner().invoke(main, ["train", "--out", str(blocker / "run"), "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("Error: cannot write to the run directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_a_read_only_run_directory_is_refused_before_training(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(RunDirectoryUnwritable):
            train_onn(CONFIG, tmp_path / "run", progress=False)
    finally:
        tmp_path.chmod(0o755)


def test_evaluate_and_export_create_nothing(tmp_path):
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in (["evaluate", str(empty)], ["export", str(empty), "--out", str(tmp_path / "w")]):
        result = runner.invoke(main, command)
        assert result.exit_code == 1 and "no checkpoint" in result.output
    assert list(empty.iterdir()) == [] and not (tmp_path / "w.npz").exists()


# ---------------------------------------------------------------------------- divergence


def test_a_huge_learning_rate_stops_with_an_error_and_strict_json(tmp_path):
    config = CONFIG.replace(learning_rate=1e30, schedule="constant")
    with pytest.raises(TrainingDiverged, match="diverged at epoch 1") as caught:
        train_onn(config, tmp_path, progress=False)
    assert caught.value.epoch == 1 and caught.value.last_checkpoint is None
    text = (tmp_path / "result.json").read_text()
    record = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in JSON"))
    assert record["status"] == "diverged" and "accuracy" not in record
    assert record["diverged_at_epoch"] == 1 and record["history"]["loss"] == []


def test_divergence_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch):
    real_epoch = trainer_module.train_epoch
    calls = []

    def poisoned_after_three(state, key, **kwargs):
        state, loss = real_epoch(state, key, **kwargs)
        calls.append(1)
        if len(calls) == 4:
            state = state._replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
        return state, loss

    # the programs compiled ahead are the real epoch's (what the poisoned one calls)
    poisoned_after_three.lower = real_epoch.lower
    monkeypatch.setattr(trainer_module, "train_epoch", poisoned_after_three)
    with pytest.raises(TrainingDiverged, match="parameter") as caught:
        train_onn(CONFIG, tmp_path, progress=False)
    assert caught.value.epoch == 4 and caught.value.last_checkpoint == 3
    loaded = load_run(tmp_path)
    assert loaded.epoch == 3
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(loaded.params))
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["status"] == "diverged" and record["last_checkpoint_epoch"] == 3
    assert len(record["history"]["loss"]) == 3


def test_export_refuses_nonfinite_weights(tmp_path):
    train_onn(CONFIG.replace(epochs=1), tmp_path / "run", progress=False)
    checkpointer = TrainCheckpointer(tmp_path / "run" / "checkpoints")
    try:
        state, epoch, record = checkpointer.restore(
            trainer_module.build_training(CONFIG.replace(epochs=1)).initial_state
        )
        poisoned = state._replace(params=jax.tree.map(lambda p: p + jnp.inf, state.params))
        checkpointer.save(epoch + 1, poisoned, record)
    finally:
        checkpointer.close()
    result = CliRunner().invoke(
        main, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "w.npz")]
    )
    assert result.exit_code == 2 and "cannot be exported" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "w.npz").exists()


# ----------------------------------------------------------------------- full disk, I/O


def test_a_full_disk_during_a_checkpoint_is_one_error_and_the_run_resumes(tmp_path, monkeypatch):
    straight = train_onn(CONFIG, tmp_path / "straight", progress=False)
    real_save = TrainCheckpointer.save

    def save_until_the_disk_fills(self, epoch, state, record):
        if epoch == 4:
            self._manager.save = _raise_no_space  # orbax's writer hits a full disk
        return real_save(self, epoch, state, record)

    monkeypatch.setattr(TrainCheckpointer, "save", save_until_the_disk_fills)
    with pytest.raises(CheckpointWriteError, match="No space left on device") as caught:
        train_onn(CONFIG, tmp_path / "full", progress=False)
    assert "the checkpoint of epoch 3 is kept" in str(caught.value)
    assert not list((tmp_path / "full" / "checkpoints").glob("4*"))
    monkeypatch.undo()
    resumed = train_onn(CONFIG, tmp_path / "full", progress=False, resume=True)
    chex.assert_trees_all_close(resumed.params, straight.params, atol=0, rtol=0)
    assert resumed.record["history"]["loss"] == straight.record["history"]["loss"]


def _raise_no_space(*args, **kwargs):
    raise ValueError(
        'RESOURCE_EXHAUSTED: Error writing "leaves.1/0.0": Failed to write 17195 bytes: '
        "No space left on device [os_error_code='28']"
    )


def _small_filesystem_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _small_filesystem_available(), reason="cannot mount a small tmpfs")
@pytest.mark.slow
def test_a_real_full_filesystem_gives_one_line_and_resumes(tmp_path):
    """`optinc train` on a 300 KiB tmpfs: one error line, then --resume after growing it."""
    mount = tmp_path / "small"
    mount.mkdir()
    train = f"{_optinc()} train --scenario 8b4s --out {mount}/run --epochs 3 --quiet --json"
    script = (
        f"mount -t tmpfs -o size=300k tmpfs {mount} && "
        f"{train} --steps-per-epoch 5 > {tmp_path}/first.out 2> {tmp_path}/first.err; "
        f"echo $? > {tmp_path}/first.rc; mount -o remount,size=20m {mount} && "
        f"{train} --steps-per-epoch 5 --resume > {tmp_path}/second.out"
    )
    subprocess.run(["unshare", "-rm", "sh", "-c", script], check=True, env=CHILD_ENV)
    errors = (tmp_path / "first.err").read_text().strip().splitlines()
    assert (tmp_path / "first.rc").read_text().strip() == "1"
    assert len(errors) == 1 and "No space left on device" in errors[0], errors[:3]
    assert json.loads((tmp_path / "second.out").read_text())["epochs"] == 3


# ------------------------------------------------------------------- records and sizes


def test_a_checkpoint_from_another_version_is_a_checkpoint_error(tmp_path):
    train_onn(CONFIG.replace(epochs=1), tmp_path, progress=False)
    checkpointer = TrainCheckpointer(tmp_path / "checkpoints")
    try:
        state, _, record = checkpointer.restore(
            trainer_module.build_training(CONFIG.replace(epochs=1)).initial_state
        )
        checkpointer.save(2, state, {"config": record["config"], "other": 1})
    finally:
        checkpointer.close()
    with pytest.raises(CheckpointError, match="another version"):
        train_onn(CONFIG.replace(epochs=1), tmp_path, progress=False, resume=True)
    checkpointer = TrainCheckpointer(tmp_path / "checkpoints")
    try:
        checkpointer.save(3, state, {"settings": {}})
    finally:
        checkpointer.close()
    with pytest.raises(CheckpointError, match="another version"):
        load_run(tmp_path)


def test_a_corrupt_checkpoint_on_resume_is_one_cli_line(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--epochs", "1", "--steps-per-epoch", "2", "--quiet"]
    assert runner.invoke(main, args).exit_code == 0
    for path in (out / "checkpoints").rglob("*"):
        if path.is_file() and "record" not in str(path):
            path.write_bytes(b"garbage")
    result = runner.invoke(main, [*args[:3], "--epochs", "2", "--resume", "--quiet"])
    assert result.exit_code == 1 and "corrupt or unreadable" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_export_to_a_missing_directory_is_one_line(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--epochs", "1", "--steps-per-epoch", "2", "--quiet"]
    assert runner.invoke(main, args).exit_code == 0
    result = runner.invoke(main, ["export", str(out), "--out", str(tmp_path / "no/such/w.npz")])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_configurations_that_cannot_fit_are_refused_before_the_directory_exists(tmp_path):
    huge = make_scenario("huge-24b2s", bits=24, servers=2, layers=(4, 256, 256, 12), approx=())
    with pytest.raises(ValueError, match=r"needs about [\d,.]+ GiB \(batch"):
        train_onn(TrainConfig(scenario=huge, batch_size=10**8), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        train_onn(CONFIG.replace(batch_size=10**8), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_footprint_counts_every_part():
    parts = training_footprint(
        [4, 64, 4],
        bits=8,
        dataset_size=1000,
        batch_size=10,
        steps_per_epoch=100,
        eval_chunk_size=1000,
        permutation_limit=1 << 22,
    )
    weights = 4 * 64 + 64 + 64 * 4 + 4
    assert parts.indices == 4 * (1000 + 2000)
    assert parts.batch == 4 * 10 * (3 * 72 + 4 + 8 + 1)
    assert parts.parameters == 4 * 4 * weights
    assert parts.evaluation == 4 * (1000 * (72 + 4 + 2) + 2**9)
    available, where = available_memory_bytes()
    assert available > 2**28 and "memory" in where
    require_fits_memory(parts, "small")
    with pytest.raises(ValueError, match="indices"):
        require_fits_memory(MemoryFootprint(available + 1, 0, 0, 0), "big")
