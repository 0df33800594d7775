"""Data-parallel training over ``N`` simulated servers with a selectable all-reduce.

The paper's Fig. 7(a) experiment: every server (a device of a one-axis ``Mesh``) holds a
replica of the model, computes the gradient of the loss on its own shard of the batch,
and the servers average their gradients with an all-reduce before the identical
optimizer update. Which all-reduce is the only thing that changes (:data:`ALLREDUCES`):

==================  ==========================================================================
``exact``           ``lax.pmean``: exact float32 averaging (the reference)
``ring``            :func:`~optinc_jax.network.ring.ring_pmean`: ring all-reduce simulated
                    with ``ppermute`` (float32; equal to ``exact`` up to summation order)
``optinc-ideal``    :func:`~optinc_jax.network.collective.pmean` ``mode="ideal"``: block
                    quantization to ``bits`` and the exact ``floor(sum u / N)`` of the unit
``optinc-inject``   ``mode="inject"``: the ideal unit plus errors drawn from a Table II row
                    (``"table2:worst"``, ``"table2:<index>"``) or a run's measured error
                    histogram (a ``result.json`` or run directory); a fresh key every step
``optinc-onn``      ``mode="onn"``: a trained ONN in the loop, exactly, as a lookup table of
                    its output on every input (:func:`~optinc_jax.network.collective.
                    onn_lookup_table` of a run directory or exported ``.npz``)
==================  ==========================================================================

**Bits and servers of a unit.** ``optinc-onn`` and ``optinc-inject`` average through a
particular unit: the bit width comes from the unit (the ONN table's, or the error
model's), and the server count of the mesh must equal the unit's ``N`` (4 for the 8b4s
demo run and for every Table II row); another count is refused with a ``ValueError``
before anything is built. Table II's rows are 16-bit / 4-server networks, so
``optinc-inject`` with a Table II row quantizes the gradients to **16 bits** (the unit the
errors were measured on); with a measured histogram of an 8-bit run it uses 8 bits.
``optinc-ideal`` takes any ``bits`` and any ``N``.

**The step.** One jitted ``jax.shard_map`` step per run (compiled once, reused for every
step): per server ``value_and_grad`` of the local loss, the all-reduce of the gradients,
the optimizer update on the averaged gradient (identical on every server), and the mean
of the servers' losses (an exact ``lax.pmean`` of one scalar, for logging only). The map
runs with ``check_vma=False``: with JAX's replication typing on, the gradient of a
replicated parameter would already be summed over the servers by the transpose of the
implicit broadcast, and the all-reduce under test would see the sum instead of each
server's own gradient. Without it, each server's gradient is its own, every all-reduce
returns the same values on every server (``exact``, ``ring`` and OptINC alike), and the
parameters are returned once (``out_specs=P()``).

**Batch norm** (the ResNets' default ``norm="batch"``) follows PyTorch's
DistributedDataParallel default, the setting of the paper's ResNet-50: each server
normalises with the statistics of its own shard (no collective inside the forward pass,
so the gradient all-reduce is the only coupling between servers), and the running
averages used at evaluation are the first server's, broadcast to all after every step
(DDP's ``broadcast_buffers``; a simulation device, not counted as gradient traffic).
``norm="group"`` (GroupNorm) needs neither. The LLaMA-style models use RMSNorm.

**Robustness** (as the ONN trainer): one writer per run directory
(:func:`~optinc_jax.learning.run_lock.run_directory_lock`); atomic checkpoints of
parameters, batch statistics and optimizer state every ``checkpoint_every`` steps
(:class:`~optinc_jax.learning.checkpoint.TrainCheckpointer`); batch ``i`` and the error
draws of step ``i`` are pure functions of ``(seed, i)``, so a killed run resumed with
``resume=True`` reaches the identical result; the per-step losses stay on the device and
are fetched every ``log_every`` steps, and the first non-finite loss (or non-finite
parameter before a checkpoint) stops the run with
:class:`~optinc_jax.learning.trainer.TrainingDiverged`: ``result.json`` then says
``"status": "diverged"`` and holds no metric, and the last finite checkpoint is kept.
"""

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from optinc_jax import paper
from optinc_jax.encoding.pam4 import num_symbols
from optinc_jax.encoding.quantize import DEFAULT_BLOCK_SIZE
from optinc_jax.learning.checkpoint import CheckpointError, TrainCheckpointer
from optinc_jax.learning.reporting import write_json_atomically
from optinc_jax.learning.run_lock import run_directory_lock
from optinc_jax.learning.step import DATA_AXIS
from optinc_jax.learning.trainer import TrainingDiverged
from optinc_jax.network.cascade import CascadeTable
from optinc_jax.network.collective import (
    ROUNDINGS,
    ErrorModel,
    OnnTable,
    error_model,
    onn_lookup_table,
    pmean,
)
from optinc_jax.network.data import (
    Batch,
    ImageData,
    TextData,
    heldout_batches,
    load_cifar100,
    load_digits_data,
    load_text,
    stdlib_text_corpus,
    train_batches,
)
from optinc_jax.network.llama import LLAMA_PRESETS, Llama
from optinc_jax.network.model_cost import cross_entropy_loss, parameter_count
from optinc_jax.network.resnet import RESNET_PRESETS, ResNet
from optinc_jax.network.ring import ring_pmean
from optinc_jax.validation import require_choice, require_int, require_real

