"""The device mesh the experiments train and evaluate on."""

import jax
import numpy as np
from jax.sharding import Mesh

from optinc_jax.learning.step import DATA_AXIS

__all__ = ["data_mesh"]


def data_mesh() -> Mesh | None:
    """A 1-D ``"data"`` mesh over all accelerators; ``None`` on one device or on CPU.

    Forced host devices (``--xla_force_host_platform_device_count``) share the same cores,
    so CPU runs stay on one device.

    Returns:
        The mesh, or ``None`` for a one-device run.
    """
    devices = jax.devices()
    if len(devices) == 1 or jax.default_backend() == "cpu":
        return None
    return Mesh(np.array(devices), (DATA_AXIS,))
