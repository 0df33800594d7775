"""ResNets for small images (CIFAR-style) in Flax NNX: ResNet-50 and a small CPU ResNet.

The stem is the CIFAR one: a single 3x3 convolution with stride 1 and no max-pool, so a
32 x 32 image keeps its resolution into the first stage (an ImageNet stem would shrink it
to 8 x 8 at once). Stages after the first halve the resolution with a stride-2 convolution;
a global average pool and a linear head give the logits.

- ``resnet50``: bottleneck blocks ``[3, 4, 6, 3]``, stage widths 64, 128, 256, 512 with
  expansion 4 (stage outputs 256 ... 2048 channels), the stride on the 3x3 convolution
  ("ResNet v1.5"), projection shortcuts (1x1 convolution + norm) where the shape changes.
  With 100 classes it has 23,705,252 parameters, the standard CIFAR ResNet-50 count
  (torchvision's 25,557,032 less the 7x7 stem and the 1000-class head, plus the 3x3 stem
  and a 100-class head).
- ``resnet_small``: basic blocks ``[1, 1, 1]`` with widths 16, 32, 64 (a "ResNet-8" in the
  family of the CIFAR ResNet-20; 77,754 parameters with 10 classes and 1 input channel),
  for CPU runs. Any input channel count and any image size work (the pool is global),
  e.g. scikit-learn's 8 x 8 grayscale digits.

**Normalisation under data parallelism.** The norm is an explicit choice (``norm=``):

- ``"batch"`` (default, as in the paper's ResNet-50): ``nnx.BatchNorm``. In train mode
  (``model.train()``, the state after construction) it normalises with the statistics of
  the batch it sees and updates running averages held as ``nnx.BatchStat`` variables; in
  eval mode (``model.eval()``) it uses the running averages. Under ``jax.shard_map`` each
  server sees only its own shard, so by default the statistics are *per server* (like
  PyTorch DDP without SyncBatchNorm) and the running averages drift apart between servers:
  the training loop must average the ``nnx.BatchStat`` state over the data axis (or keep
  one copy per server). With ``batch_axis_name=`` set to the mesh axis the statistics are
  averaged over all servers inside the forward pass (synchronised batch norm), which adds a
  collective per norm layer that is not a gradient all-reduce.
- ``"group"``: ``nnx.GroupNorm`` with ``norm_groups`` groups: no batch dependence and no
  state, identical in train and eval mode and on any number of servers.

Layout: images are ``[batch, height, width, channels]`` (NHWC), float.
"""

from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from optinc_jax.validation import require_choice, require_int

__all__ = [
    "BOTTLENECK_EXPANSION",
    "RESNET_NAMES",
    "RESNET_PRESETS",
    "BasicBlock",
    "BottleneckBlock",
    "ResNet",
    "ResNetArchitecture",
    "build_resnet",
]

ResNetName = Literal["resnet50", "resnet_small"]
NormKind = Literal["batch", "group"]
BlockKind = Literal["basic", "bottleneck"]

RESNET_NAMES: tuple[str, ...] = ("resnet50", "resnet_small")
"""Names accepted by :func:`build_resnet`."""

BOTTLENECK_EXPANSION = 4
"""Output channels of a bottleneck block per channel of its 3x3 convolution."""

BATCH_NORM_MOMENTUM = 0.9
"""Running-average decay of the batch norm (PyTorch's ``momentum=0.1``)."""

NORM_EPSILON = 1e-5
"""Epsilon added to the variance by both norms."""

_CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")  # He, fan-out


class ResNetArchitecture(NamedTuple):
    """The shape of a ResNet, without the input and output sizes.

    Attributes:
        block: ``"basic"`` (two 3x3 convolutions) or ``"bottleneck"`` (1x1, 3x3, 1x1).
        stage_blocks: blocks per stage; every stage after the first starts with stride 2.
        stage_widths: channels of each stage's 3x3 convolutions (bottleneck stages output
            ``BOTTLENECK_EXPANSION`` times as many).
        stem_width: output channels of the 3x3 stem convolution.
        norm_groups: default groups of the ``"group"`` norm (divides every channel count).
    """

    block: BlockKind
    stage_blocks: tuple[int, ...]
    stage_widths: tuple[int, ...]
    stem_width: int
    norm_groups: int