__all__ = [
    "ALLREDUCES",
    "DISTRIBUTED_MODELS",
    "AllReduce",
    "DataParallelState",
    "DistributedConfig",
    "DistributedModel",
    "DistributedResult",
    "build_distributed_model",
    "evaluate_heldout",
    "init_data_parallel_state",
    "load_training_data",
    "make_allreduce",
    "make_distributed_optimizer",
    "make_train_step",
    "server_mesh",
    "table_ii_row",
    "train_distributed",
]

ALLREDUCES = ("exact", "ring", "optinc-ideal", "optinc-inject", "optinc-onn")
"""The all-reduces a run can average its gradients with (module docstring)."""

DEFAULT_ERRORS = "table2:worst"
"""Errors of ``optinc-inject`` by default: the Table II row with the lowest accuracy."""

RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoints"
FINAL_LOSS_WINDOW = 20
"""``final_loss`` is the mean training loss of the last this many steps."""


# -------------------------------------------------------------------------- all-reduces


def table_ii_row(which: int | str) -> paper.TableIIRow:
    """A row of the paper's Table II by index (0-4) or ``"worst"`` (lowest accuracy).

    Args:
        which: ``0`` ... ``4`` (or its string) in the order of ``paper.TABLE_II``, or
            ``"worst"``.

    Returns:
        The row.

    Raises:
        ValueError: on anything else.

    Examples:
        >>> table_ii_row("worst").approx, table_ii_row("worst").accuracy_percent
        ((3, 4, 5, 6), 99.98891)
    """
    if which == "worst":
        return min(paper.TABLE_II, key=lambda row: row.accuracy_percent)
    if isinstance(which, str) and which.isdigit():
        which = int(which)
    index = require_int("Table II row", which, 0, len(paper.TABLE_II) - 1)
    return paper.TABLE_II[index]


def _resolve_errors(errors: Any) -> ErrorModel:
    """An :class:`ErrorModel` from ``"table2:<index|worst>"``, a path, a row or a model."""
    if isinstance(errors, str) and errors.startswith("table2:"):
        return error_model(table_ii_row(errors.split(":", 1)[1]))
    return error_model(errors)


@dataclasses.dataclass(frozen=True)
class AllReduce:
    """A gradient all-reduce for a data-parallel ``shard_map`` step.

    Call it inside the mapped function as ``allreduce(tree, axis_name, key)``; every
    server gets the same averaged tree. Build it with :func:`make_allreduce`.

    Attributes:
        name: one of :data:`ALLREDUCES`.
        bits: gradient bit width of the OptINC modes (``None`` for ``exact`` / ``ring``).
        rounding: ``"floor"`` (the paper's unit) or ``"nearest"`` (``optinc-ideal`` and
            ``optinc-inject``).
        block_size: elements per quantization block.
        table: the ONN's table (``optinc-onn``).
        errors: the error model (``optinc-inject``).
    """

    name: str
    bits: int | None = None
    rounding: str = "floor"
    block_size: int = DEFAULT_BLOCK_SIZE
    table: OnnTable | CascadeTable | None = None
    errors: ErrorModel | None = None

    @property
    def unit_servers(self) -> int | None:
        """The server count the unit serves (``optinc-onn``/``-inject``), else ``None``."""
        unit = self.table if self.table is not None else self.errors
        return None if unit is None else unit.servers

    def check_servers(self, servers: int) -> None:
        """Raises a ``ValueError`` if the unit (or cascade) cannot serve ``servers``."""
        if isinstance(self.table, CascadeTable):
            if servers > self.table.servers:
                raise ValueError(
                    f"servers must be at most the {self.table.servers} inputs of the cascade "
                    f"{self.table.cascade.fanins} ({self.table.source}), got {servers}"
                )
            return
        unit = self.unit_servers
        if unit is not None and unit != servers:
            raise ValueError(
                f"servers must equal the {self.name} unit's N = {unit} "
                f"({self.table.source if self.table is not None else self.errors.source}), "
                f"got {servers}; other counts need the cascade of units, or optinc-ideal"
            )

    def __call__(self, tree: Any, axis_name: str, key: jax.Array | None = None) -> Any:
        """The servers' average of ``tree`` (inside ``shard_map`` over ``axis_name``).

        Args:
            tree: pytree of float arrays, this server's gradient.
            axis_name: the data-parallel mesh axis.
            key: PRNG key of the error draws (``optinc-inject`` only; ignored otherwise).

        Returns:
            The averaged pytree, the same on every server.
        """
        if self.name == "exact":
            return lax.pmean(tree, axis_name)
        if self.name == "ring":
            return ring_pmean(tree, axis_name)
        mode = self.name.removeprefix("optinc-")
        options = {"bits": self.bits, "rounding": self.rounding, "block_size": self.block_size}
        if mode == "onn":
            return pmean(tree, axis_name, mode="onn", table=self.table, **options)
        if mode == "inject":
            return pmean(tree, axis_name, mode="inject", errors=self.errors, key=key, **options)
        return pmean(tree, axis_name, mode="ideal", **options)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description, including the unit's source and accuracy or error rate."""
        out: dict[str, Any] = {"name": self.name}
        if self.name.startswith("optinc-"):
            out |= {"bits": self.bits, "rounding": self.rounding, "block_size": self.block_size}
        if isinstance(self.table, CascadeTable):
            out["onn"] = {
                "source": self.table.source,
                "servers": self.table.servers,
                "fanins": list(self.table.cascade.fanins),
                "variant": self.table.cascade.variant,
                "level_accuracies": list(self.table.accuracies),
            }
        elif self.table is not None:
            out["onn"] = {
                "source": self.table.source,
                "servers": self.table.servers,
                "accuracy": self.table.accuracy,
            }
        if self.errors is not None:
            out["errors"] = {
                "source": self.errors.source,
                "servers": self.errors.servers,
                "rate": self.errors.rate,
                "values": list(self.errors.values),
                "probabilities": list(self.errors.probabilities),
            }
        return out


