"""Many devices with JAX's own sharding: batches over a mesh axis ``"data"``, parameters as laid out.

Each batch is split along its first axis over the devices (over the mesh
axis ``"data"``, on a mesh with more axes). Parameters and
optimizer state are replicated (:func:`replicated`), or, with fully sharded
data parallelism (:func:`fsdp`), each large array is split along one of its
axes over the same devices, so that each device holds ``1/n`` of them; or
they are laid out by rules from the names of their axes
(:func:`logical_axes`) to the axes of any mesh (:func:`by_names`: FSDP
over ``"data"``, tensor parallelism over a ``"model"`` axis).
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
from fnn.module import Module

__all__ = [
    "AXIS",
    "FSDP_MIN_BYTES",
    "LAYOUTS",
    "batch_sharding",
    "by_names",
    "data_mesh",
    "data_shards",
    "fsdp",
    "layout",
    "logical_axes",
    "place",
    "replicate",
    "replicated",
    "sharding_table",
    "state_axes",
    "training_mesh",
    "use_cpu_devices",
]

#: The name of the mesh axis that batches are split over.
AXIS = "data"
#: :func:`fsdp` leaves arrays smaller than this replicated (a bias, a step count): splitting them saves little and
#: costs a gather each.
FSDP_MIN_BYTES = 2**16
#: The layouts of the training state ``fnn.fit(..., sharding=)`` takes by name: each array on every device, or
#: FSDP's; it also takes rules from axis names to mesh axes (:func:`by_names`).
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


def training_mesh(devices):
    """The mesh ``fnn.fit(devices=...)`` trains on: ``devices`` itself if it is a ``jax.sharding.Mesh``, else
    :func:`data_mesh` of ``devices`` (``None``: one device).

    A mesh of its own must have the axis ``"data"``, which each batch is
    split over; its other axes (a ``"model"`` axis for tensor parallelism)
    split parameters by rules (:func:`by_names`), each batch whole along
    them. For example a 4 x 2 mesh of 8 devices::

        jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    """
    if not isinstance(devices, jax.sharding.Mesh):
        return data_mesh(1 if devices is None else devices)
    if AXIS not in devices.axis_names:
        raise InputError(
            f"a mesh to train on needs the axis {AXIS!r}, which batches are split over; got the axes "
            f"{devices.axis_names}: name the batch's axis {AXIS!r}, e.g. jax.make_mesh((4, 2), ('data', 'model'))"
        )
    return devices


def data_shards(mesh):
    """The number of parts each batch is split into over ``mesh``: the size of its axis ``"data"``.

    >>> import fnn
    >>> fnn.parallel.data_shards(fnn.parallel.data_mesh(1))
    1
    """
    return mesh.shape[AXIS]


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
        axes = [i for i, d in enumerate(np.shape(a)) if d % n == 0 and d >= n]
        if n == 1 or _nbytes(a) < min_bytes:
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


def _nbytes(a):
    """The bytes of an array, or of a ``jax.ShapeDtypeStruct``'s array."""
    return np.dtype(a.dtype).itemsize * int(np.prod(np.shape(a)))


def logical_axes(model, params):
    """The name of each axis of each of ``params``' arrays, as ``model``'s leaves declare them
    (:func:`fnn.module.leaf`'s ``param_axes``): a ``jax.sharding.PartitionSpec`` of names per array (``None`` for an
    axis no leaf names), in the structure of ``params``.

    For example ``dense``'s ``w`` is ``("in", "out")``, a convolution's
    ``("window", ..., "in", "out")``, an embedding's table ``("vocab",
    "embed")``, attention's projections ``("embed", "heads")`` and
    ``("heads", "embed")``, and ``nn.repeat`` puts ``"layers"`` first.
    """
    return _checked_axes("logical_axes", model, params, "param_axes")


def state_axes(model, state):
    """The name of each axis of each array of ``model``'s ``state`` (:meth:`fnn.module.Module.init_state`), as its
    leaves declare them (:func:`fnn.module.leaf`'s ``state_axes``): batch norm's running statistics are
    ``("features",)``, as its ``gamma`` and ``beta`` are; in the structure of ``state``.

    >>> import fnn
    >>> model = fnn.nn.serial(fnn.nn.dense(4), fnn.nn.batch_norm())
    >>> axes = fnn.parallel.state_axes(model, model.init_state((3,)))
    >>> {name: tuple(spec) for name, spec in axes[1].items()}
    {'mean': ('features',), 'var': ('features',)}
    """
    return _checked_axes("state_axes", model, state, "state_axes")


