"""A LLaMA-style decoder-only transformer in Flax NNX.

The architecture of LLaMA (Touvron et al. 2023), the paper's "LLaMA-based network":
token embedding; ``layers`` pre-norm blocks, each
``h = h + attention(rms_norm(h))`` then ``h = h + swiglu(rms_norm(h))``; a final RMSNorm
and a linear output head. Every projection is bias-free. Attention is causal multi-head
attention with rotary position embeddings (RoPE, "rotate-half" convention: the first and
second halves of each head's features form the rotated pairs) applied to queries and keys;
there is no learned position embedding, so ``max_len`` only bounds the accepted length.
The MLP is SwiGLU: ``down(silu(gate(x)) * up(x))``.

**Output head: untied by default**, as in LLaMA (a separate ``[hidden, vocab]`` matrix);
``tie_embeddings=True`` computes the logits with the transposed embedding matrix instead
and has ``vocab * hidden`` fewer parameters.

Presets (:data:`LLAMA_PRESETS`):

- ``"small"``: 2 layers, hidden 64, 4 heads, a byte vocabulary (256) and sequences of up
  to 64 tokens, for CPU runs.
- ``"paper"``: the paper's 8 layers, hidden 384, 8 heads (``paper.LLAMA_STYLE_MODEL``),
  SwiGLU hidden 1024 by LLaMA's rule (:func:`swiglu_hidden`). The paper gives neither a
  vocabulary nor a sequence length: :data:`PAPER_LLAMA_VOCAB_SIZE` and
  :data:`PAPER_LLAMA_MAX_LEN` are this package's assumptions.

Tokens are ``[batch, seq]`` integers; logits ``[batch, seq, vocab]`` float32.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from optinc_jax.paper import LLAMA_STYLE_MODEL
from optinc_jax.validation import require_choice, require_int, require_real

__all__ = [
    "LLAMA_PRESETS",
    "PAPER_LLAMA_MAX_LEN",
    "PAPER_LLAMA_VOCAB_SIZE",
    "CausalSelfAttention",
    "DecoderBlock",
    "Llama",
    "LlamaConfig",
    "SwiGLU",
    "apply_rotary",
    "build_llama",
    "rotary_angles",
    "swiglu_hidden",
]

PAPER_LLAMA_VOCAB_SIZE = 32_000
"""Assumed vocabulary of the paper's model: LLaMA 2's SentencePiece vocabulary (the paper
cites LLaMA 2 and gives no tokenizer)."""

PAPER_LLAMA_MAX_LEN = 512
"""Assumed training sequence length of the paper's model (not given in the paper)."""


class LlamaConfig(NamedTuple):
    """Sizes of a LLaMA-style decoder.

    Attributes:
        vocab_size: tokens in the vocabulary.
        max_len: longest accepted sequence (tokens).
        layers: decoder blocks.
        hidden: model width ``d``.
        heads: attention heads; ``hidden / heads`` must be even (RoPE rotates pairs).
        mlp_hidden: SwiGLU inner width ``f``.
        rope_base: RoPE base ``theta`` (frequencies ``theta^(-2i / head_dim)``).
        norm_eps: epsilon of every RMSNorm.
        tie_embeddings: whether the output head reuses the embedding matrix.
    """

    vocab_size: int
    max_len: int
    layers: int
    hidden: int
    heads: int
    mlp_hidden: int
    rope_base: float = 10_000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False


