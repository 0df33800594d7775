"""Parameter counts and training-step FLOPs of the models, read from their definitions.

The latency model of the paper's Fig. 7(b) needs, per model, the gradient size (the
parameter count) and the compute of one training step. Both come from the Flax models
here, never typed in:

- :func:`parameter_count` counts the ``nnx.Param`` leaves of a model (batch-norm running
  statistics, ``nnx.BatchStat``, are buffers, not gradients, and are excluded).
- :func:`train_step_flops` asks XLA: the step (forward and backward of the mean softmax
  cross-entropy, gradients with respect to every ``nnx.Param``; no optimizer update, which
  adds a few FLOPs per parameter) is jitted and *lowered* on abstract inputs
  (``jax.ShapeDtypeStruct``; models built under ``nnx.eval_shape``), and the ``"flops"``
  entry of its cost analysis is read. Nothing of the model's size is allocated and nothing
  is compiled unless the lowered analysis gives no FLOP count (then the step is compiled
  and the compiled analysis is read).

:data:`LATENCY_MODELS` names the paper's two models with the per-server batch assumed for
each (the paper does not give its batch sizes: :data:`RESNET50_BATCH_PER_SERVER` and
:data:`LLAMA_BATCH_PER_SERVER` are this package's assumptions). :func:`model_cost` caches
its result per ``(name, batch)``, since tracing ResNet-50 takes seconds.
"""

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from optinc_jax.network.llama import PAPER_LLAMA_MAX_LEN, build_llama
from optinc_jax.network.resnet import build_resnet
from optinc_jax.validation import require_choice, require_int

__all__ = [
    "CIFAR100_CLASSES",
    "CIFAR_IMAGE_SHAPE",
    "LATENCY_MODELS",
    "LLAMA_BATCH_PER_SERVER",
    "RESNET50_BATCH_PER_SERVER",
    "LatencyModel",
    "ModelCost",
    "cost_analysis_flops",
    "cross_entropy_loss",
    "model_cost",
    "parameter_count",
    "train_step_flops",
]

CIFAR_IMAGE_SHAPE: tuple[int, int, int] = (32, 32, 3)
"""One CIFAR image, ``[height, width, channels]``."""

CIFAR100_CLASSES = 100
"""Classes of CIFAR-100."""

RESNET50_BATCH_PER_SERVER = 128
"""Assumed images per server per step for ResNet-50 on CIFAR-100 (the common CIFAR
minibatch; the paper does not give its batch size)."""

LLAMA_BATCH_PER_SERVER = 8
"""Assumed sequences (of ``PAPER_LLAMA_MAX_LEN`` tokens) per server per step for the
LLaMA-style model (the paper does not give its batch size)."""


class LatencyModel(NamedTuple):
    """A model of the paper's Fig. 7(b) with its assumed training input.

    Attributes:
        builder: ``builder(seed=...) -> nnx.Module`` mapping inputs to logits.
        batch_per_server: default examples per server per step.
        example_shape: shape of one example (an image ``[h, w, c]``, or ``[seq]`` tokens).
        input_dtype: dtype of the inputs (``"float32"`` images, ``"int32"`` tokens).
        description: what the model and its input are.
    """

    builder: Callable[..., nnx.Module]
    batch_per_server: int
    example_shape: tuple[int, ...]
    input_dtype: str
    description: str


LATENCY_MODELS: dict[str, LatencyModel] = {
    "resnet50": LatencyModel(
        functools.partial(build_resnet, "resnet50", num_classes=CIFAR100_CLASSES),
        RESNET50_BATCH_PER_SERVER,
        CIFAR_IMAGE_SHAPE,
        "float32",
        "ResNet-50 (CIFAR stem, batch norm) on 32x32 CIFAR-100 images",
    ),
    "llama": LatencyModel(
        functools.partial(build_llama, "paper"),
        LLAMA_BATCH_PER_SERVER,
        (PAPER_LLAMA_MAX_LEN,),
        "int32",
        "LLaMA-style decoder (8 layers, hidden 384, 8 heads; vocab 32,000 and 512-token "
        "sequences assumed), next-token prediction",
    ),
}
"""The paper's Fig. 7(b) models by name (the names of ``optinc latency --model``)."""


