"""Which machine a result came from: the CPU, the devices, the JAX version.

A run's epochs to 100 % depend on the CPU as well as the code (XLA's float rounding
differs between CPU models: the same seed of the 8b4s preset first reaches 100 % at epoch
51 on one 2-core machine and at 70 on another), so every ``result.json`` records
:func:`machine_description` beside its numbers.
"""

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["cpu_model", "machine_description"]


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's model name from ``cpuinfo`` (Linux), else ``platform.processor()``.

    Args:
        cpuinfo: the file to read (``/proc/cpuinfo``).

    Returns:
        The first non-empty ``model name``; ``None`` when neither source names one.
    """
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_description() -> dict[str, Any]:
    """What a result depends on besides the code and the config (strict-JSON values).

    Returns:
        ``jax`` (version), ``backend``, ``device`` (the first), ``device_count``,
        ``cpu_model``, ``cpu_count``, ``platform`` and ``OPENBLAS_NUM_THREADS`` (``None``
        when unset).

    Imports JAX (this module does not, so that a caller can set XLA's flags first).

    Examples:
        >>> import jax
        >>> machine_description()["jax"] == jax.__version__
        True
    """
    import jax

    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "device_count": jax.device_count(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
    }
