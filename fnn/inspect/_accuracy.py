"""A gradient's accuracy: the float64 reference and the per-leaf error against it."""

import jax
import jax.numpy as jnp
import numpy as np

from fnn import _precision
from fnn._errors import InputError
from fnn._gradcheck.compare import relative_error
from fnn._gradcheck.dtypes import floating, x64
from fnn._paths import value_and_grad


def as_float64(tree):
    """``tree`` with every floating leaf cast to float64 (labels and other integers kept)."""
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if floating(a) else jnp.asarray(a), tree)


def reference_grads(model, loss, params, x, targets):
    """The float64 gradient: the ``autodiff`` path on float64 copies of ``params``, ``x`` and ``targets``.

    Floating leaves are cast to float64 (integer labels are kept); every
    product runs at full precision (``jax.lax.Precision.HIGHEST``). Works
    whether or not ``jax_enable_x64`` is on: when it is off, the reference is
    computed inside ``jax.enable_x64(True)``.

    Returns:
      The gradient in the structure of ``params``, every floating leaf float64.
    """
    with x64(), _precision.full():
        params64, x64_, targets64 = as_float64((params, x, targets))
        return jax.jit(value_and_grad(model, loss, path="autodiff"))(params64, x64_, targets64)[1]


def gradient_errors(grads, reference):
    """Per-leaf error of ``grads`` against ``reference`` (same structure), computed in float64 on the host.

    For each floating leaf ``g`` with reference ``r``:
    ``max_abs_err = max|g - r|`` and ``max_rel_err`` its
    :func:`fnn.testing.relative_error` (relative to the leaf's largest
    reference entry, so that entries near zero do not blow it up).

    Returns:
      ``[{"leaf": "[0]['w']", "max_abs_err": float, "max_rel_err": float}, ...]``,
      the leaf keyed by its tree path (``jax.tree_util.keystr``).
    """
    leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
    references = jax.tree.leaves(reference)
    if len(leaves) != len(references):
        raise InputError(f"grads have {len(leaves)} leaves, the reference {len(references)}")
    per_leaf = []
    for (key, g), r in zip(leaves, references):
        if not (floating(g) and floating(r)):  # float0 gradients of integer leaves
            continue
        g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
        if g.shape != r.shape:
            raise InputError(f"leaf {jax.tree_util.keystr(key)}: shape {g.shape}, reference {r.shape}")
        abs_err = float(np.max(np.abs(g - r), initial=0.0))
        leaf = jax.tree_util.keystr(key)
        per_leaf.append({"leaf": leaf, "max_abs_err": abs_err, "max_rel_err": relative_error(g, r)})
    return per_leaf
