"""A run's configuration: what a checkpoint records, and what differs when a resumed run is not the same run.

The configuration holds every setting that decides what training computes
from a checkpoint on: the model with every setting of every module
(:meth:`fnn.module.Module.describe`), the loss, the path, the batch size,
the training data (by a fingerprint of its contents: :func:`data_identity`),
its order (the run's key), the metrics, the loss scale's settings, and the
functions that train: the optimizer, the augmentation and a stream's
transform, each identified by its
code and every value it is bound to (:func:`fnn.loop._identity.identify`: a
schedule's steps, a ``functools.partial``'s arguments, a callable object's
attributes, a closure's cells). Where part of the optimizer holds state that
cannot be read, it is also recorded by what it does: its updates on a fixed
probe over the run's steps (:func:`optimizer_updates`); whatever cannot be
identified is said in one line (:class:`UnidentifiedWarning`).
"""

import hashlib
import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from fnn._errors import UnidentifiedWarning
from fnn._gradcheck.compare import relative_error
from fnn.loop._identity import identify

__all__ = ["data_identity", "differences", "optimizer_updates", "run_config"]

#: Two probes agree when every number is within this fraction of their largest
#: (float32 rounding on another machine is far below it; any change of a
#: setting is far above it).
PROBE_RTOL = 1e-5
#: A source other than record files is fingerprinted record by record up to this many bytes, else by a sample.
HASHED_BYTES = 256 << 20
#: Records a large source's fingerprint samples, evenly spaced.
SAMPLED_RECORDS = 1024
#: Values a refused resume lists per function at most.
LISTED = 4


def run_config(plan, params, key_data, data, epochs):
    """The JSON-ready configuration of the run :class:`fnn.loop._epoch.Plan` ``plan`` starting from ``params``,
    ``key_data`` being its key's (which orders the data and draws the augmentation and dropout), ``data`` the
    :func:`data_identity` of its training data and ``epochs`` its length (for the optimizer's probe)."""
    config = {
        "model": plan.model.describe(),
        "loss": plan.loss.describe(),
        "path": plan.path,
        "batch_size": plan.batch_size,
        "n_train": plan.n_train,
        "data": data,
        "shuffle": plan.shuffle,
        "key": np.asarray(key_data).tolist(),
        "train_metrics": plan.train_metrics,
        "precision": plan.precision,
        "augment": _identified("augment", plan.augment),
        "transform": _identified("transform", plan.transform),
        "optimizer": _identified("optimizer", plan.optimizer),
        "step": _identified("step", plan.step) if plan.own_step else None,
        "accumulate": plan.accumulate,
        "loss_scale": _loss_scale(plan.loss_scale),
    }
    if config["optimizer"]["unidentified"]:
        config["optimizer_updates"] = optimizer_updates(plan.optimizer, params, epochs * plan.steps_per_epoch)
    return json.loads(json.dumps(config))  # as a checkpoint gives it back: lists, not tuples


def _loss_scale(loss_scale):
    """A :class:`fnn.train.DynamicLossScale`'s settings and starting values as Python numbers (``None`` for none)."""
    return None if loss_scale is None else {name: np.asarray(v).item() for name, v in vars(loss_scale).items()}


def _identified(name, fn):
    """:func:`identify`'s JSON of ``fn`` (``None`` for none), saying in one line what it could not identify."""
    if fn is None:
        return None
    found = identify(fn, name)
    if found.unidentified:
        warnings.warn(
            f"fnn.fit: the {name} holds state that cannot be read ({', '.join(found.unidentified[:3])}); "
            f"a resumed run cannot tell whether it changed there",
            UnidentifiedWarning,
            stacklevel=4,
        )
    return found.to_json()


def data_identity(x=None, y=None, source=None):
    """A fingerprint of the training data: ``{"digest": hex, "how": what it covers}``.

    Arrays ``x``, ``y`` are hashed whole (BLAKE2b, about a second per GB); a
    ``source`` (a stream's records) by its own ``fingerprint`` where it has
    one (:class:`fnn.data.Records`: its manifest's checksums), else record by
    record up to :data:`HASHED_BYTES`, beyond that :data:`SAMPLED_RECORDS`
    records spread evenly over it (said in one line: records between them
    could change unseen).
    """
    digest = hashlib.blake2b(digest_size=16)
    if source is None:
        for a in (x, y):
            a = np.ascontiguousarray(a)
            digest.update(f"{a.dtype.str}{a.shape}".encode())
            digest.update(memoryview(a).cast("B"))
        return {"digest": digest.hexdigest(), "how": "arrays"}
    own = getattr(source, "fingerprint", None)
    if isinstance(own, str):
        return {"digest": own, "how": "record checksums"}
    n = len(source)
    first = [np.asarray(a) for a in source[0]]
    if n * sum(a.nbytes for a in first) <= HASHED_BYTES:
        indices, how = range(n), "every record"
    else:
        indices = np.unique(np.linspace(0, n - 1, SAMPLED_RECORDS).astype(np.int64))
        how = f"{len(indices)} of {n} records"
        warnings.warn(
            f"fnn.fit: the training source is identified by {how}, evenly spaced (it has no fingerprint; "
            "fnn.data.Records has one); a resumed run cannot tell whether records between them changed",
            UnidentifiedWarning,
            stacklevel=4,
        )
    for i in indices:
        for a in source[int(i)]:
            a = np.ascontiguousarray(a)
            digest.update(f"{a.dtype.str}{a.shape}".encode())
            digest.update(memoryview(a).cast("B"))
    return {"digest": digest.hexdigest(), "how": how}


