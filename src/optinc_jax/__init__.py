"""optinc-jax: a JAX/Flax simulator of OptINC (optical in-network computing).

OptINC replaces ring all-reduce with an optical neural network (ONN) built from
Mach-Zehnder-interferometer meshes that computes the quantized average of N servers'
PAM4-encoded gradients while the light passes through the interconnect.

The public API is re-exported here lazily (PEP 562), so that ``import optinc_jax.cli``
can set ``OPENBLAS_NUM_THREADS`` before JAX and NumPy are first imported.
"""

import importlib

__version__ = "0.1.0"

# Public name -> defining submodule.
_EXPORTS: dict[str, str] = {}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    """Import a public name from its submodule on first access."""
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'optinc_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"optinc_jax.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the public API."""
    return sorted(set(globals()) | set(__all__))