RESNET_PRESETS: dict[str, ResNetArchitecture] = {
    "resnet50": ResNetArchitecture("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), 64, 32),
    "resnet_small": ResNetArchitecture("basic", (1, 1, 1), (16, 32, 64), 16, 8),
}
"""The two members of the family built by :func:`build_resnet`."""


def _conv(
    in_features: int, out_features: int, kernel: int, stride: int, *, rngs: nnx.Rngs
) -> nnx.Conv:
    """Bias-free convolution with symmetric padding ``kernel // 2`` (PyTorch's)."""
    pad = kernel // 2
    return nnx.Conv(
        in_features,
        out_features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=_CONV_INIT,
        rngs=rngs,
    )


def _norm_factory(
    norm: NormKind, groups: int, batch_axis_name: str | None, rngs: nnx.Rngs
) -> Callable[[int], nnx.Module]:
    """``features -> norm layer`` for the chosen normalisation."""
    if norm == "batch":
        return lambda features: nnx.BatchNorm(
            features,
            momentum=BATCH_NORM_MOMENTUM,
            epsilon=NORM_EPSILON,
            axis_name=batch_axis_name,
            rngs=rngs,
        )
    return lambda features: nnx.GroupNorm(
        features, num_groups=groups, epsilon=NORM_EPSILON, rngs=rngs
    )


class _Shortcut(nnx.Module):
    """Projection shortcut: 1x1 convolution with the block's stride, then a norm."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        stride: int,
        norm: Callable[[int], nnx.Module],
        *,
        rngs: nnx.Rngs,
    ):
        self.conv = _conv(in_features, out_features, 1, stride, rngs=rngs)
        self.norm = norm(out_features)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.conv(x))


class BasicBlock(nnx.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34, CIFAR ResNet-20).

    ``relu(norm(conv3x3(relu(norm(conv3x3_stride(x))))) + shortcut(x))``; the shortcut is
    the identity, or a 1x1 projection where the stride or the channel count changes.

    Args:
        in_features: input channels.
        width: channels of both convolutions (and of the output).
        stride: stride of the first convolution (1 or 2).
        norm: ``features -> norm layer``.
        rngs: NNX random streams for initialization.
    """

    expansion = 1

    def __init__(
        self,
        in_features: int,
        width: int,
        stride: int,
        norm: Callable[[int], nnx.Module],
        *,
        rngs: nnx.Rngs,
    ):
        self.conv1 = _conv(in_features, width, 3, stride, rngs=rngs)
        self.norm1 = norm(width)
        self.conv2 = _conv(width, width, 3, 1, rngs=rngs)
        self.norm2 = norm(width)
        self.shortcut = (
            _Shortcut(in_features, width, stride, norm, rngs=rngs)
            if stride != 1 or in_features != width
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[batch, h, w, in_features] -> [batch, h / stride, w / stride, width]``."""
        y = jax.nn.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return jax.nn.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class BottleneckBlock(nnx.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand, with a residual connection.

    Args:
        in_features: input channels.
        width: channels of the 3x3 convolution; the output has
            ``BOTTLENECK_EXPANSION * width`` channels.
        stride: stride of the 3x3 convolution (1 or 2).
        norm: ``features -> norm layer``.
        rngs: NNX random streams for initialization.
    """

    expansion = BOTTLENECK_EXPANSION

    def __init__(
        self,
        in_features: int,
        width: int,
        stride: int,
        norm: Callable[[int], nnx.Module],
        *,
        rngs: nnx.Rngs,
    ):
        out_features = BOTTLENECK_EXPANSION * width
        self.conv1 = _conv(in_features, width, 1, 1, rngs=rngs)
        self.norm1 = norm(width)
        self.conv2 = _conv(width, width, 3, stride, rngs=rngs)
        self.norm2 = norm(width)
        self.conv3 = _conv(width, out_features, 1, 1, rngs=rngs)
        self.norm3 = norm(out_features)
        self.shortcut = (
            _Shortcut(in_features, out_features, stride, norm, rngs=rngs)
            if stride != 1 or in_features != out_features
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[batch, h, w, in_features] -> [batch, h / stride, w / stride, 4 width]``."""
        y = jax.nn.relu(self.norm1(self.conv1(x)))
        y = jax.nn.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return jax.nn.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nnx.Module):
    """A ResNet with the CIFAR stem (3x3 convolution, stride 1, no max-pool).

    Args:
        architecture: blocks, stage sizes and widths (see :data:`RESNET_PRESETS`).
        num_classes: outputs of the linear head.
        in_channels: channels of the input images (3 for RGB, 1 for grayscale).
        norm: ``"batch"`` or ``"group"`` (see the module docstring for the choice under
            ``shard_map``).
        norm_groups: groups of the ``"group"`` norm (``None``: the architecture's default);
            must divide every channel count of the network.
        batch_axis_name: with ``norm="batch"``, the mesh axis to synchronise the batch
            statistics over (``None``: per-device statistics).
        rngs: NNX random streams for initialization.

    Raises:
        ValueError: for a non-positive size, an unknown norm, or groups that do not divide
            a channel count.

    Examples:
        >>> arch = ResNetArchitecture("basic", (1,), (4,), 4, 2)
        >>> model = nnx.eval_shape(lambda: ResNet(arch, num_classes=3, rngs=nnx.Rngs(0)))
        >>> nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((2, 8, 8, 3))).shape
        (2, 3)
        >>> model.eval()  # batch norm: running averages from now on
    """

    def __init__(
        self,
        architecture: ResNetArchitecture,
        *,
        num_classes: int,
        in_channels: int = 3,
        norm: NormKind = "batch",
        norm_groups: int | None = None,
        batch_axis_name: str | None = None,
        rngs: nnx.Rngs,
    ):
        block_kind = require_choice("block", architecture.block, ("basic", "bottleneck"))
        stage_blocks = tuple(require_int("stage_blocks", n, 1) for n in architecture.stage_blocks)
        stage_widths = tuple(require_int("stage_widths", w, 1) for w in architecture.stage_widths)
        if not stage_blocks or len(stage_blocks) != len(stage_widths):
            raise ValueError(
                "stage_blocks and stage_widths must be non-empty and of equal length, got "
                f"{stage_blocks} and {stage_widths}"
            )
        stem_width = require_int("stem_width", architecture.stem_width, 1)
        self.num_classes = require_int("num_classes", num_classes, 1)
        self.in_channels = require_int("in_channels", in_channels, 1)
        self.norm_kind = require_choice("norm", norm, ("batch", "group"))
        groups = architecture.norm_groups if norm_groups is None else norm_groups
        groups = require_int("norm_groups", groups, 1)
        block_type = BasicBlock if block_kind == "basic" else BottleneckBlock
        if self.norm_kind == "group":
            channels = {stem_width}
            for width in stage_widths:
                channels |= {width, block_type.expansion * width}
            bad = sorted(c for c in channels if c % groups)
            if bad:
                raise ValueError(
                    f"norm_groups must divide every channel count {sorted(channels)}, "
                    f"got {groups} (does not divide {bad})"
                )
        make_norm = _norm_factory(self.norm_kind, groups, batch_axis_name, rngs)

        self.stem_conv = _conv(self.in_channels, stem_width, 3, 1, rngs=rngs)
        self.stem_norm = make_norm(stem_width)
        blocks = []
        features = stem_width
        for stage, (count, width) in enumerate(zip(stage_blocks, stage_widths, strict=True)):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(block_type(features, width, stride, make_norm, rngs=rngs))
                features = block_type.expansion * width
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(features, self.num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Class logits.

        Args:
            x: images ``[batch, height, width, in_channels]``, float.

        Returns:
            ``[batch, num_classes]`` logits.

        Raises:
            ValueError: if ``x`` is not 4-D with ``in_channels`` channels.
        """
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"x must be [batch, height, width, {self.in_channels}], got shape {x.shape}"
            )
        y = jax.nn.relu(self.stem_norm(self.stem_conv(x)))
        for block in self.blocks:
            y = block(y)
        return self.head(jnp.mean(y, axis=(1, 2)))


def build_resnet(
    name: ResNetName,
    *,
    num_classes: int,
    in_channels: int = 3,
    norm: NormKind = "batch",
    batch_axis_name: str | None = None,
    seed: int = 0,
) -> ResNet:
    """A member of the family by name, freshly initialized (in train mode).

    Args:
        name: ``"resnet50"`` (23,705,252 parameters with 100 classes) or
            ``"resnet_small"`` (basic blocks ``[1, 1, 1]``, widths 16, 32, 64).
        num_classes: outputs of the head (100 for CIFAR-100, 10 for the digits).
        in_channels: channels of the input images.
        norm: ``"batch"`` or ``"group"`` (the preset's group count).
        batch_axis_name: mesh axis for synchronised batch norm (``None``: per device).
        seed: initialization seed.

    Returns:
        The :class:`ResNet`.

    Raises:
        ValueError: for an unknown name or invalid sizes.

    Examples:
        >>> model = nnx.eval_shape(lambda: build_resnet("resnet50", num_classes=100))
        >>> model.head.kernel.shape  # abstract (no memory): 2048 features, 100 classes
        (2048, 100)
        >>> small = nnx.eval_shape(lambda: build_resnet("resnet_small", num_classes=10))
        >>> nnx.eval_shape(lambda m, x: m(x), small, jnp.zeros((2, 8, 8, 3))).shape
        (2, 10)
    """
    name = require_choice("name", name, RESNET_NAMES)
    seed = require_int("seed", seed, 0)
    return ResNet(
        RESNET_PRESETS[name],
        num_classes=num_classes,
        in_channels=in_channels,
        norm=norm,
        batch_axis_name=batch_axis_name,
        rngs=nnx.Rngs(seed),
    )
