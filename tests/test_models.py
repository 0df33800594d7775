import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from optinc_jax import RESNET_PRESETS, ResNet, ResNetArchitecture, build_resnet
from optinc_jax.network.llama import (
    LLAMA_PRESETS,
    Llama,
    LlamaConfig,
    apply_rotary,
    build_llama,
    swiglu_hidden,
)
from optinc_jax.network.model_cost import (
    LATENCY_MODELS,
    cost_analysis_flops,
    cross_entropy_loss,
    model_cost,
    parameter_count,
    train_step_flops,
)

TINY_RESNET = ResNetArchitecture("basic", (1, 1), (4, 8), 4, 2)
TINY_LLAMA = LlamaConfig(vocab_size=13, max_len=16, layers=1, hidden=16, heads=2, mlp_hidden=32)


def abstract(build):
    return nnx.eval_shape(build)


def fast_rngs(seed):
    """RNG streams on an ``rbg`` key: initializing a model compiles far faster on the CPU
    than with the default threefry key (about 3 s against 20 s for TINY_RESNET)."""
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


forward = nnx.jit(lambda model, x: model(x))


# ---- independent counts (hand formulas, from the architecture's numbers only) ----------


def resnet_params_formula(arch, num_classes, in_channels):
    """Convolutions k*k*cin*cout (no bias), 2 c per norm, head (c + 1) * classes."""
    total = 9 * in_channels * arch.stem_width + 2 * arch.stem_width
    features = arch.stem_width
    for stage, (count, width) in enumerate(zip(arch.stage_blocks, arch.stage_widths, strict=True)):
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            if arch.block == "basic":
                out = width
                total += 9 * features * width + 9 * width * width + 4 * width
            else:
                out = 4 * width
                total += features * width + 9 * width * width + width * out
                total += 2 * width + 2 * width + 2 * out
            if stride != 1 or features != out:
                total += features * out + 2 * out
            features = out
    return total + features * num_classes + num_classes


def valid_taps(size, kernel, stride):
    """Kernel taps landing inside the image, summed over one axis's output positions
    (padding kernel // 2 on both sides; taps on padding do no multiply-add)."""
    pad = kernel // 2
    outputs = (size + 2 * pad - kernel) // stride + 1
    return sum(0 <= i * stride - pad + j < size for i in range(outputs) for j in range(kernel))


def conv_flops(size, kernel, stride, cin, cout):
    return 2 * valid_taps(size, kernel, stride) ** 2 * cin * cout


