"""Synthetic data: a learnable random classification problem in any input shape, for smoke tests and examples."""

import math

import numpy as np

from fnn._errors import InputError
from fnn._numbers import as_int
from fnn.data._dataset import Dataset

__all__ = ["synthetic"]


def synthetic(n_train=512, n_test=128, *, shape=(784,), classes=10, seed=0):
    """A random :class:`~fnn.data.Dataset` with labels a linear teacher gives: learnable, and quick to make.

    The inputs are ``float32`` uniform in ``[0, 1)``; each example's label is
    ``argmax((x - 0.5) @ T)`` over its flattened input, ``T`` a standard
    normal ``[prod(shape), classes]`` teacher. A linear model can fit it
    exactly; with a few input features (``shape=(20,)``, 3 classes, 2,048
    examples) a small net learns most of it in a few epochs, while at
    MNIST's 784 features it needs far more examples than the defaults. At
    any size training moves, which is what a smoke test needs. The defaults
    are MNIST's sizes (flat rows of 784 pixels, 10 classes); ``shape=(28,
    28, 1)`` gives the same values laid out as images.

    The draws, from ``numpy.random.default_rng(seed)``, are in this order:
    the teacher, the training inputs, the test inputs; so the same arguments
    give the same arrays on every machine, and changing ``n_test`` leaves the
    training split as it was.

    Args:
      n_train: training examples, an int ``>= 1``.
      n_test: test examples, an int ``>= 1``.
      shape: one example's shape, the batch axis excluded: ``(784,)`` for
        flat rows, ``(28, 28, 1)`` for images (NHWC).
      classes: number of classes, an int ``>= 2``.
      seed: seeds every draw.

    Returns:
      ``Dataset("synthetic", x_train, y_train, x_test, y_test)``: ``x``
      ``float32 [N, *shape]``, ``y`` ``int32 [N]`` in ``0..classes - 1``.

    Raises:
      InputError: (a ``ValueError``) a size, the shape or the number of
        classes is not a positive int (at least 2 classes), or ``seed`` is
        not an int.

    Examples:
      >>> import fnn
      >>> data = fnn.data.synthetic(64, 16, shape=(28, 28, 1))
      >>> data.x_train.shape, data.x_train.dtype.name, data.y_test.shape
      ((64, 28, 28, 1), 'float32', (16,))
    """
    n_train, n_test = (_count(name, n) for name, n in (("n_train", n_train), ("n_test", n_test)))
    shape = _shape(shape)
    classes = as_int(classes)
    if classes is None or classes < 2:
        raise InputError(f"synthetic: classes must be an int of at least 2, got {classes!r}")
    if as_int(seed) is None:
        raise InputError(f"synthetic: seed must be an int, got {seed!r}")
    rng = np.random.default_rng(as_int(seed))
    features = math.prod(shape)
    teacher = rng.standard_normal((features, classes)).astype(np.float32)

    def split(n):
        x = rng.random((n, features), dtype=np.float32)
        return x.reshape(n, *shape), np.argmax((x - 0.5) @ teacher, axis=1).astype(np.int32)

    return Dataset("synthetic", *split(n_train), *split(n_test))


def _count(name, value):
    """``value`` as an int of at least 1, or an ``InputError`` naming ``name``."""
    number = as_int(value)
    if number is None or number < 1:
        raise InputError(f"synthetic: {name} must be an int of at least 1 (a number of examples), got {value!r}")
    return number


def _shape(shape):
    """``shape`` as a tuple of positive ints, or an ``InputError`` that says what was expected."""
    dims = (shape,) if as_int(shape) is not None else shape
    try:
        dims = tuple(as_int(d) for d in dims)
    except TypeError:
        dims = (None,)
    if not dims or any(d is None or d < 1 for d in dims):
        raise InputError(
            f"synthetic: shape must be one example's shape, a tuple of positive ints such as (784,) or (28, 28, 1), "
            f"got {shape!r}"
        )
    return dims