def make_allreduce(
    name: str,
    *,
    bits: int | None = None,
    rounding: str = "floor",
    block_size: int = DEFAULT_BLOCK_SIZE,
    onn: "OnnTable | CascadeTable | str | Path | None" = None,
    errors: Any = None,
) -> AllReduce:
    """Builds and validates an :class:`AllReduce`.

    Args:
        name: one of :data:`ALLREDUCES`.
        bits: gradient bits of ``optinc-ideal`` (default 8). For ``optinc-onn`` and
            ``optinc-inject`` the unit fixes the bits (the table's, the error model's: 16
            for Table II); a different ``bits`` is refused. Refused for ``exact``/``ring``.
        rounding: ``"floor"`` or ``"nearest"`` (``optinc-onn`` takes ``"floor"`` only).
        block_size: elements per quantization block.
        onn: ``optinc-onn``'s unit: an :class:`OnnTable`, a run directory or an exported
            ``.npz`` (tabulated with :func:`onn_lookup_table`), or a
            :class:`~optinc_jax.network.cascade.CascadeTable` (more servers than a unit).
        errors: ``optinc-inject``'s errors: ``"table2:worst"`` (default),
            ``"table2:<0-4>"``, a Table II row, an :class:`ErrorModel`, or a run's
            ``result.json`` / run directory (its measured error histogram).

    Returns:
        The all-reduce.

    Raises:
        ValueError: on an unknown name, an option that does not belong to the mode, or a
            unit whose bits differ from ``bits``.

    Examples:
        >>> make_allreduce("optinc-inject").bits  # Table II's units are 16-bit
        16
        >>> make_allreduce("optinc-ideal", bits=6).describe()["bits"]
        6
    """
    name = require_choice("allreduce", name, ALLREDUCES)
    rounding = require_choice("rounding", rounding, ROUNDINGS)
    block_size = require_int("block_size", block_size, 1)
    if name != "optinc-onn" and onn is not None:
        raise ValueError(f"onn is used only with allreduce 'optinc-onn', got {name!r}")
    if name != "optinc-inject" and errors is not None:
        raise ValueError(f"errors are used only with allreduce 'optinc-inject', got {name!r}")
    if name in ("exact", "ring"):
        if bits is not None:
            raise ValueError(f"bits is used only by the optinc all-reduces, got {name!r}")
        return AllReduce(name)
    unit_bits, table, model = None, None, None
    if name == "optinc-onn":
        if onn is None:
            raise ValueError("allreduce 'optinc-onn' needs onn= (a run directory or .npz)")
        table = onn if isinstance(onn, OnnTable | CascadeTable) else onn_lookup_table(onn)
        unit_bits = table.bits
        if rounding != "floor":
            raise ValueError(f"optinc-onn computes its table's floor; got rounding={rounding!r}")
    elif name == "optinc-inject":
        model = _resolve_errors(DEFAULT_ERRORS if errors is None else errors)
        unit_bits = model.bits
    if unit_bits is not None and bits is not None and bits != unit_bits:
        raise ValueError(
            f"bits must be the {name} unit's {unit_bits} bits (it is a {unit_bits}-bit unit), "
            f"got {bits}"
        )
    bits = unit_bits if unit_bits is not None else 8 if bits is None else bits
    num_symbols(bits)  # even, in [2, 30]: checked here, before any trace
    return AllReduce(name, bits, rounding, block_size, table, model)


# ------------------------------------------------------------------------------ models


class DistributedModel(NamedTuple):
    """A model of the experiment with its training recipe.

    Attributes:
        kind: ``"image"`` (classification) or ``"text"`` (next-byte prediction).
        architecture: ``RESNET_PRESETS`` or ``LLAMA_PRESETS`` key.
        optimizer: ``"sgd"`` (Nesterov momentum 0.9, weight decay) or ``"adamw"``
            (beta2 0.95, gradient clipping at global norm 1).
        learning_rate: peak learning rate (linear warm-up, then cosine decay).
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        batch_per_server: examples per server per step.
        seq_len: tokens per sequence (text).
        steps: default training steps.
        description: what it is, for reports.
    """

    kind: str
    architecture: str
    optimizer: str
    learning_rate: float
    weight_decay: float
    batch_per_server: int
    seq_len: int | None
    steps: int
    description: str


CIFAR_TRAIN_IMAGES = 50_000
RESNET50_STEPS = math.ceil(paper.TRAINING_WITH_OPTINC["resnet50_epochs"] * CIFAR_TRAIN_IMAGES / 128)

