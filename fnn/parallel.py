"""Data parallelism with JAX's own sharding: one mesh axis ``"data"`` over the devices.

Each batch is split along its first axis over the devices. Parameters and
optimizer state are replicated (:func:`replicated`), or, with fully sharded
data parallelism (:func:`fsdp`), each large array is split along one of its
axes over the same devices, so that each device holds ``1/n`` of them.
Nothing here averages gradients or gathers parameters: the loss is a mean
over the whole (sharded) batch, so XLA's partitioner inserts the all-reduce
that sums each device's share (or, under FSDP, the all-gather of each
parameter before its use and the reduce-scatter of its gradient). On one
device, or one host, or many hosts after ``jax.distributed.initialize()``,
the same code runs: a mesh always spans all of ``jax.devices()`` unless told
otherwise.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fnn._errors import InputError, ShardingWarning, UsageError

__all__ = [
    "AXIS",
    "FSDP_MIN_BYTES",
    "LAYOUTS",
    "batch_sharding",
    "data_mesh",
    "fsdp",
    "layout",
    "place",
    "replicate",
    "replicated",
    "sharding_table",
    "use_cpu_devices",
]

#: The name of the mesh axis that batches are split over.
AXIS = "data"
#: :func:`fsdp` leaves arrays smaller than this replicated (a bias, a step count): splitting them saves little and
#: costs a gather each.
FSDP_MIN_BYTES = 2**16
#: The layouts of the training state ``fnn.fit(..., sharding=)`` takes: each array on every device, or FSDP's.
LAYOUTS = ("replicated", "fsdp")


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
    return place(tree, replicated(mesh))


def fsdp(tree, mesh, *, min_bytes=FSDP_MIN_BYTES):
    """Fully sharded data parallelism's layout of ``tree``: a pytree of shardings in its structure.

    Each array of at least ``min_bytes`` is split over the mesh's ``"data"``
    axis along its largest axis that the number of devices divides (the first
    such, among equals); the others are replicated. The rule reads only the
    arrays' shapes, so the Adam moments of a weight are laid out as the
    weight is. An array of at least ``min_bytes`` that no axis of which
    divides evenly stays replicated, with a warning naming it
    (padding it would change its shape): :class:`fnn.ShardingWarning`.
    """
    n = mesh.shape[AXIS]
    kept = []

    def one(path, a):
        size = np.dtype(a.dtype).itemsize * int(np.prod(np.shape(a)))
        axes = [i for i, d in enumerate(np.shape(a)) if d % n == 0 and d >= n]
        if n == 1 or size < min_bytes:
            return replicated(mesh)
        if not axes:
            kept.append(f"{jax.tree_util.keystr(path)} {tuple(np.shape(a))}")
            return replicated(mesh)
        axis = max(axes, key=lambda i: (np.shape(a)[i], -i))
        return NamedSharding(mesh, P(*[AXIS if i == axis else None for i in range(np.ndim(a))]))

    found = jax.tree_util.tree_map_with_path(one, tree)
    if kept:
        warnings.warn(
            f"fsdp: {len(kept)} arrays of at least {min_bytes} bytes stay whole on every device, no axis of theirs "
            f"dividing by {n} devices: {', '.join(kept[:5])}{' ...' if len(kept) > 5 else ''}",
            ShardingWarning,
            stacklevel=2,
        )
    return found


def layout(name, tree, mesh):
    """The shardings of ``tree`` for the layout ``name`` (one of :data:`LAYOUTS`)."""
    if name not in LAYOUTS:
        raise InputError(f"sharding must be one of {', '.join(map(repr, LAYOUTS))}, got {name!r}")
    return fsdp(tree, mesh) if name == "fsdp" else jax.tree.map(lambda _: replicated(mesh), tree)


def place(tree, shardings):
    """Copies every array of ``tree`` onto the devices as ``shardings`` (a pytree of shardings in its structure, or
    one for all) lays it out; the arrays given stay as they were. Works across processes: each process must pass
    the same values."""

    def put(a, sharding):
        a = jnp.copy(a) if isinstance(a, jax.Array) and a.is_fully_addressable else np.asarray(a)
        return jax.make_array_from_callback(np.shape(a), sharding, lambda index: a[index])

    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda a: put(a, shardings), tree)
    return jax.tree.map(put, tree, shardings)


def sharding_table(tree):
    """How ``tree``'s arrays lie on the devices: one row per array, ``{"array": its path, "shape", "dtype",
    "spec": the mesh axis of each of its axes (None: not split), "bytes": its size, "bytes_per_device": the most
    any device holds}``, in the tree's order."""
    rows = []
    for path, a in jax.tree_util.tree_leaves_with_path(tree):
        spec = getattr(a.sharding, "spec", None)
        per_device = max((s.data.nbytes for s in a.addressable_shards), default=0)
        rows.append(
            {
                "array": jax.tree_util.keystr(path),
                "shape": tuple(a.shape),
                "dtype": str(a.dtype),
                "spec": tuple(spec) + (None,) * (a.ndim - len(spec)) if spec is not None else None,
                "bytes": a.nbytes,
                "bytes_per_device": per_device,
            }
        )
    return rows