def resnet_forward_flops_formula(arch, num_classes, in_channels, size):
    """Multiply-adds x 2 of every convolution and the head, for one square image."""
    flops = conv_flops(size, 3, 1, in_channels, arch.stem_width)
    stem = flops
    features = arch.stem_width
    for stage, (count, width) in enumerate(zip(arch.stage_blocks, arch.stage_widths, strict=True)):
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            out_size = -(-size // stride)
            if arch.block == "basic":
                out = width
                flops += conv_flops(size, 3, stride, features, width)
                flops += conv_flops(out_size, 3, 1, width, width)
            else:
                out = 4 * width
                flops += conv_flops(size, 1, 1, features, width)
                flops += conv_flops(size, 3, stride, width, width)
                flops += conv_flops(out_size, 1, 1, width, out)
            if stride != 1 or features != out:
                flops += conv_flops(size, 1, stride, features, out)
            features, size = out, out_size
    return flops + 2 * features * num_classes, stem


def llama_params_formula(c):
    per_layer = 4 * c.hidden**2 + 3 * c.hidden * c.mlp_hidden + 2 * c.hidden
    head = 0 if c.tie_embeddings else c.hidden * c.vocab_size
    return c.vocab_size * c.hidden + c.layers * per_layer + c.hidden + head


def llama_forward_flops_formula(c, seq):
    """Per sequence: projections, attention scores and mixing (dense, unmasked), head."""
    per_token = c.layers * (2 * 4 * c.hidden**2 + 2 * 3 * c.hidden * c.mlp_hidden)
    per_token += c.layers * 2 * 2 * seq * c.hidden + 2 * c.hidden * c.vocab_size
    return seq * per_token


# ---- ResNet -------------------------------------------------------------------------


def test_resnet50_parameter_count_is_the_standard_cifar_count():
    model = abstract(lambda: build_resnet("resnet50", num_classes=100))
    expected = resnet_params_formula(RESNET_PRESETS["resnet50"], 100, 3)
    assert parameter_count(model) == expected == 23_705_252
    # torchvision's ImageNet ResNet-50 less its 7x7 stem and 1000-class head:
    assert expected == 25_557_032 - 49 * 3 * 64 + 9 * 3 * 64 - 2049 * 1000 + 2049 * 100


@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("in_channels, classes", [(1, 10), (3, 100)])
def test_resnet_small_parameter_count(norm, in_channels, classes):
    model = abstract(
        lambda: build_resnet(
            "resnet_small", num_classes=classes, in_channels=in_channels, norm=norm
        )
    )
    expected = resnet_params_formula(RESNET_PRESETS["resnet_small"], classes, in_channels)
    assert parameter_count(model) == expected
    stats = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    assert (sum(math.prod(s.shape) for s in stats) > 0) == (norm == "batch")


def test_resnet_forward_shapes_and_norm_modes():
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    model = ResNet(TINY_RESNET, num_classes=3, in_channels=1, rngs=fast_rngs(0))
    chex.assert_shape(forward(model, x), (4, 3))
    chex.assert_shape(forward(model, jnp.zeros((2, 7, 9, 1))), (2, 3))  # odd sizes
    # train mode: batch statistics, so an example's logits depend on the others
    assert not np.allclose(forward(model, x[:1]), forward(model, x)[:1], atol=1e-4)
    model.eval()  # running averages: examples are independent
    chex.assert_trees_all_close(forward(model, x[:1]), forward(model, x)[:1], atol=1e-5)
    grouped = ResNet(TINY_RESNET, num_classes=3, in_channels=1, norm="group", rngs=fast_rngs(0))
    chex.assert_trees_all_close(forward(grouped, x[:1]), forward(grouped, x)[:1], atol=1e-5)
    assert not jax.tree.leaves(nnx.state(grouped, nnx.BatchStat))


def test_batch_norm_under_shard_map_is_per_server_unless_synchronised():
    if jax.device_count() < 2:
        pytest.skip("needs >= 2 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
    x = jax.random.normal(jax.random.key(1), (8, 8, 8, 1))

    def sharded_logits(batch_axis_name):
        model = ResNet(
            TINY_RESNET,
            num_classes=3,
            in_channels=1,
            batch_axis_name=batch_axis_name,
            rngs=fast_rngs(0),
        )
        graphdef, state = nnx.split(model)
        apply = jax.shard_map(
            lambda state, x: nnx.merge(graphdef, state)(x),
            mesh=mesh,
            in_specs=(P(), P("data")),
            out_specs=P("data"),
        )
        return jax.jit(apply)(state, x)

    one_device = forward(ResNet(TINY_RESNET, num_classes=3, in_channels=1, rngs=fast_rngs(0)), x)
    chex.assert_trees_all_close(sharded_logits("data"), one_device, atol=1e-5)
    assert not np.allclose(sharded_logits(None), one_device, atol=1e-4)


@pytest.mark.parametrize(
    "name, in_channels, size, classes", [("resnet_small", 1, 8, 10), ("resnet50", 3, 32, 100)]
)
def test_build_resnet_output_shapes(name, in_channels, size, classes):
    model = abstract(lambda: build_resnet(name, num_classes=classes, in_channels=in_channels))
    logits = nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((5, size, size, in_channels)))
    assert logits.shape == (5, classes)


def test_resnet_rejects_bad_arguments():
    with pytest.raises(ValueError, match="name must be one of"):
        build_resnet("resnet18", num_classes=10)
    with pytest.raises(ValueError, match="norm_groups must divide"):
        ResNet(TINY_RESNET, num_classes=2, norm="group", norm_groups=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
        build_resnet("resnet_small", num_classes=0)
    model = abstract(lambda: ResNet(TINY_RESNET, num_classes=2, in_channels=1, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"x must be \[batch, height, width, 1\]"):
        nnx.eval_shape(lambda m: m(jnp.zeros((2, 8, 8, 3))), model)


# ---- LLaMA --------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("preset", ["small", "paper"])
def test_llama_parameter_count(preset, tie):
    config = LLAMA_PRESETS[preset]._replace(tie_embeddings=tie)
    model = abstract(lambda: build_llama(config))
    assert parameter_count(model) == llama_params_formula(config)


def test_llama_paper_preset():
    config = LLAMA_PRESETS["paper"]
    assert (config.layers, config.hidden, config.heads) == (8, 384, 8)
    assert config.mlp_hidden == swiglu_hidden(384) == 1024
    assert swiglu_hidden(4096) == 11008  # LLaMA-7B's published width
    # 32,000 x 384 embedding and head + 8 x (4 x 384^2 + 3 x 384 x 1024 + 768) + 384
    assert llama_params_formula(config) == 38_738_304


def test_llama_forward_shape_and_causality():
    model = Llama(TINY_LLAMA, rngs=fast_rngs(1))
    tokens = jax.random.randint(jax.random.key(2), (2, 10), 0, TINY_LLAMA.vocab_size)
    logits = forward(model, tokens)
    chex.assert_shape(logits, (2, 10, TINY_LLAMA.vocab_size))
    for j in (0, 4, 9):
        changed = tokens.at[:, j].set((tokens[:, j] + 1) % TINY_LLAMA.vocab_size)
        other = forward(model, changed)
        chex.assert_trees_all_close(other[:, :j], logits[:, :j], atol=1e-6, rtol=0)
        assert np.abs(other[:, j] - logits[:, j]).max() > 1e-4


def test_llama_tied_head_uses_the_embedding():
    config = TINY_LLAMA._replace(tie_embeddings=True)
    model = Llama(config, rngs=fast_rngs(0))
    assert model.head is None

    @nnx.jit
    def by_hand(model, tokens):
        hidden = model.embed(tokens)
        for block in model.blocks:
            hidden = block(hidden)
        return model.final_norm(hidden) @ model.embed.embedding[...].T

    tokens = jnp.arange(6)[None]
    chex.assert_trees_all_close(forward(model, tokens), by_hand(model, tokens), atol=1e-5)


def test_llama_rejects_bad_inputs():
    with pytest.raises(ValueError, match="preset must be one of"):
        build_llama("huge")
    with pytest.raises(ValueError, match="hidden / heads must be an even integer"):
        build_llama(TINY_LLAMA._replace(heads=16))
    model = abstract(lambda: Llama(TINY_LLAMA, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="sequence length must be <= max_len=16"):
        nnx.eval_shape(lambda m: m(jnp.zeros((1, 17), jnp.int32)), model)
    with pytest.raises(ValueError, match="tokens must be integer"):
        nnx.eval_shape(lambda m: m(jnp.zeros((1, 4))), model)


def test_rmsnorm_is_exact():
    norm = nnx.RMSNorm(TINY_LLAMA.hidden, epsilon=TINY_LLAMA.norm_eps, rngs=nnx.Rngs(0))
    model = Llama(TINY_LLAMA, rngs=fast_rngs(0))
    assert type(model.blocks[0].attention_norm) is type(norm)  # the model's norm is nnx's
    assert model.blocks[0].mlp_norm.epsilon == model.final_norm.epsilon == norm.epsilon
    scale = np.random.default_rng(0).normal(size=TINY_LLAMA.hidden).astype(np.float32)
    norm.scale[...] = jnp.asarray(scale)
    x = np.random.default_rng(1).normal(size=(3, 5, TINY_LLAMA.hidden)).astype(np.float32)
    x64 = x.astype(np.float64)
    expected = x64 / np.sqrt(np.mean(x64**2, axis=-1, keepdims=True) + TINY_LLAMA.norm_eps)
    np.testing.assert_allclose(norm(jnp.asarray(x)), expected * scale, rtol=1e-5, atol=1e-6)


def rotary_reference(x, positions, base):
    """Pairs (i, i + d/2) as complex numbers times exp(1j * position * base^(-2i/d))."""
    x = np.asarray(x, np.float64)
    half = x.shape[-1] // 2
    z = x[..., :half] + 1j * x[..., half:]
    frequencies = base ** (-np.arange(half) * 2.0 / x.shape[-1])
    z = z * np.exp(1j * np.asarray(positions, np.float64)[:, None, None] * frequencies)
    return np.concatenate([z.real, z.imag], axis=-1)


def test_rotary_matches_complex_rotation_and_keeps_norms():
    x = np.random.default_rng(0).normal(size=(2, 7, 3, 8)).astype(np.float32)
    positions = np.arange(7) * 5
    rotated = apply_rotary(x, positions, base=100.0)
    np.testing.assert_allclose(rotated, rotary_reference(x, positions, 100.0), atol=1e-5)
    np.testing.assert_allclose(
        np.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5
    )


def test_rotary_scores_form_a_toeplitz_matrix():
    rng = np.random.default_rng(3)
    q, k = rng.normal(size=(2, 1, 1, 16)).astype(np.float32)
    seq = 12
    positions = jnp.arange(seq)
    queries = apply_rotary(jnp.broadcast_to(q, (seq, 1, 16)), positions)
    keys = apply_rotary(jnp.broadcast_to(k, (seq, 1, 16)), positions)
    scores = np.asarray(jnp.einsum("qhd,khd->qk", queries, keys))
    for m in range(seq - 1):
        for n in range(seq - 1):  # brute force: every score depends on m - n only
            assert abs(scores[m + 1, n + 1] - scores[m, n]) < 1e-4


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(0, 200),
    n=st.integers(0, 200),
    shift=st.integers(-200, 200),
    seed=st.integers(0, 2**31 - 1),
)
def test_rotary_scores_depend_on_relative_position_only(m, n, shift, seed):
    if min(m, n) + shift < 0:
        shift = -min(m, n)
    q, k = np.random.default_rng(seed).normal(size=(2, 1, 1, 8))
    base = 10_000.0

    def score(pm, pn):
        rq = apply_rotary(jnp.asarray(q, jnp.float32), jnp.array([pm]), base=base)
        rk = apply_rotary(jnp.asarray(k, jnp.float32), jnp.array([pn]), base=base)
        return float(jnp.sum(rq * rk))

    assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=2e-4)


# ---- training ---------------------------------------------------------------------


def train_losses(model, inputs, labels, steps=20, learning_rate=1e-2):
    optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy_loss(m(inputs), labels))(model)
        optimizer.update(model, grads)
        return loss

    return [float(step(model, optimizer)) for _ in range(steps)]


def test_tiny_llama_trains():
    tokens = jax.random.randint(jax.random.key(0), (4, 13), 0, TINY_LLAMA.vocab_size)
    losses = train_losses(Llama(TINY_LLAMA, rngs=fast_rngs(0)), tokens[:, :-1], tokens[:, 1:])
    assert losses[-1] < 0.7 * losses[0]


def test_tiny_resnet_trains():
    images = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
    labels = jnp.arange(16) % 3
    model = ResNet(TINY_RESNET, num_classes=3, in_channels=1, rngs=fast_rngs(0))
    losses = train_losses(model, images, labels)
    assert losses[-1] < 0.7 * losses[0]


# ---- FLOPs --------------------------------------------------------------------------


def test_cost_analysis_counts_matmuls_and_convolutions_exactly():
    def spec(*shape):
        return jax.ShapeDtypeStruct(shape, jnp.float32)

    m, k, n = 24, 40, 56
    matmul = jax.jit(jnp.matmul).lower(spec(m, k), spec(k, n))
    assert cost_analysis_flops(matmul) == (2 * m * k * n, "xla_lowered")
    batched = jax.jit(lambda a, b: jnp.einsum("bmk,bkn->bmn", a, b)).lower(
        spec(3, m, k), spec(3, k, n)
    )
    assert cost_analysis_flops(batched)[0] == 3 * 2 * m * k * n
    # a Linear layer's forward: matmul plus one add per output for the bias
    linear = abstract(lambda: nnx.Linear(k, n, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(linear)
    forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x)).lower(params, spec(m, k))
    assert cost_analysis_flops(forward)[0] == 2 * m * k * n + m * n
    conv = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    ).lower(spec(2, 8, 8, 5), spec(3, 3, 5, 7))
    # only taps inside the image count: 22 per axis (2 + 6 x 3 + 2), not 8 x 3
    assert valid_taps(8, 3, 1) == 22
    assert cost_analysis_flops(conv)[0] == 2 * conv_flops(8, 3, 1, 5, 7)


