"""Determinism: the same draw gives bitwise the same gradient twice, on every rule path, eager and jitted."""

import numpy as np

from fnn.testing._report import FAILED, PASSED, Check

__all__ = ["determinism"]

#: ``(path, eager)``: the rule's paths as they run op by op (Python re-run) and compiled (the kernels re-run).
RUNS = (("custom", True), ("backprop", False), ("custom", False))


def _bitwise_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def determinism(problem):
    """``determinism``: every floating leaf of a second run's gradient equals the first's bit for bit."""
    for path, eager in RUNS:
        first = problem.gradients(path, eager=eager)[2]
        second = problem.gradients(path, eager=eager, fresh=True)[2]
        pairs = zip(problem.names, problem.floating, problem.split(first), problem.split(second))
        for name, is_float, a, b in pairs:
            if is_float and not _bitwise_equal(a, b):
                mode = "eagerly" if eager else "jitted"
                return Check("determinism", FAILED, where=f"{name} ({path})", detail=f"two runs {mode} differ")
    runs = ", ".join(f"{path} {'eager' if eager else 'jitted'}" for path, eager in RUNS)
    return Check("determinism", PASSED, detail=f"bitwise equal twice: {runs}")