DISTRIBUTED_MODELS: dict[str, DistributedModel] = {
    "resnet_small": DistributedModel(
        "image", "resnet_small", "sgd", 0.1, 5e-4, 16, None, 300,
        "small ResNet (basic blocks [1, 1, 1], widths 16-32-64), CPU size",
    ),
    "resnet50": DistributedModel(
        "image", "resnet50", "sgd", 0.1, 5e-4, 32, None, RESNET50_STEPS,
        "ResNet-50 (CIFAR stem); default steps: 300 epochs of CIFAR-100 at 4 x 32 images",
    ),
    "llama_small": DistributedModel(
        "text", "small", "adamw", 3e-3, 0.01, 8, 64, 300,
        "LLaMA-style decoder, 2 layers x 64 wide, 4 heads, byte vocabulary, CPU size",
    ),
    "llama_paper": DistributedModel(
        "text", "paper", "adamw", 6e-4, 0.1, 8, 512, 50_000,
        "the paper's LLaMA-style decoder (8 layers x 384, 8 heads) on bytes, 512 tokens",
    ),
}  # fmt: skip
"""The models of ``--model``, with their training recipes."""


def build_distributed_model(
    name: str,
    data: ImageData | TextData,
    *,
    seed: int = 0,
    norm: str = "batch",
    seq_len: int | None = None,
) -> nnx.Module:
    """A freshly initialized model sized for ``data`` (classes, channels, vocabulary).

    Initialized from an ``rbg`` PRNG key: on the CPU the default threefry key compiles
    a kernel per parameter shape and takes about 12 s for the small ResNet, ``rbg`` 4 s.

    Args:
        name: a key of :data:`DISTRIBUTED_MODELS`.
        data: the training data (its kind must match the model's).
        seed: initialization seed.
        norm: ResNet normalisation, ``"batch"`` or ``"group"`` (module docstring).
        seq_len: longest sequence of a text model (``None``: the recipe's).

    Returns:
        The module, in train mode.

    Raises:
        ValueError: on an unknown name or a data kind the model does not take.
    """
    spec = DISTRIBUTED_MODELS[require_choice("model", name, tuple(DISTRIBUTED_MODELS))]
    if data.kind != spec.kind:
        raise ValueError(f"model {name!r} trains on {spec.kind} data, got {data.kind} data")
    rngs = nnx.Rngs(jax.random.key(require_int("seed", seed, 0), impl="rbg"))
    if spec.kind == "image":
        return ResNet(
            RESNET_PRESETS[spec.architecture],
            num_classes=data.num_classes,
            in_channels=data.image_shape[2],
            norm=norm,
            rngs=rngs,
        )
    config = LLAMA_PRESETS[spec.architecture]._replace(
        vocab_size=data.vocab_size, max_len=seq_len or spec.seq_len
    )
    return Llama(config, rngs=rngs)


