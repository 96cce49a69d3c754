"""fnn: functional neural networks on JAX, differentiated two ways.

Models are pure ``init``/``apply`` functions over parameter pytrees. The same
forward pass is differentiated by ``jax.grad`` over plain ``jax.numpy`` ops
(:mod:`fnn.ops.autodiff`) or over ops with hand-written ``jax.custom_vjp`` rules
(:mod:`fnn.ops.custom`); one argument switches between them.
"""

__version__ = "0.1.0"

from fnn import backprop, data, loop, metrics, mlp, ops, testing, train
from fnn.loop import History, fit

__all__ = ["__version__", "History", "backprop", "data", "fit", "loop", "metrics", "mlp", "ops", "testing", "train"]
