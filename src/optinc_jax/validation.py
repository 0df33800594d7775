"""Input validators shared by every floor of the package (the ground floor: imports nothing).

Each check is a public function that either returns the validated value or raises one
``ValueError`` whose message names the value and says what was expected. Nothing is ever
clipped or coerced: a value out of range is refused, not moved into range.

Array checks look at values only when they are concrete. Inside ``jax.jit`` or
``jax.vmap`` the values are unknown (tracers), so value checks are skipped there and the
caller is responsible for them; shape and dtype checks always run.

This module is pure Python plus NumPy at call time (JAX is imported lazily), so the
command-line interface can validate its options without importing JAX.
"""

import math
import numbers
import operator
from collections.abc import Iterable
from typing import Any, TypeVar

__all__ = [
    "require_choice",
    "require_finite_array",
    "require_floating_dtype",
    "require_in_range",
    "require_int",
    "require_integer_dtype",
    "require_real",
]

T = TypeVar("T")


def require_int(
    name: str, value: object, minimum: int | None = None, maximum: int | None = None
) -> int:
    """An integer (Python or NumPy, not a bool and not a float), optionally bounded.

    Args:
        name: what the value is, for the message (``"batch_size"``).
        value: the candidate.
        minimum: smallest allowed value, inclusive (``None``: unbounded).
        maximum: largest allowed value, inclusive (``None``: unbounded).

    Returns:
        ``value`` as a Python ``int``.

    Raises:
        ValueError: if ``value`` is not an integer or lies outside the bounds.

    Examples:
        >>> require_int("epochs", 3, 1)
        3
        >>> require_int("epochs", 2.5, 1)
        Traceback (most recent call last):
        ...
        ValueError: epochs must be an integer >= 1, got 2.5
    """
    if minimum is not None and maximum is not None:
        expected = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        expected = f"an integer >= {minimum}"
    elif maximum is not None:
        expected = f"an integer <= {maximum}"
    else:
        expected = "an integer"
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be {expected}, got {value!r}") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError(f"{name} must be {expected}, got {number}")
    return int(number)


def require_real(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """A finite real number (not a bool), optionally inside an interval.

    Args:
        name: what the value is, for the message.
        value: the candidate (int, float or a NumPy scalar).
        low: lower bound (``None``: unbounded).
        high: upper bound (``None``: unbounded).
        low_inclusive: whether ``low`` itself is allowed.
        high_inclusive: whether ``high`` itself is allowed.

    Returns:
        ``value`` as a Python ``float``.

    Raises:
        ValueError: if ``value`` is not a finite real number or lies outside the interval.

    Examples:
        >>> require_real("learning_rate", 3e-3, low=0.0, low_inclusive=False)
        0.003
        >>> require_real("warmup_fraction", 1.0, low=0.0, high=1.0, high_inclusive=False)
        Traceback (most recent call last):
        ...
        ValueError: warmup_fraction must be a finite number in [0.0, 1.0), got 1.0
    """
    interval = ""
    if low is not None or high is not None:
        left = ("[" if low_inclusive else "(") + (str(low) if low is not None else "-inf")
        right = (str(high) if high is not None else "inf") + ("]" if high_inclusive else ")")
        interval = f" in {left}, {right}"
    message = f"{name} must be a finite number{interval}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(message)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(message)
    if low is not None and (number < low or (number == low and not low_inclusive)):
        raise ValueError(message)
    if high is not None and (number > high or (number == high and not high_inclusive)):
        raise ValueError(message)
    return number


def require_choice(name: str, value: T, choices: Iterable[T]) -> T:
    """One of a fixed set of values (the runtime check behind a ``Literal`` type).

    Args:
        name: what the value is, for the message.
        value: the candidate.
        choices: the allowed values.

    Returns:
        ``value`` unchanged.

    Raises:
        ValueError: if ``value`` is not one of ``choices``.

    Examples:
        >>> require_choice("side", "left", ("left", "right"))
        'left'
        >>> require_choice("side", "up", ("left", "right"))
        Traceback (most recent call last):
        ...
        ValueError: side must be one of 'left', 'right', got 'up'
    """
    choices = tuple(choices)
    if isinstance(value, bool) or value not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{name} must be one of {listed}, got {value!r}")
    return value


def require_integer_dtype(name: str, x: Any) -> None:
    """Raise unless the array ``x`` has an integer dtype (static: works under ``jit``).

    Args:
        name: what the array is, for the message.
        x: a JAX or NumPy array.

    Raises:
        ValueError: if the dtype is not an integer dtype.
    """
    import numpy as np

    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype, got {x.dtype}")


def require_floating_dtype(name: str, x: Any) -> None:
    """Raise unless the array ``x`` has a real floating dtype (static: works under ``jit``).

    Args:
        name: what the array is, for the message.
        x: a JAX or NumPy array.

    Raises:
        ValueError: if the dtype is not a real floating dtype.
    """
    import numpy as np

    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must have a real floating dtype, got {x.dtype}")


def _is_tracer(x: Any) -> bool:
    import jax

    return isinstance(x, jax.core.Tracer)


def require_in_range(name: str, x: Any, low: int, high: int) -> None:
    """Raise if a concrete integer array holds values outside ``[low, high)``; skip tracers.

    Checked before any conversion to a JAX array (which would wrap int64 values to int32);
    a JAX array is reduced on its device, so only two scalars come back to the host.

    Args:
        name: what the array is, for the message.
        x: integer values (array-like); tracers are not checked.
        low: smallest allowed value.
        high: one past the largest allowed value.

    Raises:
        ValueError: if a value lies outside ``[low, high)``; the message gives the range
            of the values found.

    Examples:
        >>> require_in_range("symbols", [0, 3, 4], 0, 4)
        Traceback (most recent call last):
        ...
        ValueError: symbols must lie in [0, 4), got values in [0, 4]
    """
    import jax
    import numpy as np

    if _is_tracer(x):
        return
    values = x if isinstance(x, jax.Array) else np.asarray(x)
    if values.size == 0:
        return
    smallest, largest = int(values.min()), int(values.max())
    if smallest < low or largest >= high:
        raise ValueError(
            f"{name} must lie in [{low}, {high}), got values in [{smallest}, {largest}]"
        )


def require_finite_array(name: str, x: Any) -> None:
    """Raise if a concrete floating or complex array holds NaN or infinity; skip tracers.

    Args:
        name: what the array is, for the message.
        x: a JAX or NumPy array (tracers are not checked).

    Raises:
        ValueError: if any entry is NaN or infinite; the message counts them.
    """
    import jax.numpy as jnp

    if _is_tracer(x):
        return
    bad = int(jnp.sum(~jnp.isfinite(jnp.asarray(x))))
    if bad:
        raise ValueError(
            f"{name} must be finite, got {bad} NaN or infinite entr{'y' if bad == 1 else 'ies'}"
        )
