"""Builds an op set for one gradient path from the module and loss definitions.

Each op is written once below, as a function of ``run`` and its arrays:
``run(module)`` is the module's (or loss's) apply function on the path being
built: the plain ``apply`` for ``"autodiff"``, the hand-differentiated one
(:attr:`fnn.module.Module.by_rules`) for ``"custom"``. So every formula lives
once, in :mod:`fnn.nn` or :mod:`fnn.losses`, and both op sets have the same
names, signatures and checks.
"""

import functools
import inspect

from fnn import losses
from fnn._errors import InputError
from fnn.nn import _activations as activations
from fnn.nn import _attention as attend
from fnn.nn import _batch_norm as batchnorm
from fnn.nn import _conv as conv
from fnn.nn import _dropout as stochastic
from fnn.nn import _embeddings as embeddings
from fnn.nn import _linear as linear
from fnn.nn import _norm as norm
from fnn.nn import _pool as pool
from fnn.nn import _softmax as probability


def _per_value(factory):
    """``factory`` memoised per hyperparameter value.

    An unhashable value (a list, an array) goes to ``factory`` uncached, which
    accepts it (``stride=[2, 2]``) or rejects it with its own message.
    """
    cached = functools.lru_cache(typed=True)(factory)  # typed: True is not taken for 1

    def get(*args):
        try:
            hash(args)
        except TypeError:
            return factory(*args)
        return cached(*args)

    return get


# Leaves and losses with hyperparameters, one per distinct value (each builds its custom rule once).
_leaky_relu = _per_value(activations.leaky_relu)
_softplus = _per_value(activations.softplus)
_layer_norm = _per_value(norm.layer_norm_leaf)
_conv2d = _per_value(conv.conv2d_leaf)
_hinge = _per_value(losses.multiclass_hinge)
_conv1d = _per_value(conv.conv1d_leaf)
_avg_pool = _per_value(pool.avg_pool_leaf)
_max_pool = _per_value(pool.max_pool_leaf)
_group_norm = _per_value(norm.group_norm_leaf)
_attention = _per_value(attend.attention_leaf)
_batch_norm = _per_value(batchnorm.batch_norm_leaf)
_dropout = _per_value(stochastic.dropout)


def matmul(run, x, w):
    """Matrix product ``y = x W`` of ``x[..., n]`` and ``W[n, k]``; ``dx = G W^T``, ``dW = x^T G``."""
    return run(linear.MATMUL)({"w": w}, x)


def add_bias(run, x, b):
    """``y = x + b``, ``b[k]`` broadcast over the rows of ``x[..., k]``; ``db = sum of G over rows``."""
    return run(linear.BIAS)({"b": b}, x)


def relu(run, x):
    """``max(x, 0)``; derivative ``1[x > 0]`` (0 at 0)."""
    return run(activations.relu)((), x)


def sigmoid(run, x):
    """``1 / (1 + exp(-x))``; derivative ``s (1 - s)``."""
    return run(activations.sigmoid)((), x)


def tanh(run, x):
    """``tanh(x)``; derivative ``1 - t^2``."""
    return run(activations.tanh)((), x)


def leaky_relu(run, x, negative_slope=0.01):
    """``max(x, a x)``, ``0 <= a < 1``; derivative 1 where ``x > 0``, else ``a``."""
    return run(_leaky_relu(negative_slope))((), x)


def gelu(run, x):
    """Exact GELU ``x Phi(x)``; derivative ``Phi(x) + x phi(x)``."""
    return run(activations.gelu)((), x)


def softplus(run, x, beta=1.0):
    """``log(1 + exp(beta x)) / beta``, stable; derivative ``sigmoid(beta x)``."""
    return run(_softplus(beta))((), x)


def layer_norm(run, x, gamma, beta, eps=1e-5):
    """LayerNorm over the last axis of ``x[..., m]``: ``beta + gamma (x - mean) / sqrt(var + eps)``."""
    return run(_layer_norm(eps))({"gamma": gamma, "beta": beta}, x)


def conv2d(run, x, w, *, stride=1, padding="SAME"):
    """2-D convolution of NHWC ``x`` with an HWIO kernel ``w``; int or pair ``stride``, ``"SAME"``/``"VALID"``."""
    return run(_conv2d(stride, padding))({"w": w}, x)


def cross_entropy(run, logits, labels):
    """Mean softmax cross-entropy ``mean(logsumexp(h) - h_y)``; NaN for a label outside ``[0, k)``."""
    return run(losses.cross_entropy)(logits, labels)


def mse(run, pred, target):
    """Mean squared error ``mean((a - y)^2)`` over all entries."""
    return run(losses.mse)(pred, target)


