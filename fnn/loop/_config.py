"""A run's configuration: what a checkpoint records, and what differs when a resumed run is not the same run.

The configuration holds every setting that decides what training computes
from a checkpoint on: the model with every setting of every module
(:meth:`fnn.module.Module.describe`), the loss, the path, the batch size,
the data's size and order (the run's key), the metrics, the augmentation
(by its name), and the optimizer. An optax optimizer is a pair of functions whose settings cannot
be read, so it is recorded by what it does: its first updates on a fixed
probe (:func:`optimizer_updates`), which any other optimizer or setting
(learning rate, momentum, weight decay, a schedule's start) changes.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np

from fnn._gradcheck.compare import relative_error

__all__ = ["differences", "optimizer_updates", "run_config"]

#: Optimizer steps the probe takes.
PROBE_STEPS = 3
#: Two probes agree when every number is within this fraction of their largest
#: (float32 rounding on another machine is far below it; any change of a
#: setting is far above it).
PROBE_RTOL = 1e-5


def run_config(plan, params, key_data):
    """The JSON-ready configuration of the run :class:`fnn.loop._epoch.Plan` ``plan`` starting from ``params``,
    ``key_data`` being its key's (which orders the data and draws the augmentation and dropout)."""
    config = {
        "model": plan.model.describe(),
        "loss": plan.loss.describe(),
        "path": plan.path,
        "batch_size": plan.batch_size,
        "n_train": plan.n_train,
        "shuffle": plan.shuffle,
        "key": np.asarray(key_data).tolist(),
        "train_metrics": plan.train_metrics,
        "augment": _name(plan.augment),
        "transform": _name(plan.transform),
        "optimizer_updates": optimizer_updates(plan.optimizer, params),
    }
    return json.loads(json.dumps(config))  # as a checkpoint gives it back: lists, not tuples


def _name(fn):
    """How the configuration names an augmentation: its ``__name__`` (``None`` for none)."""
    return None if fn is None else getattr(fn, "__name__", repr(fn))


def _probe_leaf(leaf, offset, phase):
    """``cos(phase * i + offset)`` over the flat index ``i`` of ``leaf``, in its shape and dtype (0 if not floating)."""
    if not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
        return jnp.zeros_like(leaf)
    i = np.arange(np.size(leaf), dtype=np.float64).reshape(np.shape(leaf))
    return jnp.asarray(np.cos(phase * i + offset), jnp.asarray(leaf).dtype)


def optimizer_updates(optimizer, params, steps=PROBE_STEPS):
    """The first ``steps`` updates of ``optimizer`` on a fixed probe, as ``2 * steps`` numbers.

    From probe parameters ``p_0 = 0.1 cos(i + k)`` of ``params``' structure,
    shapes and dtypes (``i`` an entry's flat index, ``k`` its leaf's), step
    ``t`` takes the gradient ``g_t = cos((t + 2) i + k)`` and applies the
    update ``u_t``; each step gives ``sum |u_t|`` and ``sum u_t (1.5 + cos(i + k))``
    over every entry. Run eagerly: nothing is compiled.
    """
    leaves, treedef = jax.tree.flatten(params)

    def probe(phase, scale=1.0):
        return jax.tree.unflatten(treedef, [scale * _probe_leaf(a, k, phase) for k, a in enumerate(leaves)])

    current, weights = probe(1.0, 0.1), probe(1.0)
    state = optimizer.init(current)
    summary = []
    for t in range(steps):
        updates, state = optimizer.update(probe(t + 2.0), state, current)
        current = jax.tree.map(lambda p, u: p + u, current, updates)
        flat = [np.asarray(u, np.float64) for u in jax.tree.leaves(updates)]
        weighted = [1.5 + np.asarray(w, np.float64) for w in jax.tree.leaves(weights)]
        summary += [
            sum(float(np.abs(u).sum()) for u in flat),
            sum(float((u * w).sum()) for u, w in zip(flat, weighted)),
        ]
    return summary


def differences(saved, current):
    """What differs between a checkpoint's configuration ``saved`` and this run's ``current``, in words.

    One line per difference: a model setting by its place in the tree
    (``model serial[3] dropout: rate: checkpoint 0.1, this run 0.9``), the
    optimizer when its probe updates differ, any other entry by its name.
    """
    found = []
    for name in sorted(set(saved) | set(current)):
        a, b = saved.get(name), current.get(name)
        if name == "model" and isinstance(a, dict) and isinstance(b, dict):
            found += _module_differences(a, b, f"model {b.get('module')}")
        elif name == "optimizer_updates" and a is not None and b is not None:
            if not _close(a, b):
                found.append(
                    "optimizer: its first updates on a fixed probe differ (another optimizer, or other settings: "
                    f"learning rate, momentum, ...): checkpoint {_rounded(a)}, this run {_rounded(b)}"
                )
        elif a != b:
            found.append(f"{name}: checkpoint {a!r}, this run {b!r}")
    return found


def _module_differences(a, b, where):
    """The differences of two :meth:`Module.describe` trees, each named by its place in the tree."""
    if a.get("module") != b.get("module"):
        return [f"{where}: checkpoint module {a.get('module')!r}, this run {b.get('module')!r}"]
    found = []
    settings_a, settings_b = a.get("settings", {}), b.get("settings", {})
    for key in [*settings_b, *(k for k in settings_a if k not in settings_b)]:
        if settings_a.get(key) != settings_b.get(key):
            found.append(f"{where}: {key}: checkpoint {settings_a.get(key)!r}, this run {settings_b.get(key)!r}")
    children_a, children_b = a.get("children", []), b.get("children", [])
    if len(children_a) != len(children_b):
        return [*found, f"{where}: checkpoint has {len(children_a)} modules inside, this run {len(children_b)}"]
    for i, (x, y) in enumerate(zip(children_a, children_b)):
        found += _module_differences(x, y, f"{where}[{i}] {y.get('module')}")
    return found


def _close(a, b):
    """Whether two probes agree: :func:`fnn.testing.relative_error` within :data:`PROBE_RTOL`."""
    return np.shape(a) == np.shape(b) and relative_error(a, b) <= PROBE_RTOL


def _rounded(values):
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"
