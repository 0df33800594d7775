import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from optinc_jax import (
    reconstruction_mse,
    rounded_reconstruction_mse,
    symbol_weights,
    two_stage_loss,
    weighted_symbol_mse,
)


def test_symbol_weights_values():
    np.testing.assert_allclose(symbol_weights(4), np.array([1, 2, 4, 8]) / 15, rtol=1e-6)
    np.testing.assert_allclose(symbol_weights(3, base=1.0), np.full(3, 1 / 3), rtol=1e-6)
    with pytest.raises(ValueError):
        symbol_weights(0)


def test_hand_computed_losses():
    y = jnp.array([[0.5, 2.0], [3.0, 1.0]])
    symbols = jnp.array([[0, 2], [3, 0]])
    target = jnp.array([8, 3])  # 0 + 4*2, 3 + 4*0
    weights = jnp.array([0.25, 0.75])
    # sample 0: 0.25*0.25 + 0 = 0.0625; sample 1: 0 + 0.75*1 = 0.75
    assert weighted_symbol_mse(y, symbols, weights) == pytest.approx((0.0625 + 0.75) / 2)
    # values: 0.5 + 8 = 8.5 (err 0.5); 3 + 4 = 7 (err 4) ; / (2^4-1)^2
    assert reconstruction_mse(y, target, bits=4) == pytest.approx((0.25 + 16) / 2 / 225)
    # rounded: 0.5 -> 0 (round half to even), 8 exact; 7 -> err 4
    assert rounded_reconstruction_mse(y, target, bits=4) == pytest.approx((0 + 16) / 2 / 225)


def test_literal_stage_two_has_a_null_space_and_hybrid_does_not():
    symbols = jnp.array([[1, 2]])
    target = jnp.array([9])
    exact = jnp.array([[1.0, 2.0]])
    shifted = exact + 0.5 * jnp.array([[4.0, -1.0]])  # same reconstructed value
    weights = symbol_weights(2)
    literal = [
        two_stage_loss(y, symbols, target, stage=2, bits=4, weights=weights, stage2="literal")
        for y in (exact, shifted)
    ]
    hybrid = [
        two_stage_loss(y, symbols, target, stage=2, bits=4, weights=weights, stage2="hybrid")
        for y in (exact, shifted)
    ]
    assert literal[0] == pytest.approx(0.0) and literal[1] == pytest.approx(0.0, abs=1e-12)
    assert hybrid[0] == pytest.approx(0.0) and hybrid[1] > 0.1


def test_ste_gradient_is_identity_through_rounding():
    target = jnp.array([5])
    grad = jax.grad(lambda y: rounded_reconstruction_mse(y, target, bits=4))(
        jnp.array([[1.2, 1.1]])
    )
    # forward rounds to (1, 1) -> value 5 -> zero error -> zero gradient
    np.testing.assert_allclose(grad, 0.0)
    grad = jax.grad(lambda y: rounded_reconstruction_mse(y, target, bits=4))(
        jnp.array([[2.2, 1.1]])
    )
    # value 2 + 4 = 6, error 1: d/dy_k = 2 * 1 * 4^k / 225
    np.testing.assert_allclose(grad, [[2 / 225, 8 / 225]], rtol=1e-6)


def test_stage_validation():
    args = (jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros(1))
    with pytest.raises(ValueError, match="stage must be"):
        two_stage_loss(*args, stage=3, bits=4, weights=symbol_weights(2))
    with pytest.raises(ValueError, match="stage2"):
        two_stage_loss(*args, stage=2, bits=4, weights=symbol_weights(2), stage2="x")


def test_symbol_tolerance_is_a_dead_zone_brute_force():
    rng = np.random.default_rng(3)
    y = rng.uniform(-1.0, 4.0, size=(64, 4)).astype(np.float32)
    symbols = rng.integers(0, 4, size=(64, 4))
    weights = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    for tolerance in (0.0, 0.1, 0.25, 0.45):
        expected = np.mean(
            [
                sum(
                    weights[k] * max(abs(float(y[s, k]) - symbols[s, k]) - tolerance, 0.0) ** 2
                    for k in range(4)
                )
                for s in range(64)
            ]
        )
        got = weighted_symbol_mse(y, symbols, weights, tolerance=tolerance)
        assert float(got) == pytest.approx(expected, rel=1e-5)
    # tolerance 0 is exactly the paper's MSE
    assert float(weighted_symbol_mse(y, symbols, weights, tolerance=0.0)) == float(
        weighted_symbol_mse(y, symbols, weights)
    )


@settings(max_examples=50, deadline=None)
@given(
    y=arrays(np.float32, (8, 2), elements=st.floats(-2, 5, width=32)),
    tolerance=st.floats(0.0, 0.49),
)
def test_symbol_tolerance_never_raises_the_loss_and_vanishes_inside_the_zone(y, tolerance):
    symbols = np.clip(np.round(y), 0, 3).astype(np.int32)
    weights = symbol_weights(2)
    with_zone = float(weighted_symbol_mse(y, symbols, weights, tolerance=tolerance))
    assert with_zone <= float(weighted_symbol_mse(y, symbols, weights)) + 1e-7
    inside = np.clip(y, symbols - 0.99 * tolerance, symbols + 0.99 * tolerance).astype(np.float32)
    assert float(weighted_symbol_mse(inside, symbols, weights, tolerance=tolerance)) == 0.0


def test_symbol_tolerance_reaches_both_stages_and_is_validated():
    y = jnp.array([[0.2, 2.0]])
    symbols, target, weights = jnp.array([[0, 2]]), jnp.array([8]), symbol_weights(2)
    for stage in (1, 2):
        plain = two_stage_loss(y, symbols, target, stage=stage, bits=4, weights=weights)
        zoned = two_stage_loss(
            y, symbols, target, stage=stage, bits=4, weights=weights, tolerance=0.25
        )
        assert float(zoned) < float(plain)
    with pytest.raises(ValueError, match="tolerance"):
        weighted_symbol_mse(y, symbols, weights, tolerance=0.5)
    with pytest.raises(ValueError, match="tolerance"):
        weighted_symbol_mse(y, symbols, weights, tolerance=-0.1)
