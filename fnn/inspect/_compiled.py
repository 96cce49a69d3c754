"""A compiled function's cost: the SGD step of a path, XLA's memory and cost analyses."""

import time

import jax

from fnn.train import sgd_update

#: Default SGD step size of the compiled and timed steps: small, so that the step stays near its inputs.
LEARNING_RATE = 0.01


def compile_step(model, loss, path, params, x, targets, learning_rate=LEARNING_RATE):
    """Lowers and compiles the jitted SGD step ``(params, (x, targets)) -> (params, {"loss": L})``, no donation.

    Returns:
      ``(compiled, seconds)``: the ``jax.stages.Compiled`` step and the wall
      seconds of lowering plus compiling.
    """
    start = time.perf_counter()
    compiled = jax.jit(sgd_update(model, loss, learning_rate, path=path)).lower(params, (x, targets)).compile()
    return compiled, time.perf_counter() - start


def memory(compiled):
    """XLA's memory analysis of a compiled function, in bytes.

    ``temp_bytes``: scratch buffers live during the call (activations,
    residuals, intermediate gradients); ``arg_bytes`` / ``out_bytes``: the
    arguments and outputs; ``alias_bytes``: the outputs written over donated
    arguments' buffers (a jitted step that donates its state: its new state).
    A device holds at most ``arg_bytes + out_bytes - alias_bytes +
    temp_bytes`` while the call runs. Under ``jax.sharding``, each is one
    device's. ``None`` each where the backend gives no analysis.
    """
    stats = compiled.memory_analysis()
    if stats is None:
        return {"temp_bytes": None, "arg_bytes": None, "out_bytes": None, "alias_bytes": None}
    return {
        "temp_bytes": int(stats.temp_size_in_bytes),
        "arg_bytes": int(stats.argument_size_in_bytes),
        "out_bytes": int(stats.output_size_in_bytes),
        "alias_bytes": int(stats.alias_size_in_bytes),
    }


def compiled_cost(compiled):
    """:func:`memory` and XLA's cost analysis of a compiled function.

    Returns:
      The bytes of :func:`memory`, plus ``flops``, ``transcendentals`` and
      ``bytes_accessed`` as XLA counts them (``nan`` where the backend does
      not give them: never a 0 that reads as "no work"; :func:`fnn.bench.model_flops`
      counts a program's products the same way on every backend).
    """
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    counted = {name: float(cost[key]) if key in cost else float("nan") for name, key in _COSTS.items()}
    return {**memory(compiled), **counted}


#: The entries of :func:`compiled_cost` and the keys of XLA's cost analysis they come from.
_COSTS = {"flops": "flops", "transcendentals": "transcendentals", "bytes_accessed": "bytes accessed"}