# ------------------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """One data-parallel training run.

    Attributes:
        model: a key of :data:`DISTRIBUTED_MODELS`.
        allreduce: one of :data:`ALLREDUCES`.
        servers: simulated servers (devices of the mesh).
        bits: OptINC gradient bits (``None``: 8 for ``optinc-ideal``, the unit's otherwise).
        steps: optimizer steps (``None``: the model's default).
        seed: seed of the initialization, the batches and the error draws.
        batch_per_server: examples per server per step (``None``: the model's).
        seq_len: tokens per sequence (text; ``None``: the model's).
        learning_rate: peak learning rate (``None``: the model's).
        warmup_fraction: share of the steps of linear learning-rate warm-up.
        eval_every: held-out evaluation period in steps (``None``: a tenth of the run);
            the last step is always evaluated.
        eval_examples: held-out examples per evaluation (``None``: all images, 256 text
            windows).
        log_every: steps between fetches of the per-step losses (divergence checks).
        checkpoint_every: checkpoint period in steps (``None``: ``eval_every``, at most
            1,000).
        norm: ResNet normalisation, ``"batch"`` (DDP-style) or ``"group"``.
        rounding: OptINC rounding, ``"floor"`` or ``"nearest"``.
        block_size: OptINC quantization block.
        onn: ``optinc-onn``'s run directory or ``.npz``.
        errors: ``optinc-inject``'s errors (``"table2:worst"``, ``"table2:<i>"``, a path).
        data: CIFAR-100 folder (images) or text file/folder (text); ``None``: the offline
            default (scikit-learn digits, the standard-library stand-in corpus).
    """

    model: str = "resnet_small"
    allreduce: str = "exact"
    servers: int = 4
    bits: int | None = None
    steps: int | None = None
    seed: int = 0
    batch_per_server: int | None = None
    seq_len: int | None = None
    learning_rate: float | None = None
    warmup_fraction: float = 0.05
    eval_every: int | None = None
    eval_examples: int | None = None
    log_every: int = 10
    checkpoint_every: int | None = None
    norm: str = "batch"
    rounding: str = "floor"
    block_size: int = DEFAULT_BLOCK_SIZE
    onn: str | None = None
    errors: str | None = None
    data: str | None = None

    def __post_init__(self):
        """Validates every field (one ``ValueError`` naming it)."""
        require_choice("model", self.model, tuple(DISTRIBUTED_MODELS))
        require_choice("allreduce", self.allreduce, ALLREDUCES)
        require_int("servers", self.servers, 1)
        require_int("seed", self.seed, 0, 2**32 - 1)
        optional = ("bits", "steps", "batch_per_server", "seq_len", "eval_every")
        for field in (*optional, "eval_examples", "checkpoint_every"):
            if getattr(self, field) is not None:
                require_int(field, getattr(self, field), 1)
        require_int("log_every", self.log_every, 1)
        if self.learning_rate is not None:
            require_real("learning_rate", self.learning_rate, low=0.0, low_inclusive=False)
        require_real(
            "warmup_fraction", self.warmup_fraction, low=0.0, high=1.0, high_inclusive=False
        )
        require_choice("norm", self.norm, ("batch", "group"))
        require_choice("rounding", self.rounding, ROUNDINGS)
        require_int("block_size", self.block_size, 1)

    @property
    def spec(self) -> DistributedModel:
        """The model's recipe."""
        return DISTRIBUTED_MODELS[self.model]

    def resolved(self) -> "DistributedConfig":
        """The config with every ``None`` default filled in from the model's recipe."""
        spec = self.spec
        steps = self.steps or spec.steps
        eval_every = self.eval_every or max(1, steps // 10)
        return dataclasses.replace(
            self,
            steps=steps,
            batch_per_server=self.batch_per_server or spec.batch_per_server,
            seq_len=(self.seq_len or spec.seq_len) if spec.kind == "text" else None,
            learning_rate=self.learning_rate or spec.learning_rate,
            eval_every=eval_every,
            eval_examples=self.eval_examples or (256 if spec.kind == "text" else None),
            checkpoint_every=self.checkpoint_every or min(eval_every, 1000),
        )

    def replace(self, **changes) -> "DistributedConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def make_allreduce(self) -> AllReduce:
        """The :class:`AllReduce` of this config, checked against ``servers``."""
        allreduce = make_allreduce(
            self.allreduce,
            bits=self.bits,
            rounding=self.rounding,
            block_size=self.block_size,
            onn=self.onn,
            errors=self.errors,
        )
        allreduce.check_servers(self.servers)
        return allreduce


def load_training_data(config: DistributedConfig) -> ImageData | TextData:
    """The data of a config: ``config.data`` if given, else the offline default.

    Images: ``data`` is a CIFAR-100 folder (:func:`load_cifar100`), default
    scikit-learn's digits (split seed 0 for every run, so every seed is evaluated on the
    same held-out images). Text: ``data`` is a file or folder (:func:`load_text`),
    default the standard-library stand-in (:func:`stdlib_text_corpus`).
    """
    if config.spec.kind == "image":
        return load_digits_data() if config.data is None else load_cifar100(config.data)
    return stdlib_text_corpus() if config.data is None else load_text(config.data)


def server_mesh(servers: int, axis_name: str = DATA_AXIS) -> Mesh:
    """A one-axis mesh of the first ``servers`` devices: the simulated servers.

    Args:
        servers: number of servers ``N``.
        axis_name: the axis name.

    Returns:
        ``Mesh(devices[:N], (axis_name,))``.

    Raises:
        ValueError: if fewer devices exist.
    """
    servers = require_int("servers", servers, 1)
    devices = jax.devices()
    if len(devices) < servers:
        raise ValueError(
            f"servers must be <= the {len(devices)} {devices[0].platform} devices, got "
            f"{servers}; simulate them on the CPU: JAX_PLATFORMS=cpu and XLA_FLAGS="
            f"--xla_force_host_platform_device_count={servers} before JAX is imported"
        )
    return Mesh(np.array(devices[:servers]), (axis_name,))


# ------------------------------------------------------------------------------- steps


class DataParallelState(NamedTuple):
    """What a data-parallel run carries from step to step (and checkpoints).

    Attributes:
        params: the model's ``nnx.Param`` state (replicated).
        rest: its other state (batch-norm running averages), replicated.
        opt_state: the optimizer state.
    """

    params: Any
    rest: Any
    opt_state: Any


def init_data_parallel_state(
    model: nnx.Module, tx: optax.GradientTransformation
) -> tuple[nnx.GraphDef, DataParallelState]:
    """Splits a model into its graph definition and a :class:`DataParallelState`."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, DataParallelState(params, rest, tx.init(params))


def _from_first_server(tree: Any, axis_name: str) -> Any:
    """The first server's values on every server (DDP's buffer broadcast)."""
    first = lax.axis_index(axis_name) == 0
    return jax.tree.map(lambda x: lax.psum(jnp.where(first, x, jnp.zeros_like(x)), axis_name), tree)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    allreduce: AllReduce,
    mesh: Mesh,
    *,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy_loss,
    axis_name: str = DATA_AXIS,
) -> Callable[..., tuple[DataParallelState, jax.Array]]:
    """The jitted data-parallel training step (compiled once, reused for every step).

    Per server: ``loss, grads = value_and_grad(loss_fn(model(inputs), targets))`` on its
    shard, ``grads = allreduce(grads)``, ``tx`` update, the non-parameter state taken from
    the first server; returns the servers' mean loss.

    Args:
        graphdef: the model's graph definition (from :func:`init_data_parallel_state`).
        tx: the optimizer.
        allreduce: the gradient all-reduce (:func:`make_allreduce`).
        mesh: the servers' mesh.
        loss_fn: ``loss_fn(outputs, targets) -> []`` mean loss of one server's shard.
        axis_name: the data axis of ``mesh``.

    Returns:
        ``step(state, batch, step_index, key) -> (state, mean loss [])``: ``state`` is
        donated (do not reuse it after the call), ``batch`` is sharded over ``axis_name``,
        ``step_index`` is the ``[]`` int32 step number and ``key`` the run's PRNG key
        (made once per run): step ``i`` draws its errors (``optinc-inject``) with
        ``fold_in(key, i)``.

    Raises:
        ValueError: if the mesh's server count differs from the unit's.
    """
    servers = mesh.shape[axis_name]
    allreduce.check_servers(servers)

    def local_step(state: DataParallelState, batch: Batch, step_index: jax.Array, key):
        model = nnx.merge(graphdef, state.params, state.rest)
        loss, grads = nnx.value_and_grad(  # with respect to every nnx.Param
            lambda model: loss_fn(model(batch.inputs), batch.targets)
        )(model)
        rest = nnx.state(model, nnx.Not(nnx.Param))  # batch statistics, updated
        grads = allreduce(grads, axis_name, jax.random.fold_in(key, step_index))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        rest = _from_first_server(rest, axis_name)
        return DataParallelState(params, rest, opt_state), lax.pmean(loss, axis_name)

    mapped = jax.shard_map(
        local_step,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(axis_name), PartitionSpec(), PartitionSpec()),
        out_specs=(PartitionSpec(), PartitionSpec()),
        check_vma=False,  # each server's gradient is its own (module docstring)
    )
    return jax.jit(mapped, donate_argnums=0)


@functools.lru_cache(maxsize=16)
def _make_eval_step(graphdef: nnx.GraphDef) -> Callable:
    """Jitted ``(params, rest, batch) -> [3]`` sums: (nll, correct, count).

    ``count`` is examples (images) or tokens (text); padding has weight 0.
    """

    def evaluate(params, rest, batch: Batch) -> jax.Array:
        logits = nnx.merge(graphdef, params, rest)(batch.inputs).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch.targets)
        correct = (jnp.argmax(logits, axis=-1) == batch.targets).astype(jnp.float32)
        weights = batch.weights.reshape(batch.weights.shape + (1,) * (nll.ndim - 1))
        weights = jnp.broadcast_to(weights, nll.shape)
        return jnp.stack([jnp.sum(nll * weights), jnp.sum(correct * weights), jnp.sum(weights)])

    return jax.jit(evaluate)


def evaluate_heldout(
    graphdef: nnx.GraphDef,
    state: DataParallelState,
    data: ImageData | TextData,
    *,
    batch_size: int,
    mesh: Mesh | None,
    seq_len: int | None = None,
    max_examples: int | None = None,
) -> dict[str, float]:
    """Held-out loss, accuracy (images: top-1; text: next byte) and perplexity (text).

    One jitted evaluation per batch (compiled once per model), the sums accumulated on
    the device and fetched once.

    Args:
        graphdef: the model's graph definition **in eval mode** (``model.eval()`` before
            ``nnx.split``: batch norm uses its running averages).
        state: the run's state.
        data: the data.
        batch_size: held-out examples per batch.
        mesh: the servers' mesh.
        seq_len: tokens per window (text).
        max_examples: at most this many held-out examples.

    Returns:
        ``{"loss": nats per example or token, "accuracy": fraction, "examples": count}``
        plus ``"perplexity": exp(loss)`` for text.
    """
    eval_step = _make_eval_step(graphdef)
    total = jnp.zeros(3, jnp.float32)
    for batch in heldout_batches(
        data, batch_size=batch_size, mesh=mesh, seq_len=seq_len, max_examples=max_examples
    ):
        total = total + eval_step(state.params, state.rest, batch)
    nll, correct, count = (float(v) for v in np.asarray(total))
    out = {"loss": nll / count, "accuracy": correct / count, "examples": int(count)}
    if data.kind == "text":
        out["perplexity"] = math.exp(out["loss"]) if out["loss"] < 700 else math.inf
    return out


def make_distributed_optimizer(
    model: str, learning_rate: float, warmup_fraction: float, steps: int
) -> optax.GradientTransformation:
    """The model's optimizer: linear warm-up, cosine decay (to 0 for SGD, 10 % for AdamW).

    Args:
        model: a name of :data:`DISTRIBUTED_MODELS` (its recipe picks SGD with Nesterov
            momentum or AdamW with gradient clipping, and the weight decay).
        learning_rate: peak learning rate.
        warmup_fraction: share of ``steps`` spent warming up linearly from 0.
        steps: total optimizer steps of the run.

    Returns:
        The optax transformation.
    """
    spec = DISTRIBUTED_MODELS[model]
    warmup = round(warmup_fraction * steps)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        learning_rate,
        warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1),
        end_value=learning_rate * (0.0 if spec.optimizer == "sgd" else 0.1),
    )
    if spec.optimizer == "sgd":
        return optax.chain(
            optax.add_decayed_weights(spec.weight_decay),
            optax.sgd(schedule, momentum=0.9, nesterov=True),
        )
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, b2=0.95, weight_decay=spec.weight_decay),
    )


@functools.lru_cache(maxsize=16)
def _compiled_run_steps(
    config: DistributedConfig, graphdef: nnx.GraphDef, mesh: Mesh, allreduce: AllReduce
) -> tuple[optax.GradientTransformation, Callable]:
    """The optimizer and jitted step of a run, shared by runs that differ in seed only.

    ``config`` is resolved; the key is the config less everything that does not enter
    the step (the seed is an argument of the step, the data a shape of its inputs).
    """
    tx = make_distributed_optimizer(
        config.model, config.learning_rate, config.warmup_fraction, config.steps
    )
    return tx, make_train_step(graphdef, tx, allreduce, mesh)


def _step_key(config: DistributedConfig) -> DistributedConfig:
    """The config with the fields that do not change the compiled step normalised."""
    return config.replace(
        seed=0,
        data=None,
        eval_every=None,
        eval_examples=None,
        log_every=1,
        checkpoint_every=None,
        onn=None,
        errors=None,
    )


# ---------------------------------------------------------------------------- training


class DistributedResult(NamedTuple):
    """What :func:`train_distributed` returns.

    Attributes:
        record: the JSON document written to ``result.json``.
        state: the final :class:`DataParallelState`.
        graphdef: the model's graph definition (``nnx.merge(graphdef, params, rest)``).
    """

    record: dict
    state: DataParallelState
    graphdef: nnx.GraphDef


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    flags = [
        jnp.all(jnp.isfinite(leaf))
        for leaf in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def _progress_bar(total: int, initial: int, enabled: bool, name: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        desc=name,
        unit="step",
        dynamic_ncols=True,
        leave=True,
        smoothing=0.1,
    )


def _summary(config: DistributedConfig, history: dict) -> dict[str, Any]:
    """The final numbers of a finished run."""
    kind = config.spec.kind
    losses = history["loss"]
    window = losses[-FINAL_LOSS_WINDOW:]
    heldout = {key: history[f"heldout_{key}"][-1] for key in ("loss", "accuracy")}
    if kind == "text":
        heldout["perplexity"] = history["heldout_perplexity"][-1]
    return {
        "metric": "accuracy" if kind == "image" else "loss",
        "final": heldout["accuracy"] if kind == "image" else heldout["loss"],
        "final_loss": sum(window) / len(window),
        "last_loss": losses[-1],
        "heldout": heldout,
    }


def train_distributed(
    config: DistributedConfig,
    workdir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    data: ImageData | TextData | None = None,
    mesh: Mesh | None = None,
    on_log: Callable[[int, dict], None] | None = None,
) -> DistributedResult:
    """Trains one model data-parallel over ``config.servers`` servers with one all-reduce.

    Writes ``workdir/result.json`` (config, all-reduce, data, per-step training loss,
    held-out metrics per evaluation, final numbers, timings) and
    ``workdir/checkpoints/``. See the module docstring for the step, batch norm, resume
    and divergence.

    Args:
        config: the run.
        workdir: run directory.
        resume: continue from the latest checkpoint (its config must equal this one); a
            finished run returns its stored result without training. Without a
            checkpoint the run starts fresh.
        progress: show a progress bar on stderr.
        data: the data (``None``: :func:`load_training_data`).
        mesh: the servers' mesh (``None``: :func:`server_mesh` of ``config.servers``).
        on_log: called as ``on_log(step, history)`` after every loss fetch (and any
            checkpoint written at that step).

    Returns:
        The :class:`DistributedResult`.

    Raises:
        ValueError: on an invalid config, a server count the unit does not serve, a
            mesh that does not match ``config.servers``, or unusable data.
        CheckpointError: if ``workdir`` holds checkpoints and ``resume`` is false, or they
            belong to another config or data, or are unreadable.
        CheckpointWriteError: if a checkpoint cannot be written (the previous is kept).
        RunDirectoryBusy: if another process trains in ``workdir``.
        RunDirectoryUnwritable: if ``workdir`` cannot be written.
        TrainingDiverged: at the first non-finite loss or parameter; ``result.json``
            records the divergence and no metric, the last finite checkpoint is kept.
    """
    config = config.resolved()
    allreduce = config.make_allreduce()
    mesh = server_mesh(config.servers) if mesh is None else mesh
    if DATA_AXIS not in mesh.axis_names or mesh.shape[DATA_AXIS] != config.servers:
        raise ValueError(
            f"mesh must have a {DATA_AXIS!r} axis of {config.servers} servers, got "
            f"{dict(mesh.shape)}"
        )
    data = load_training_data(config) if data is None else data
    model = build_distributed_model(
        config.model, data, seed=config.seed, norm=config.norm, seq_len=config.seq_len
    )
    with run_directory_lock(workdir) as workdir:
        return _train_locked(
            config, Path(workdir), allreduce, mesh, data, model, resume, progress, on_log
        )


def _train_locked(
    config: DistributedConfig,
    workdir: Path,
    allreduce: AllReduce,
    mesh: Mesh,
    data: ImageData | TextData,
    model: nnx.Module,
    resume: bool,
    progress: bool,
    on_log: Callable[[int, dict], None] | None,
) -> DistributedResult:
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx, step_fn = _compiled_run_steps(_step_key(config), graphdef, mesh, allreduce)
    state = DataParallelState(params, rest, tx.init(params))
    model.eval()
    eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
    params_count = parameter_count(model)
    identity = {
        "config": config.to_json(),
        "data": data.describe(),
        "collective": allreduce.describe(),
    }
    history: dict[str, list] = {
        "loss": [],
        "eval_step": [],
        "heldout_loss": [],
        "heldout_accuracy": [],
        **({"heldout_perplexity": []} if data.kind == "text" else {}),
    }
    checkpointer = TrainCheckpointer(workdir / CHECKPOINT_DIR)
    start, seconds = 0, {"train": 0.0, "eval": 0.0, "checkpoint": 0.0, "first_step": 0.0}
    try:
        if checkpointer.latest_epoch() is not None:
            if not resume:
                raise CheckpointError(
                    f"{workdir} already holds checkpoints; pass resume=True (--resume) to continue"
                )
            state, start, record = checkpointer.restore(state)
            stored = {key: record.get(key) for key in identity}
            if stored != identity:
                raise CheckpointError(
                    f"the checkpoint in {workdir} was written for another run: "
                    f"{stored} is not {identity}"
                )
            history, seconds = record["history"], record["seconds"]
            finished = _stored_result(workdir, identity, start)
            if finished is not None and start >= config.steps:
                return DistributedResult(finished, state, graphdef)
        replicated = NamedSharding(mesh, PartitionSpec())
        state = jax.device_put(state, replicated)
        run_key = jax.device_put(jax.random.key(config.seed), replicated)
        batch_size = config.batch_per_server * config.servers
        eval_batch = config.servers * max(1, 256 // config.servers)
        if data.kind == "text":
            eval_batch = config.servers * max(1, 32 // config.servers)
        batches = train_batches(
            data,
            batch_size=batch_size,
            seed=config.seed,
            mesh=mesh,
            seq_len=config.seq_len,
            start_step=start,
        )
        name = f"{config.model} {config.allreduce} s{config.seed}"
        bar = _progress_bar(config.steps, start, progress, name)
        pending: list[jax.Array] = []
        step = start
        tic = time.perf_counter()
        while step < config.steps:
            state, loss = step_fn(state, next(batches), np.int32(step), run_key)
            pending.append(loss)
            step += 1
            if step == start + 1:  # the first call compiles: timed on its own
                loss.block_until_ready()
                seconds["first_step"] += time.perf_counter() - tic
                tic = time.perf_counter()
            due_eval = step % config.eval_every == 0 or step == config.steps
            due_checkpoint = step % config.checkpoint_every == 0 or step == config.steps
            if step % config.log_every and not due_eval and not due_checkpoint:
                continue
            # One transfer per log interval: the pending losses and one finiteness flag.
            fetched, params_finite = jax.device_get((pending, _all_finite(state.params)))
            losses = [float(v) for v in fetched]
            pending = []
            seconds["train"] += time.perf_counter() - tic
            history["loss"].extend(losses)
            bar.update(len(losses))
            bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
            if bad is not None or not params_finite:
                bar.close()
                what = (
                    f"loss {losses[bad]} at step {step - len(losses) + 1 + bad}"
                    if bad is not None
                    else "a parameter became non-finite (the loss can stay finite: relu maps "
                    "NaN to 0)"
                )
                _stop_diverged(workdir, identity, step, what, history, checkpointer)
            bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
            if due_eval:
                tic = time.perf_counter()
                metrics = evaluate_heldout(
                    eval_graphdef,
                    state,
                    data,
                    batch_size=eval_batch,
                    mesh=mesh,
                    seq_len=config.seq_len,
                    max_examples=config.eval_examples,
                )
                history["eval_step"].append(step)
                for key in ("loss", "accuracy", "perplexity"):
                    if f"heldout_{key}" in history:
                        history[f"heldout_{key}"].append(metrics[key])
                seconds["eval"] += time.perf_counter() - tic
                shown = "accuracy" if data.kind == "image" else "loss"
                bar.set_postfix(
                    loss=f"{losses[-1]:.4g}", **{f"heldout_{shown}": f"{metrics[shown]:.4g}"}
                )
                if not math.isfinite(metrics["loss"]):
                    bar.close()
                    what = f"held-out loss {metrics['loss']}"
                    _stop_diverged(workdir, identity, step, what, history, checkpointer)
            if due_checkpoint:  # the state was checked finite above
                tic = time.perf_counter()
                checkpointer.save(step, state, {**identity, "history": history, "seconds": seconds})
                seconds["checkpoint"] += time.perf_counter() - tic
            if on_log is not None:
                on_log(step, history)
            tic = time.perf_counter()
        bar.close()
    finally:
        checkpointer.close()

    timed_steps = config.steps - start - 1
    record = {
        "status": "finished",
        "model": config.model,
        "allreduce": config.allreduce,
        "seed": config.seed,
        "steps": config.steps,
        "servers": config.servers,
        "bits": allreduce.bits,
        **_summary(config, history),
        "parameters": params_count,
        "batch_per_server": config.batch_per_server,
        "seconds": seconds,
        "steps_per_second": (
            timed_steps / seconds["train"] if timed_steps > 0 and seconds["train"] > 0 else None
        ),
        "device": mesh.devices.flat[0].platform,
        "devices": int(mesh.size),
        **identity,
        "history": history,
    }
    write_json_atomically(workdir / RESULT_FILE, record)
    return DistributedResult(record, state, graphdef)


def _stored_result(workdir: Path, identity: dict, step: int) -> dict | None:
    """The finished ``result.json`` of this run at this step, if it was written."""
    path = workdir / RESULT_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = all(record.get(key) == value for key, value in identity.items())
    if not same or record.get("status") != "finished" or record.get("steps") != step:
        return None
    return record


def _stop_diverged(
    workdir: Path,
    identity: dict,
    step: int,
    what: str,
    history: dict,
    checkpointer: TrainCheckpointer,
) -> None:
    """Records the divergence in ``result.json`` (no metric in it) and raises.

    The non-finite state is never checkpointed: the last checkpoint stays the last finite.

    Raises:
        TrainingDiverged: always.
    """
    last = checkpointer.latest_epoch()
    message = (
        f"training diverged by step {step} ({what}); "
        + (
            f"the last finite checkpoint (step {last}) is kept in {workdir}"
            if last is not None
            else "no checkpoint had been written yet"
        )
        + "; lower the learning rate and start a new run"
    )
    finite = [v if math.isfinite(v) else None for v in history["loss"]]
    write_json_atomically(
        workdir / RESULT_FILE,
        {
            "status": "diverged",
            "error": message,
            "diverged_by_step": step,
            "last_checkpoint_step": last,
            **identity,
            "history": {**history, "loss": finite},
        },
    )
    raise TrainingDiverged(message, step, last)
