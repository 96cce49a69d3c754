"""The :class:`Dataset`: train and test splits as NumPy arrays, and the validation split held out of them."""

import dataclasses

import numpy as np

from fnn._errors import InputError

__all__ = ["Dataset"]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test splits as NumPy arrays.

    Attributes:
      name: the TFDS name, e.g. ``"mnist"``.
      x_train: ``float32`` pixels in ``[0, 1]`` (uint8 / 255), ``[N_train, 784]``
        flat or ``[N_train, 28, 28, 1]`` as images.
      y_train: ``int32 [N_train]`` labels in ``0..9``.
      x_test: ``float32``, laid out as ``x_train``.
      y_test: ``int32 [N_test]``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def validation(self, size=10_000):
        """This dataset with its last ``size`` training examples held out as the test split.

        Choose settings on the returned dataset (train on the first
        ``N_train - size`` examples, evaluate on the rest), then train once on
        the real split and test once on the real test set.
        """
        n = len(self.x_train)
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size < n:
            raise InputError(f"validation size must be an int in [1, {n - 1}] (the training set has {n}), got {size!r}")
        keep = n - size
        return Dataset(
            f"{self.name} (validation split)",
            self.x_train[:keep],
            self.y_train[:keep],
            self.x_train[keep:],
            self.y_train[keep:],
        )