class ModelCost(NamedTuple):
    """Size and compute of one model's training step; ``_asdict()`` is JSON-ready.

    Attributes:
        model: the model's name in :data:`LATENCY_MODELS`.
        params: trainable parameters (``nnx.Param`` entries; the gradient size).
        batch: examples per server per step.
        example_shape: shape of one example.
        input_dtype: dtype of the inputs.
        flops_per_step: FLOPs of one forward + backward step on ``batch`` examples.
        flops_source: ``"xla_lowered"`` or ``"xla_compiled"``: which cost analysis gave it.
    """

    model: str
    params: int
    batch: int
    example_shape: tuple[int, ...]
    input_dtype: str
    flops_per_step: float
    flops_source: str


def parameter_count(model: nnx.Module) -> int:
    """Number of trainable parameters: the entries of every ``nnx.Param`` of the model.

    Batch-norm running statistics (``nnx.BatchStat``) and any other non-``Param`` variable
    are not counted; a parameter shared by two modules (a tied embedding) counts once.
    Works on abstract models (built under ``nnx.eval_shape``) as well.

    Args:
        model: the module.

    Returns:
        The count.

    Examples:
        >>> parameter_count(nnx.eval_shape(lambda: nnx.Linear(3, 4, rngs=nnx.Rngs(0))))
        16
    """
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    return sum(math.prod(leaf.shape) for leaf in leaves)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels.

    Args:
        logits: ``[..., classes]``.
        labels: ``[...]`` integer classes in ``[0, classes)``.

    Returns:
        Scalar mean loss (nats).
    """
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _read_flops(analysis: Any) -> float | None:
    """The ``"flops"`` of a cost analysis: a dict, a list of dicts (older JAX), or None."""
    if analysis is None:
        return None
    if isinstance(analysis, dict):
        flops = analysis.get("flops")
        return None if flops is None else float(flops)
    counts = [_read_flops(entry) for entry in analysis]
    counts = [count for count in counts if count is not None]
    return sum(counts) if counts else None


def cost_analysis_flops(lowered: jax.stages.Lowered) -> tuple[float, str]:
    """FLOPs of a lowered computation from XLA's cost analysis.

    The lowered (uncompiled) analysis is read first; only when it has no ``"flops"`` entry
    is the computation compiled and the compiled analysis read. Handles both return types
    of ``cost_analysis()`` across JAX versions (a dict, or a list with one dict per
    program, summed).

    Args:
        lowered: ``jax.jit(f).lower(...)``.

    Returns:
        ``(flops, source)`` with source ``"xla_lowered"`` or ``"xla_compiled"``.

    Raises:
        RuntimeError: if neither analysis reports FLOPs.

    Examples:
        >>> spec = jax.ShapeDtypeStruct((8, 16), jnp.float32)
        >>> lowered = jax.jit(lambda a, b: a @ b.T).lower(spec, spec)
        >>> cost_analysis_flops(lowered)  # 2 * 8 * 8 * 16
        (2048.0, 'xla_lowered')
    """
    flops = _read_flops(lowered.cost_analysis())
    if flops is not None:
        return flops, "xla_lowered"
    flops = _read_flops(lowered.compile().cost_analysis())
    if flops is not None:
        return flops, "xla_compiled"
    raise RuntimeError("XLA's cost analysis reported no 'flops' for this computation")


def _abstract(tree: Any) -> Any:
    """Every array leaf replaced by its ``jax.ShapeDtypeStruct``."""
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), tree)


def _lower_train_step(model: nnx.Module, inputs: jax.ShapeDtypeStruct) -> jax.stages.Lowered:
    """The jitted ``value_and_grad`` of the cross-entropy, lowered on abstract inputs."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = _abstract(params), _abstract(rest)

    def forward(params, rest, inputs):
        return nnx.merge(graphdef, params, rest)(inputs)

    logits = jax.eval_shape(forward, params, rest, inputs)
    labels = jax.ShapeDtypeStruct(logits.shape[:-1], jnp.int32)

    def step(params, rest, inputs, labels):
        module = nnx.merge(graphdef, params, rest)
        loss_and_grad = nnx.value_and_grad(lambda m: cross_entropy_loss(m(inputs), labels))
        loss, grads = loss_and_grad(module)  # gradients w.r.t. every nnx.Param
        return loss, grads, nnx.state(module, nnx.Not(nnx.Param))  # new batch statistics

    return jax.jit(step).lower(params, rest, inputs, labels)


