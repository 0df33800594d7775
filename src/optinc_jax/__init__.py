"""optinc-jax: a JAX/Flax simulator of OptINC (optical in-network computing).

OptINC replaces ring all-reduce with an optical neural network (ONN) built from
Mach-Zehnder-interferometer meshes that computes the quantized average of N servers'
PAM4-encoded gradients while the light passes through the interconnect.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