def _probe_leaf(leaf, offset, phase):
    """``cos(phase * i + offset)`` over the flat index ``i`` of ``leaf``, in its shape and dtype (0 if not floating)."""
    if not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
        return jnp.zeros_like(leaf)
    i = np.arange(np.size(leaf), dtype=np.float64).reshape(np.shape(leaf))
    return jnp.asarray(np.cos(phase * i + offset), jnp.asarray(leaf).dtype)


def probe_steps(steps):
    """The steps after which :func:`optimizer_updates` records the probe: 1, 2, 4, ... and ``steps`` itself."""
    return sorted({*(2**k for k in range(int(math.log2(max(steps, 1))) + 1)), max(steps, 1)})


def optimizer_updates(optimizer, params, steps):
    """What ``optimizer`` does over ``steps`` steps on a fixed probe: ``{step: [sum |u|, weighted sum]}`` after
    the steps of :func:`probe_steps`.

    From probe parameters ``p_0 = 0.1 cos(i + k)`` of ``params``' structure,
    shapes and dtypes (``i`` an entry's flat index, ``k`` its leaf's), step
    ``t`` takes the gradient ``g_t = cos((t mod 7 + 2) i + k)`` and applies
    the update ``u_t``; each recorded step gives ``sum |u_t|`` and
    ``sum u_t (1.5 + cos(i + k))`` over every entry. One compiled scan.
    """
    leaves, treedef = jax.tree.flatten(params)

    def probe(phase, scale=1.0):
        return [scale * _probe_leaf(a, k, phase) for k, a in enumerate(leaves)]

    gradients = [jnp.stack(leaf) for leaf in zip(*(probe(t + 2.0) for t in range(7)))]  # per leaf, [7, ...]
    weights = [1.5 + jnp.asarray(w, jnp.float32) for w in probe(1.0)]
    start = jax.tree.unflatten(treedef, probe(1.0, 0.1))

    def step(carry, t):
        current, state = carry
        g = jax.tree.unflatten(treedef, [leaf[t % 7] for leaf in gradients])
        updates, state = optimizer.update(g, state, current)
        current = jax.tree.map(lambda p, u: p + u, current, updates)
        flat = [u.astype(jnp.float32) for u in jax.tree.leaves(updates)]
        summary = jnp.stack([sum(jnp.abs(u).sum() for u in flat), sum((u * w).sum() for u, w in zip(flat, weights))])
        return (current, state), summary

    run = jax.jit(lambda: jax.lax.scan(step, (start, optimizer.init(start)), jnp.arange(steps))[1])
    summaries = np.asarray(run(), np.float64)
    return {str(s): summaries[s - 1].tolist() for s in probe_steps(steps)}


def differences(saved, current):
    """What differs between a checkpoint's configuration ``saved`` and this run's ``current``, in words.

    One line per difference: a model setting by its place in the tree
    (``model serial[3] dropout: rate: checkpoint 0.1, this run 0.9``), a
    function's changed values by their path
    (``optimizer.update...decay_steps: checkpoint 1000, this run 100000``),
    the training data by its fingerprint, any other entry by its name.
    """
    found = []
    for name in sorted(set(saved) | set(current)):
        a, b = saved.get(name), current.get(name)
        if name == "model" and isinstance(a, dict) and isinstance(b, dict):
            found += _module_differences(a, b, f"model {b.get('module')}")
        elif name in ("augment", "transform", "optimizer", "step") and isinstance(a, dict) and isinstance(b, dict):
            found += _function_differences(name, a, b)
        elif name == "optimizer_updates" and a is not None and b is not None:
            found += _probe_differences(a, b)
        elif name == "data" and isinstance(a, dict) and isinstance(b, dict):
            if a.get("digest") != b.get("digest"):
                found.append(
                    f"training data: other contents (checkpoint {a.get('digest')} from {a.get('how')}, this run "
                    f"{b.get('digest')} from {b.get('how')})"
                )
        elif a != b:
            found.append(f"{name}: checkpoint {_short(a)}, this run {_short(b)}")
    return found


def _function_differences(name, a, b):
    """How two :func:`_identified` functions differ: their changed values, else their code."""
    if a.get("digest") == b.get("digest"):
        return []
    values_a, values_b = a.get("values", {}), b.get("values", {})
    changed = [
        k for k in [*values_b, *(k for k in values_a if k not in values_b)] if values_a.get(k) != values_b.get(k)
    ]
    if not changed:
        return [f"{name}: its code differs (another function, or other values it reads)"]
    lines = [f"{path}: checkpoint {values_a.get(path)!r}, this run {values_b.get(path)!r}" for path in changed[:LISTED]]
    more = f" (and {len(changed) - LISTED} more)" if len(changed) > LISTED else ""
    return [f"{name} differs: {'; '.join(lines)}{more}"]


def _probe_differences(a, b):
    """The first probe step, among those both recorded, at which the two optimizers' updates differ."""
    for step in sorted(set(a) & set(b), key=int):
        if not (np.shape(a[step]) == np.shape(b[step]) and relative_error(a[step], b[step]) <= PROBE_RTOL):
            return [
                f"optimizer: its updates on a fixed probe differ after {step} steps (another optimizer, or other "
                f"settings): checkpoint {_rounded(a[step])}, this run {_rounded(b[step])}"
            ]
    return []


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


def _short(value):
    """``repr(value)``, a function's identity by its digest."""
    if isinstance(value, dict) and "digest" in value:
        return f"<{value['digest'][:12]}>"
    return repr(value)


def _rounded(values):
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"