def swiglu_hidden(hidden: int, multiple_of: int = 256) -> int:
    """LLaMA's SwiGLU inner width: ``8 d / 3`` rounded up to a multiple.

    Args:
        hidden: model width ``d``.
        multiple_of: rounding granule.

    Returns:
        ``multiple_of * ceil(floor(8 d / 3) / multiple_of)``.

    Examples:
        >>> swiglu_hidden(384), swiglu_hidden(4096)
        (1024, 11008)
    """
    hidden = require_int("hidden", hidden, 1)
    multiple_of = require_int("multiple_of", multiple_of, 1)
    return multiple_of * -(-(8 * hidden // 3) // multiple_of)


LLAMA_PRESETS: dict[str, LlamaConfig] = {
    "small": LlamaConfig(
        vocab_size=256, max_len=64, layers=2, hidden=64, heads=4, mlp_hidden=swiglu_hidden(64, 32)
    ),
    "paper": LlamaConfig(
        vocab_size=PAPER_LLAMA_VOCAB_SIZE,
        max_len=PAPER_LLAMA_MAX_LEN,
        layers=LLAMA_STYLE_MODEL["layers"],
        hidden=LLAMA_STYLE_MODEL["hidden"],
        heads=LLAMA_STYLE_MODEL["heads"],
        mlp_hidden=swiglu_hidden(LLAMA_STYLE_MODEL["hidden"]),
    ),
}
"""Named configurations accepted by :func:`build_llama`."""


def rotary_angles(positions: jax.typing.ArrayLike, head_dim: int, base: float) -> jax.Array:
    """RoPE rotation angles ``positions[t] * base^(-2 i / head_dim)``.

    Args:
        positions: token positions ``[seq]`` (integers or floats).
        head_dim: features per head (even).
        base: the frequency base ``theta``.

    Returns:
        ``[seq, head_dim / 2]`` angles in radians, float32.
    """
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    inverse_frequencies = base**-exponents
    return jnp.asarray(positions, jnp.float32)[:, None] * inverse_frequencies[None, :]


def apply_rotary(
    x: jax.typing.ArrayLike, positions: jax.typing.ArrayLike, *, base: float = 10_000.0
) -> jax.Array:
    """Rotary position embedding (rotate-half convention).

    Feature ``i`` and feature ``i + head_dim / 2`` of each head form a pair rotated by the
    angle ``positions[t] * base^(-2 i / head_dim)``. The dot product of a rotated query at
    position ``m`` and a rotated key at position ``n`` then depends on ``m - n`` only.

    Args:
        x: queries or keys ``[..., seq, heads, head_dim]``, ``head_dim`` even.
        positions: ``[seq]`` positions of the tokens.
        base: the frequency base ``theta``.

    Returns:
        ``[..., seq, heads, head_dim]``, the rotated features.

    Raises:
        ValueError: if ``head_dim`` is odd or ``positions`` does not match ``seq``.

    Examples:
        >>> x = jnp.ones((3, 1, 4))
        >>> bool(jnp.allclose(apply_rotary(x, jnp.zeros(3)), x))
        True
    """
    x = jnp.asarray(x)
    positions = jnp.asarray(positions)
    if x.ndim < 3 or x.shape[-1] % 2:
        raise ValueError(f"x must be [..., seq, heads, even head_dim], got shape {x.shape}")
    if positions.shape != (x.shape[-3],):
        raise ValueError(f"positions must have shape ({x.shape[-3]},), got {positions.shape}")
    half = x.shape[-1] // 2
    angles = rotary_angles(positions, x.shape[-1], base)[:, None, :]  # [seq, 1, half]
    cos = jnp.broadcast_to(jnp.cos(angles), (*x.shape[:-1], half))
    sin = jnp.broadcast_to(jnp.sin(angles), (*x.shape[:-1], half))
    first, second = x[..., :half], x[..., half:]
    rotated = jnp.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)
    return rotated.astype(x.dtype)


class CausalSelfAttention(nnx.Module):
    """Causal multi-head self-attention with RoPE on queries and keys, no biases.

    Args:
        hidden: model width ``d``.
        heads: number of heads ``h`` (``d / h`` even).
        rope_base: RoPE base ``theta``.
        rngs: NNX random streams for initialization.
    """

    def __init__(self, hidden: int, heads: int, *, rope_base: float, rngs: nnx.Rngs):
        self.heads = heads
        self.head_dim = hidden // heads
        self.rope_base = rope_base
        self.query = nnx.Linear(hidden, hidden, use_bias=False, rngs=rngs)
        self.key = nnx.Linear(hidden, hidden, use_bias=False, rngs=rngs)
        self.value = nnx.Linear(hidden, hidden, use_bias=False, rngs=rngs)
        self.output = nnx.Linear(hidden, hidden, use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[batch, seq, d] -> [batch, seq, d]``; position ``t`` attends to ``0..t``."""
        batch, seq, hidden = x.shape
        split = (batch, seq, self.heads, self.head_dim)
        positions = jnp.arange(seq)
        q = apply_rotary(self.query(x).reshape(split), positions, base=self.rope_base)
        k = apply_rotary(self.key(x).reshape(split), positions, base=self.rope_base)
        v = self.value(x).reshape(split)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.head_dim)
        causal = jnp.tril(jnp.ones((seq, seq), dtype=bool))
        scores = jnp.where(causal[None, None], scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
        mixed = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, seq, hidden)
        return self.output(mixed)


class SwiGLU(nnx.Module):
    """Gated MLP ``down(silu(gate(x)) * up(x))`` without biases.

    Args:
        hidden: model width ``d``.
        mlp_hidden: inner width ``f``.
        rngs: NNX random streams for initialization.
    """

    def __init__(self, hidden: int, mlp_hidden: int, *, rngs: nnx.Rngs):
        self.gate = nnx.Linear(hidden, mlp_hidden, use_bias=False, rngs=rngs)
        self.up = nnx.Linear(hidden, mlp_hidden, use_bias=False, rngs=rngs)
        self.down = nnx.Linear(mlp_hidden, hidden, use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[..., d] -> [..., d]``."""
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class DecoderBlock(nnx.Module):
    """Pre-norm block: ``h + attn(norm(h))``, then ``h + mlp(norm(h))``.

    Args:
        config: the model's sizes.
        rngs: NNX random streams for initialization.
    """

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.attention_norm = nnx.RMSNorm(config.hidden, epsilon=config.norm_eps, rngs=rngs)
        self.attention = CausalSelfAttention(
            config.hidden, config.heads, rope_base=config.rope_base, rngs=rngs
        )
        self.mlp_norm = nnx.RMSNorm(config.hidden, epsilon=config.norm_eps, rngs=rngs)
        self.mlp = SwiGLU(config.hidden, config.mlp_hidden, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[batch, seq, d] -> [batch, seq, d]``."""
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


def _validate_config(config: LlamaConfig) -> LlamaConfig:
    """The config with every field checked (one ``ValueError`` naming the field)."""
    for field in ("vocab_size", "max_len", "layers", "hidden", "heads", "mlp_hidden"):
        require_int(field, getattr(config, field), 1)
    if config.hidden % config.heads or (config.hidden // config.heads) % 2:
        raise ValueError(
            f"hidden / heads must be an even integer (RoPE pairs), got hidden={config.hidden}"
            f" and heads={config.heads}"
        )
    require_real("rope_base", config.rope_base, low=1.0, low_inclusive=False)
    require_real("norm_eps", config.norm_eps, low=0.0, low_inclusive=False)
    if not isinstance(config.tie_embeddings, bool):
        raise ValueError(f"tie_embeddings must be a bool, got {config.tie_embeddings!r}")
    return config


class Llama(nnx.Module):
    """LLaMA-style decoder: embedding, pre-norm blocks, final RMSNorm, output head.

    Args:
        config: sizes (see :class:`LlamaConfig`).
        rngs: NNX random streams for initialization.

    Raises:
        ValueError: for an invalid config.

    Examples:
        >>> config = LlamaConfig(vocab_size=11, max_len=8, layers=1, hidden=8, heads=2,
        ...                      mlp_hidden=16)
        >>> model = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
        >>> nnx.eval_shape(lambda m, t: m(t), model, jnp.zeros((2, 5), jnp.int32)).shape
        (2, 5, 11)
    """

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = _validate_config(config)
        self.embed = nnx.Embed(config.vocab_size, config.hidden, rngs=rngs)
        self.blocks = nnx.List([DecoderBlock(config, rngs=rngs) for _ in range(config.layers)])
        self.final_norm = nnx.RMSNorm(config.hidden, epsilon=config.norm_eps, rngs=rngs)
        self.head = (
            None
            if config.tie_embeddings
            else nnx.Linear(config.hidden, config.vocab_size, use_bias=False, rngs=rngs)
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Next-token logits.

        Args:
            tokens: ``[batch, seq]`` integer token ids in ``[0, vocab_size)``,
                ``seq <= max_len``.

        Returns:
            ``[batch, seq, vocab_size]`` logits; position ``t`` depends on tokens
            ``0..t`` only.

        Raises:
            ValueError: for a wrong shape, a non-integer dtype or a sequence too long.
        """
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(
                f"tokens must be integer [batch, seq], got {tokens.dtype} shape {tokens.shape}"
            )
        if tokens.shape[1] > self.config.max_len:
            raise ValueError(
                f"sequence length must be <= max_len={self.config.max_len}, got {tokens.shape[1]}"
            )
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        x = self.final_norm(x)
        return self.embed.attend(x) if self.head is None else self.head(x)


def build_llama(preset_or_config: str | LlamaConfig, *, seed: int = 0) -> Llama:
    """A freshly initialized LLaMA-style decoder from a preset name or a config.

    Args:
        preset_or_config: ``"small"``, ``"paper"`` (see :data:`LLAMA_PRESETS`) or a
            :class:`LlamaConfig`.
        seed: initialization seed.

    Returns:
        The :class:`Llama`.

    Raises:
        ValueError: for an unknown preset or an invalid config.

    Examples:
        >>> model = nnx.eval_shape(lambda: build_llama("paper"))  # abstract: no memory
        >>> model.config.layers, model.config.hidden, model.config.heads
        (8, 384, 8)
    """
    seed = require_int("seed", seed, 0)
    if isinstance(preset_or_config, LlamaConfig):
        config = preset_or_config
    else:
        config = LLAMA_PRESETS[require_choice("preset", preset_or_config, tuple(LLAMA_PRESETS))]
    return Llama(config, rngs=nnx.Rngs(seed))