def test_train_step_flops_of_a_linear_layer():
    m, k, n = 32, 64, 48
    linear = abstract(lambda: nnx.Linear(k, n, use_bias=False, rngs=nnx.Rngs(0)))
    flops = train_step_flops(linear, m, example_shape=(k,))
    # forward x @ W and the weight gradient x^T @ g (no input gradient is needed)
    matmuls = 2 * (2 * m * k * n)
    assert matmuls <= flops <= 1.05 * matmuls
    concrete = nnx.Linear(k, n, use_bias=False, rngs=fast_rngs(0))
    assert train_step_flops(concrete, m, example_shape=(k,)) == flops


def test_small_resnet_flops_match_the_per_layer_count():
    arch, batch = RESNET_PRESETS["resnet_small"], 16
    model = abstract(lambda: build_resnet("resnet_small", num_classes=10, in_channels=1))
    flops = train_step_flops(model, batch, example_shape=(8, 8, 1))
    forward, stem = resnet_forward_flops_formula(arch, 10, 1, 8)
    analytic = batch * (3 * forward - stem)  # no input gradient for the stem
    assert analytic <= flops <= 1.05 * analytic


def test_small_llama_flops_match_the_per_layer_count():
    config, batch, seq = LLAMA_PRESETS["small"], 4, 64
    model = abstract(lambda: build_llama("small"))
    flops = train_step_flops(model, batch, example_shape=(seq,), input_dtype="int32")
    analytic = batch * 3 * llama_forward_flops_formula(config, seq)
    assert analytic <= flops <= 1.05 * analytic


