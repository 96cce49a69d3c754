"""Data parallelism with JAX's own sharding: one mesh axis ``"data"`` over the devices.

Each batch is split along its first axis over the devices; parameters and
optimizer state are replicated. Nothing here averages gradients: the loss is
a mean over the whole (sharded) batch, so XLA's partitioner inserts the
all-reduce that sums each device's share. On one device, or one host, or many
hosts after ``jax.distributed.initialize()``, the same code runs: a mesh
always spans all of ``jax.devices()`` unless told otherwise.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fnn._errors import InputError, UsageError

__all__ = ["AXIS", "batch_sharding", "data_mesh", "replicate", "replicated", "use_cpu_devices"]

#: The name of the mesh axis that batches are split over.
AXIS = "data"


def use_cpu_devices(n):
    """Makes the CPU backend offer ``n`` devices (simulated), for data-parallel runs on one CPU.

    Must run before JAX initialises its backends (before any computation); it
    raises :class:`fnn.UsageError` saying so otherwise, unless ``n`` devices
    are already there.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"the number of devices must be a positive int, got {n!r}")
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        if jax.device_count() != n:
            raise UsageError(
                f"cannot make {n} CPU devices: JAX has already started with {jax.device_count()}; "
                "call fnn.parallel.use_cpu_devices before any JAX computation (first thing in the program), or set "
                f"JAX_NUM_CPU_DEVICES={n} in the environment before starting Python"
            ) from None


def data_mesh(devices=None):
    """A one-axis mesh ``("data",)`` over ``devices`` (default: every device of every process).

    ``devices`` may be an int ``n`` (the first ``n`` devices) or a sequence of devices.
    """
    available = jax.devices()
    if devices is None:
        devices = available
    elif isinstance(devices, int) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise InputError(
                f"asked for {devices} devices but {len(available)} are available ({available[0].platform}); "
                "on a CPU, more can be simulated with fnn.parallel.use_cpu_devices(n) before JAX starts"
            )
        devices = available[:devices]
    devices = list(devices)
    return jax.make_mesh((len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh):
    """The sharding that keeps a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh):
    """The sharding that splits the first axis over the devices of ``mesh``."""
    return NamedSharding(mesh, P(AXIS))


def replicate(tree, mesh):
    """Copies every array of ``tree`` onto every device of ``mesh``; the arrays given stay as they were.

    Works across processes: each process must pass the same values.
    """
    sharding = replicated(mesh)

    def put(a):
        a = jnp.copy(a) if isinstance(a, jax.Array) and a.is_fully_addressable else np.asarray(a)
        return jax.make_array_from_callback(np.shape(a), sharding, lambda index: a[index])

    return jax.tree.map(put, tree)
