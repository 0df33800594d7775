"""The optical neural network (ONN): a ReLU MLP in Flax NNX.

The weight matrices are what the MZI meshes implement; ReLU stands for the optical
nonlinearity. Inputs are the preprocessed values ``x_m`` in ``[0, 4^r - 1]``; outputs are
the raw amplitudes of the ``K`` PAM4 symbols before the receiver rounds them. Fixed affine
maps around the MLP (``input_shift``/``input_scale``, ``output_scale``/``output_shift``)
centre the data; they are plain numbers, not trained, and are part of the export format:
``y = MLP((x - input_shift) * input_scale) * output_scale + output_shift``.
"""

import dataclasses
import itertools
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from optinc_jax.photonics.precision import FULL_PRECISION
from optinc_jax.validation import require_int

__all__ = [
    "ONN",
    "ONNApply",
    "build_onn",
    "layer_leaf",
    "leaky_relu",
    "onn_apply_fn",
    "onn_weights",
    "weight_matrix_index",
]


class ONN(nnx.Module):
    """ReLU MLP with fixed input/output affine maps.

    Args:
        layers: widths ``(I, h_1, ..., K)``.
        rngs: NNX random streams for initialization.
        input_shift: subtracted from every input (same unit as ``x``).
        input_scale: multiplies the shifted input.
        output_shift: added to the scaled MLP output (PAM4 symbol units).
        output_scale: multiplies the MLP output.
        param_dtype: dtype of weights and biases.

    Every matrix product runs at ``Precision.HIGHEST``: full float32 on every backend (a
    GPU's default would round float32 products to TF32), so the exhaustive accuracy an
    accelerator reports is the float32 one the CPU reports.

    Examples:
        >>> model = ONN((4, 8, 4), rngs=nnx.Rngs(0))
        >>> model(jnp.zeros((3, 4))).shape
        (3, 4)
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        rngs: nnx.Rngs,
        input_shift: float = 0.0,
        input_scale: float = 1.0,
        output_shift: float = 0.0,
        output_scale: float = 1.0,
        param_dtype: jnp.dtype = jnp.float32,
    ):
        layers = tuple(require_int("every layer width", width, 1) for width in layers)
        if len(layers) < 2:
            raise ValueError(f"layers must hold >= 2 positive widths, got {layers}")
        self.layer_sizes = layers
        self.input_shift = float(input_shift)
        self.input_scale = float(input_scale)
        self.output_shift = float(output_shift)
        self.output_scale = float(output_scale)
        self.layers = nnx.List(
            [
                nnx.Linear(
                    fan_in,
                    fan_out,
                    rngs=rngs,
                    param_dtype=param_dtype,
                    precision=FULL_PRECISION,
                )
                for fan_in, fan_out in itertools.pairwise(layers)
            ]
        )

    def __call__(self, x: jax.Array, leak: jax.Array | None = None) -> jax.Array:
        """Raw symbol amplitudes.

        Args:
            x: preprocessed inputs ``[..., I]``.
            leak: ``None`` for the ONN's ReLU; a scalar slope for the negative side
                instead (a training aid, :func:`leaky_relu`; not the optical network).

        Returns:
            ``[..., K]`` raw outputs (PAM4 symbol units, before rounding).
        """
        return self.readout(self.features(x, leak))

    def readout(self, features: jax.Array) -> jax.Array:
        """The raw outputs of given last-layer features (the last matrix and the output map).

        Args:
            features: ``[..., h_last]`` activations of the last hidden layer
                (:meth:`features`).

        Returns:
            ``[..., K]`` raw outputs, as :meth:`__call__` computes them.
        """
        return self.layers[-1](features) * self.output_scale + self.output_shift

    def features(self, x: jax.Array, leak: jax.Array | None = None) -> jax.Array:
        """The last hidden layer's activations, what the last weight matrix combines.

        Args:
            x: preprocessed inputs ``[..., I]``.
            leak: as in :meth:`__call__`.

        Returns:
            ``[..., h_last]`` ReLU outputs (``x`` itself, centred, for a one-matrix ONN).
        """
        hidden = self.hidden_activations(x, leak)
        return hidden[-1] if hidden else (x - self.input_shift) * self.input_scale

    def hidden_activations(self, x: jax.Array, leak: jax.Array | None = None) -> list[jax.Array]:
        """The ReLU outputs of every hidden layer, in order.

        Args:
            x: preprocessed inputs ``[..., I]``.
            leak: as in :meth:`__call__`.

        Returns:
            One ``[..., h_l]`` array per hidden layer (an empty list for a one-matrix ONN).
        """
        hidden, activations = (x - self.input_shift) * self.input_scale, []
        for layer in self.layers[:-1]:
            hidden = jax.nn.relu(layer(hidden)) if leak is None else leaky_relu(layer(hidden), leak)
            activations.append(hidden)
        return activations


def leaky_relu(z: jax.Array, leak: jax.Array) -> jax.Array:
    """``z`` where positive, ``leak * z`` elsewhere: the training-time activation.

    With ``leak = 0`` the values are the ReLU's. Annealed to 0 during training
    (``TrainConfig.leak_start`` / ``leak_until``), it keeps gradient flowing through units
    that no input switches on, while the trained network is the paper's ReLU MLP.

    Args:
        z: pre-activations, any shape.
        leak: slope on the negative side, a scalar in ``[0, 1)``.

    Returns:
        An array like ``z``.

    Examples:
        >>> leaky_relu(jnp.array([-2.0, 0.0, 3.0]), 0.25).tolist()
        [-0.5, 0.0, 3.0]
    """
    return jnp.where(z > 0, z, leak * z)


def build_onn(layers: Sequence[int], *, symbols_per_input: int, seed: int = 0) -> ONN:
    """ONN for inputs on ``[0, 4^r - 1]`` and outputs on the PAM4 levels ``0..3``.

    Inputs are centred to ``[-1, 1]`` and the MLP's output is mapped so that 0 means
    the middle level 1.5 and +-1 the extreme levels.

    Args:
        layers: widths ``(I, ..., K)``.
        symbols_per_input: r, PAM4 symbols merged into each ONN input.
        seed: initialization seed.

    Returns:
        A freshly initialized :class:`ONN`.

    Raises:
        ValueError: on a width or ``symbols_per_input`` below 1 or a negative ``seed``.
    """
    symbols_per_input = require_int("symbols_per_input", symbols_per_input, 1)
    layers = tuple(require_int("every layer width", width, 1) for width in layers)
    seed = require_int("seed", seed, 0)
    if seed >= 2**31:  # beyond int32: as jax.random.key makes it, eagerly
        return _make_onn(seed, layers, symbols_per_input)
    # The structure traced without computing, the parameters by one compiled program: the
    # same values as eager initialization (a test), compiled once per architecture rather
    # than an eager program per operation and layer shape (about 1 s saved for 8b4s).
    abstract = nnx.eval_shape(lambda: _make_onn(jnp.int32(0), layers, symbols_per_input))
    state = _initial_state(jnp.int32(seed), layers, symbols_per_input)
    return nnx.merge(nnx.graphdef(abstract), state)


def _make_onn(seed: "int | jax.Array", layers: tuple[int, ...], symbols_per_input: int) -> ONN:
    input_max = 4.0**symbols_per_input - 1.0
    return ONN(
        layers,
        rngs=nnx.Rngs(jax.random.key(seed)),
        input_shift=input_max / 2.0,
        input_scale=2.0 / input_max,
        output_shift=1.5,
        output_scale=1.5,
    )


@partial(jax.jit, static_argnames=("layers", "symbols_per_input"))
def _initial_state(seed: jax.Array, layers: tuple[int, ...], symbols_per_input: int) -> nnx.State:
    return nnx.state(_make_onn(seed, layers, symbols_per_input))


def weight_matrix_index(path: tuple) -> int | None:
    """0-based index of the weight matrix a parameter path belongs to, if it is a kernel.

    Works on paths of ``nnx.State`` leaves as well as of their pure-dict form.

    Args:
        path: a key path from ``jax.tree_util.tree_flatten_with_path``.

    Returns:
        The layer index for a ``layers/<i>/kernel`` leaf, else ``None``.
    """
    leaf = layer_leaf(path)
    return leaf[0] if leaf is not None and leaf[1] == "kernel" else None


def layer_leaf(path: tuple) -> tuple[int, str] | None:
    """The 0-based layer index and leaf name (``"kernel"``, ``"bias"``) of a parameter path.

    Args:
        path: a key path from ``jax.tree_util.tree_flatten_with_path``.

    Returns:
        ``(index, name)`` for a ``layers/<i>/<name>`` leaf, else ``None``.
    """
    names = [getattr(key, "key", getattr(key, "name", getattr(key, "idx", None))) for key in path]
    for position in range(len(names) - 2):
        if names[position] == "layers":
            return int(names[position + 1]), str(names[position + 2])
    return None


def onn_weights(params) -> list[tuple[jax.Array, jax.Array]]:
    """The ``(W [out, in], b [out])`` pairs of an ONN parameter state, in layer order.

    Args:
        params: ``nnx.State`` (or its pure dict) holding ``layers/<i>/{kernel,bias}``.

    Returns:
        One ``(weight, bias)`` pair per layer; ``weight`` is ``kernel.T``.
    """
    pure = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
    layers = pure["layers"]
    return [(layers[i]["kernel"].T, layers[i]["bias"]) for i in sorted(layers, key=int)]


@dataclasses.dataclass(frozen=True)
class ONNApply:
    """The pure forward ``apply(params, x) -> y`` of an ONN architecture, keyed by value.

    It holds only the NNX graph definition (layer widths and the fixed affine maps), which
    compares and hashes by value. Used as a static argument of jitted functions (the
    training epoch, the evaluation chunk), two equal architectures therefore share one
    compilation, whatever the parameters and however many times the model is rebuilt
    (noise sweeps, many runs, reloaded runs).

    Attributes:
        graphdef: the ``nnx.GraphDef`` of the model's structure.
    """

    graphdef: nnx.GraphDef

    def __call__(self, params: nnx.State, x: jax.Array, leak: jax.Array | None = None) -> jax.Array:
        """Raw symbol amplitudes ``[..., K]`` of inputs ``x [..., I]``.

        ``leak``: as in :meth:`ONN.__call__` (``None``: the ReLU).
        """
        return nnx.merge(self.graphdef, params)(x, leak)


def onn_apply_fn(model: ONN) -> tuple[ONNApply, nnx.State]:
    """Splits a model into a pure ``apply(params, x) -> y`` and its parameter state.

    Args:
        model: the ONN.

    Returns:
        ``(apply, params)`` where ``apply(params, x [..., I]) -> [..., K]`` is pure,
        jittable and compares by value (:class:`ONNApply`), and ``params`` is the
        ``nnx.State`` of its ``nnx.Param`` variables.

    Examples:
        >>> apply_a, _ = onn_apply_fn(ONN((4, 8, 4), rngs=nnx.Rngs(0)))
        >>> apply_b, _ = onn_apply_fn(ONN((4, 8, 4), rngs=nnx.Rngs(1)))
        >>> apply_a == apply_b and hash(apply_a) == hash(apply_b)
        True
    """
    graphdef, params = nnx.split(model, nnx.Param)
    return ONNApply(graphdef), params