def logistic_loss(run, logits, labels):
    """Binary logistic loss ``mean(softplus(t) - y t)``, labels 0/1 of the logits' shape."""
    return run(losses.logistic)(logits, labels)


def multiclass_hinge(run, scores, labels, margin=1.0):
    """The multiclass SVM loss ``mean_i sum_{j != y_i} max(0, s_j - s_y + margin)``."""
    return run(_hinge(margin))(scores, labels)


def conv1d(run, x, w, *, stride=1, padding="SAME"):
    """1-D convolution of NWC ``x[N, W, C]`` with a WIO kernel ``w[K, C, O]``; ``stride``, ``"SAME"``/``"VALID"``."""
    return run(_conv1d(stride, padding))({"w": w}, x)


def avg_pool(run, x, window, *, stride=None, padding="VALID"):
    """Mean of each window of ``x[N, *spatial, C]`` (``window`` one size per spatial axis); ``dx`` spreads ``G / K``."""
    return run(_avg_pool(window, stride, padding))((), x)


def max_pool(run, x, window, *, stride=None, padding="VALID"):
    """Max of each window of ``x[N, *spatial, C]``; ``dx`` routes ``G`` to the first maximal position (ties: first)."""
    return run(_max_pool(window, stride, padding))((), x)


def group_norm(run, x, gamma, beta, *, groups, eps=1e-5):
    """GroupNorm of ``x[N, *spatial, C]`` over each example's spatial axes and ``groups`` groups of channels."""
    return run(_group_norm(groups, eps))({"gamma": gamma, "beta": beta}, x)


def softmax(run, x):
    """Softmax over the last axis; ``dx = p * (G - sum(G * p))``."""
    return run(probability.softmax)((), x)


def embedding(run, table, ids):
    """Rows ``table[ids]`` of ``table[V, D]`` for integer ``ids[...]``; ``dtable`` sums ``G`` in; ids get none."""
    return run(embeddings.EMBEDDING)({"table": table}, ids)


def attention(run, q, k, v, *, causal=False):
    """``softmax(q k^T / sqrt(D)) v`` for ``q[B, T, H, D]``, ``k, v[B, S, H, D]``; the backward recomputes ``P``."""
    return run(_attention(causal))({"k": k, "v": v}, q)


def batch_norm(run, x, gamma, beta, *, eps=1e-5):
    """Training-mode batch norm of ``x[N, ..., C]``: each channel by its own mean and variance over every other axis.

    ``beta + gamma (x - mu) / sqrt(var + eps)``; no running statistics (the
    module :func:`fnn.nn.batch_norm` keeps them). The backward goes through
    ``mu`` and ``var``.
    """
    return run(_batch_norm(eps))({"gamma": gamma, "beta": beta}, x)


def dropout(run, x, key, *, rate):
    """Inverted dropout in training: ``x m / (1 - rate)``, ``m ~ Bernoulli(1 - rate)`` drawn from ``key``.

    ``dx = G m / (1 - rate)``; the same ``key`` gives the same mask in both op
    sets, and ``key`` gets no gradient.
    """
    return run(_dropout(rate))((), x, key=key, train=True)


#: Every op, in the order :func:`op_set` returns them.
OPS = (
    matmul,
    add_bias,
    relu,
    sigmoid,
    tanh,
    leaky_relu,
    gelu,
    softplus,
    layer_norm,
    conv2d,
    cross_entropy,
    mse,
    logistic_loss,
    multiclass_hinge,
    conv1d,
    avg_pool,
    max_pool,
    group_norm,
    softmax,
    embedding,
    attention,
    batch_norm,
    dropout,
)
#: The op names: each of :mod:`fnn.ops.autodiff` and :mod:`fnn.ops.custom` holds one function of each name.
NAMES = tuple(op.__name__ for op in OPS)


def _bind(op, run):
    """``op`` with its ``run`` argument fixed: same name, docstring and (remaining) signature."""

    @functools.wraps(op)
    def bound(*args, **kwargs):
        return op(run, *args, **kwargs)

    signature = inspect.signature(op)
    bound.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    return bound


def op_set(path):
    """The ops of ``path`` (``"autodiff"`` or ``"custom"``) as a tuple in the order of :data:`NAMES`."""
    if path == "custom":
        run = lambda module: module.by_rules.apply  # noqa: E731
    elif path == "autodiff":
        run = lambda module: module.apply  # noqa: E731
    else:
        raise InputError(f"op sets exist for 'custom' and 'autodiff', not {path!r}")
    return tuple(_bind(op, run) for op in OPS)