def _checked_axes(caller, model, tree, declared_by):
    """The names of the axes of ``tree``'s arrays, ``model``'s parameters or state, each array's checked to name
    each of its axes."""
    if not isinstance(model, Module):
        raise InputError(f"{caller}: model must be an fnn module, got {type(model).__name__}")
    axes = model._param_axes(tree) if declared_by == "param_axes" else model._state_axes(tree)
    for path, a in jax.tree_util.tree_leaves_with_path(tree):
        spec = _at(axes, path)
        if len(spec) != np.ndim(a):
            raise InputError(
                f"{caller}: {model.name} names {len(spec)} axes {tuple(spec)} for the array "
                f"{jax.tree_util.keystr(path)} of shape {tuple(np.shape(a))}; its leaf's {declared_by} must name "
                "each axis"
            )
    return axes


def _at(tree, path):
    """The entry of ``tree`` at a key path of another tree of the same structure."""
    for key in path:
        tree = getattr(tree, key.name) if hasattr(key, "name") else tree[getattr(key, "key", getattr(key, "idx", None))]
    return tree


def by_names(params, axes, mesh, rules, *, min_bytes=FSDP_MIN_BYTES):
    """The layout of ``params`` from the names of their axes (:func:`logical_axes`) and ``rules`` mapping a name to
    a mesh axis (or ``None``: not split), as Flax's and MaxText's logical axis rules do.

    An axis is split over the mesh axis its name maps to when that mesh
    axis's size divides it and no earlier axis of the array took that mesh
    axis. Nothing is silent: one :class:`fnn.ShardingWarning` names the axis
    names no rule covers, the rules whose name no array has (a misspelt
    name), the axes whose rule could not apply (not divisible, mesh axis
    taken) and the arrays of at least ``min_bytes`` left whole on every
    device. ``params`` may be any tree with ``axes`` of its structure (a
    model's parameters and state together, as ``fnn.fit`` lays them out).

    Example::

        mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
        rules = {"in": "data", "out": "model", "vocab": "model", "embed": "data"}
        shardings = fnn.parallel.by_names(params, fnn.parallel.logical_axes(model, params), mesh, rules)
    """
    bad = {name: target for name, target in rules.items() if not (target is None or isinstance(target, str))}
    if not isinstance(rules, dict) or bad:
        raise InputError(
            f"by_names: rules map each axis name to one mesh axis name or None, got {bad or type(rules).__name__}"
        )
    unknown = sorted(set(rules.values()) - set(mesh.axis_names) - {None})
    if unknown:
        raise InputError(f"by_names: rules map to mesh axes {unknown} that the mesh {dict(mesh.shape)} lacks")
    uncovered, unapplied, whole, present = set(), [], [], set()

    def one(path, a):
        spec, used, where = _at(axes, path), set(), jax.tree_util.keystr(path)
        placed = []
        present.update(spec)
        for size, name in zip(np.shape(a), spec):
            target = None if name is None else rules.get(name, None)
            if name is not None and name not in rules:
                uncovered.add(name)
            if target is not None and (target in used or size % mesh.shape[target]):
                unapplied.append(f"{where} {name}->{target}")
                target = None
            used.add(target)
            placed.append(target)
        if not any(placed) and _nbytes(a) >= min_bytes:
            whole.append(f"{where} {tuple(np.shape(a))}")
        return NamedSharding(mesh, P(*placed))

    found = jax.tree_util.tree_map_with_path(one, params)
    said = []
    if uncovered:
        said.append(f"no rule for the axis names {sorted(uncovered)}")
    unused = sorted(set(rules) - present)
    if unused:
        said.append(f"rules for axis names no array has: {unused}")
    if unapplied:
        said.append(f"rules that could not split (not divisible, or the mesh axis taken): {', '.join(unapplied[:5])}")
    if whole:
        said.append(f"{len(whole)} arrays of at least {min_bytes} bytes whole on every device: {', '.join(whole[:5])}")
    if said:
        warnings.warn(f"by_names: {'; '.join(said)}", ShardingWarning, stacklevel=2)
    return found


def layout(name, tree, mesh):
    """The shardings of ``tree`` for the layout ``name`` (one of :data:`LAYOUTS`; rules from axis names are
    :func:`by_names`')."""
    if isinstance(name, dict) or name not in LAYOUTS:
        raise InputError(
            f"sharding must be one of {', '.join(map(repr, LAYOUTS))}, got {name!r}; lay out by rules from axis "
            "names with by_names"
        )
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
