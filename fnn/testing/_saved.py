"""What the rule keeps between forward and backward, against what autodiff keeps (reported, never failing)."""

from fnn.inspect._residuals import residuals
from fnn.testing._dtypes import x64
from fnn.testing._report import INFO, Check

__all__ = ["saved"]


def saved(problem):
    """``saved``: bytes of ``saved`` (the backprop path's residuals) and of autodiff's residuals, in float64.

    Both as :func:`fnn.inspect.residuals` counts them: arrays computed by the
    forward pass, leaving out the parameters and inputs, which are alive anyway.
    """
    params, x, targets, _, _ = problem.data()
    with x64():
        kept = {
            path: residuals(problem.model, problem.loss, path, params, x, targets) for path in ("backprop", "autodiff")
        }
    rule, auto = kept["backprop"], kept["autodiff"]
    avals = ", ".join(r["aval"] for r in rule["saved"] if not r["source"].startswith("from the argument")) or "nothing"
    detail = (
        f"saved holds {rule['computed_bytes']} B computed ({avals}); autodiff's residuals "
        f"{auto['computed_bytes']} B (float64, beyond parameters and inputs)"
    )
    return Check("saved", INFO, where="", detail=detail)
