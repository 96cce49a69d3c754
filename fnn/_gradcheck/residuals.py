"""What the forward pass of each path keeps for its backward pass (``jax.ad_checkpoint.print_saved_residuals``)."""

import contextlib
import io
import re
from pathlib import Path

import jax
import numpy as np

from fnn._errors import InputError
from fnn._paths import check_path, objective, sweep_backward, sweep_forward

_SOURCE_ROOT = f"{Path(__file__).resolve().parents[2]}/"  # stripped from residual sources


def aval_bytes(aval):
    """Bytes of a short aval string such as ``f32[8,16]``, ``bf16[]``, ``bool[8]`` or ``f8_e4m3fn[4]``."""
    match = re.fullmatch(r"([a-z]+)(\d*)(?:_\w+)?\[([\d,]*)\]", aval)
    if match is None:
        raise InputError(f"not a short aval string: {aval!r}")
    kind, bits, dims = match.groups()
    itemsize = int(bits) // 8 if bits else 1  # bool (pred) is one byte
    return itemsize * int(np.prod([int(d) for d in dims.split(",") if d]))


def backprop_as_one_vjp(model, loss):
    """The ``backprop`` path's loss as one ``custom_vjp`` ``(params, x, targets) -> L``.

    ``fwd`` is the reverse sweep's forward half (``model.forward``, then
    ``loss.forward``) and keeps the parameters and what those save; ``bwd`` is
    its backward half (``loss.backward``, then ``model.backward``). So
    ``print_saved_residuals`` lists what the sweep keeps like the other
    paths' residuals, and its gradient with respect to ``params`` equals
    ``fnn.value_and_grad(model, loss, path="backprop")``'s (``x`` and
    ``targets`` get none).
    """

    forward, backward = sweep_forward(model, loss), sweep_backward(model, loss)

    @jax.custom_vjp
    def fn(params, x, targets):
        return forward(params, x, targets)[0]

    def fwd(params, x, targets):
        value, _, saved = forward(params, x, targets)
        return value, (params, saved)

    def bwd(kept, g):
        params, saved = kept
        return backward(params, saved, g)[0], None, None

    fn.defvjp(fwd, bwd)
    return fn


def residuals(model, loss, path, params, x, targets):
    """What the forward pass of ``path`` keeps for its backward pass.

    Parses ``jax.ad_checkpoint.print_saved_residuals`` (one ``aval source``
    line per residual) of the objective ``loss(model(params, x), targets)`` (``autodiff``, ``custom``) or
    :func:`backprop_as_one_vjp` (``backprop``), differentiated with respect to
    every argument.

    Returns:
      A dict with ``"of"`` (a description), ``"saved"`` (one dict per residual,
      such as ``{"aval": "f32[100,500]", "bytes": 200000, "source": "output of
      ... from fnn/nn/_activations.py:52:8 (...)"}``), ``"total_bytes"`` (all
      saved bytes) and ``"computed_bytes"`` (those not arguments).
      ``computed_bytes`` leaves out the parameters and inputs, which are alive
      anyway; it is what the path adds to memory between forward and backward.
    """
    from jax.ad_checkpoint import print_saved_residuals

    if check_path(path) == "backprop":
        fn = backprop_as_one_vjp(model, loss)
    else:
        with_outputs = objective(model, loss, path)

        def fn(params, x, targets):
            return with_outputs(params, x, targets)[0]

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print_saved_residuals(fn, params, x, targets)
    saved = []
    for line in printed.getvalue().splitlines():
        aval, _, source = line.partition(" ")
        saved.append({"aval": aval, "bytes": aval_bytes(aval), "source": source.replace(_SOURCE_ROOT, "")})
    of = f"fnn.value_and_grad(model, {loss!r}, path={path!r})"
    if path == "backprop":
        of += f": model.forward and {loss!r}.forward"
    return {
        "of": of,
        "saved": saved,
        "total_bytes": sum(r["bytes"] for r in saved),
        "computed_bytes": sum(r["bytes"] for r in saved if not r["source"].startswith("from the argument")),
    }