def _step_flops(
    model: nnx.Module, batch: int, example_shape: tuple[int, ...], input_dtype: str
) -> tuple[float, str]:
    inputs = jax.ShapeDtypeStruct((batch, *example_shape), jnp.dtype(input_dtype))
    return cost_analysis_flops(_lower_train_step(model, inputs))


def train_step_flops(
    model: str | nnx.Module,
    batch: int | None = None,
    *,
    example_shape: tuple[int, ...] | None = None,
    input_dtype: str = "float32",
) -> float:
    """FLOPs of one training step (forward + backward of the cross-entropy) per XLA.

    The step maps ``inputs [batch, *example_shape]`` to logits ``[..., classes]`` and
    integer labels ``[...]`` (the logits' shape less the last axis: one label per image,
    one next token per position) to the mean cross-entropy and its gradient with respect
    to every ``nnx.Param``. The model's mode is used as is (a model fresh from the
    builders is in train mode: batch norm uses batch statistics). No array of the model's
    size is allocated: parameters and inputs enter as ``jax.ShapeDtypeStruct``.

    Args:
        model: a name in :data:`LATENCY_MODELS` (then the result is :func:`model_cost`'s,
            cached) or a module (concrete or from ``nnx.eval_shape``).
        batch: examples per step (``None`` with a name: the model's default).
        example_shape: shape of one example; required with a module, refused with a name.
        input_dtype: dtype of the inputs with a module (``"int32"`` for token models).

    Returns:
        FLOPs of the step (XLA counts a multiply-add as 2).

    Raises:
        ValueError: for an unknown name, a missing or superfluous ``example_shape``, or a
            batch that is not a positive integer.

    Examples:
        >>> linear = nnx.eval_shape(lambda: nnx.Linear(16, 4, rngs=nnx.Rngs(0)))
        >>> train_step_flops(linear, 8, example_shape=(16,)) > 2 * (2 * 8 * 16 * 4)
        True
    """
    if isinstance(model, str):
        if example_shape is not None:
            raise ValueError(
                f"example_shape must be None with a model name (it is the registry's), "
                f"got {example_shape!r}"
            )
        return model_cost(model, batch).flops_per_step
    if batch is None:
        raise ValueError("batch must be an integer >= 1 with a module, got None")
    if example_shape is None:
        raise ValueError("example_shape must be given with a module, got None")
    batch = require_int("batch", batch, 1)
    example_shape = tuple(require_int("example_shape", size, 1) for size in example_shape)
    return _step_flops(model, batch, example_shape, input_dtype)[0]


def model_cost(name: str, batch: int | None = None) -> ModelCost:
    """Parameters and training-step FLOPs of a model of :data:`LATENCY_MODELS` (cached).

    The model is built abstractly (``nnx.eval_shape``) and its step lowered, not run;
    results are cached per ``(name, batch)`` for the life of the process.

    Args:
        name: ``"resnet50"`` or ``"llama"``.
        batch: examples per server per step (``None``: the model's assumed default).

    Returns:
        The :class:`ModelCost`.

    Raises:
        ValueError: for an unknown name or a batch that is not a positive integer.
    """
    name = require_choice("model", name, tuple(LATENCY_MODELS))
    if batch is None:
        batch = LATENCY_MODELS[name].batch_per_server
    return _model_cost(name, require_int("batch", batch, 1))


@functools.cache
def _model_cost(name: str, batch: int) -> ModelCost:
    spec = LATENCY_MODELS[name]
    model = nnx.eval_shape(lambda: spec.builder(seed=0))
    flops, source = _step_flops(model, batch, spec.example_shape, spec.input_dtype)
    return ModelCost(
        model=name,
        params=parameter_count(model),
        batch=batch,
        example_shape=spec.example_shape,
        input_dtype=spec.input_dtype,
        flops_per_step=flops,
        flops_source=source,
    )