def test_model_cost_of_the_paper_models():
    llama = model_cost("llama")
    spec = LATENCY_MODELS["llama"]
    config = LLAMA_PRESETS["paper"]
    assert llama.params == llama_params_formula(config)
    assert (llama.batch, llama.example_shape) == (spec.batch_per_server, (config.max_len,))
    analytic = llama.batch * 3 * llama_forward_flops_formula(config, config.max_len)
    assert analytic <= llama.flops_per_step <= 1.05 * analytic
    assert model_cost("llama") is llama  # cached
    assert train_step_flops("llama") == llama.flops_per_step
    assert json.loads(json.dumps(llama._asdict()))["params"] == llama.params
    assert model_cost("llama", 2).flops_per_step == pytest.approx(
        llama.flops_per_step * 2 / llama.batch, rel=1e-3
    )


def test_model_cost_of_resnet50():
    cost = model_cost("resnet50", 4)
    assert cost.params == 23_705_252
    forward, stem = resnet_forward_flops_formula(RESNET_PRESETS["resnet50"], 100, 3, 32)
    analytic = 4 * (3 * forward - stem)
    assert analytic <= cost.flops_per_step <= 1.05 * analytic


def test_cost_functions_reject_bad_arguments():
    with pytest.raises(ValueError, match="model must be one of"):
        model_cost("vgg")
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        model_cost("llama", 0)
    with pytest.raises(ValueError, match="example_shape must be None with a model name"):
        train_step_flops("llama", 2, example_shape=(8,))
    linear = abstract(lambda: nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="example_shape must be given"):
        train_step_flops(linear, 2)
