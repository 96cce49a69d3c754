"""Data augmentation for ``fnn.fit(augment=...)``: functions ``augment(key, x) -> x`` of a step's key and inputs
(each also offers ``random_map(x, rng)``, the per-record form that a :class:`fnn.data.Stream` runs in its readers).

``fit`` calls ``augment`` inside the compiled training step on each training
batch's inputs, with the step's own key, so an augmented run repeats and
resumes exactly; test inputs are never augmented. ``fit`` records the
augmentation in the run's configuration by its ``__name__``, so each
augmentation here carries a name that says its settings.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fnn._errors import InputError, UsageError
from fnn._numbers import as_int

__all__ = ["RandomShift", "random_shift"]


def random_shift(pixels):
    """Random translation of images by up to ``pixels`` in each direction, zero-filled: an ``augment`` for ``fit``.

    ``fnn.fit(model, params, data, augment=fnn.data.random_shift(2))`` moves
    every training image of every step by its own random offset. For each
    image, the offsets ``dy`` (down) and ``dx`` (right) are drawn
    independently and uniformly from the integers ``-pixels..pixels``; the
    output is ``y[i, j] = x[i - dy, j - dx]`` where that pixel lies inside
    the image and 0 elsewhere: pixels moved past a border are dropped and the
    vacated ones are zeros (every channel alike). A ``pixels`` as large as the
    image may move it out entirely.

    Args:
      pixels: the largest offset in each direction, an int ``>= 0``; ``0``
        gives the identity (nothing is drawn).

    Returns:
      A ``RandomShift``, ``augment(key, images) -> images`` with
      ``images`` ``[N, H, W, C]`` (channels last, as
      ``fnn.data.load(..., layout="image")`` gives them) and the output of the
      same shape and dtype. Its ``__name__`` is ``"random_shift_<pixels>px"``
      (what ``fit`` records), its ``repr`` ``random_shift(<pixels>)``.

    Raises:
      UsageError: (a ``TypeError``) ``pixels`` is not an integer (``2.0``,
        ``True``, an array with axes).
      InputError: (a ``ValueError``) ``pixels`` is negative.
    """
    return RandomShift(pixels)


@dataclasses.dataclass(frozen=True)
class RandomShift:
    """``augment(key, images) -> images``: :func:`random_shift` by up to :attr:`pixels`; build it with that function.

    Equal settings give equal (and equally hashed) objects, so ``jit`` compiles
    one program for them.

    Attributes:
      pixels: the largest offset in each direction (an int ``>= 0``).
    """

    pixels: int

    def __post_init__(self):
        pixels = as_int(self.pixels)
        if pixels is None:
            raise UsageError(
                f"random_shift: pixels must be an int (the largest offset in each direction), "
                f"got {type(self.pixels).__name__} {self.pixels!r}; pass e.g. random_shift(2)"
            )
        if pixels < 0:
            raise InputError(
                f"random_shift: pixels must be 0 or more (the largest offset in each direction), got {pixels}; "
                "pass 0 for no shift, or a positive int such as random_shift(2)"
            )
        object.__setattr__(self, "pixels", pixels)

    @property
    def __name__(self):
        """``"random_shift_<pixels>px"``: how ``fit`` names the augmentation in a run's configuration."""
        return f"random_shift_{self.pixels}px"

    def __repr__(self):
        return f"random_shift({self.pixels})"

    def __call__(self, key, images):
        """``images`` ``[N, H, W, C]``, each translated by its own offset drawn from ``key`` (see :func:`random_shift`).

        Raises:
          InputError: (a ``ValueError``) ``images`` is not ``[N, H, W, C]``.
        """
        images = jnp.asarray(images)
        if images.ndim != 4:
            hint = " (add the channel axis: x[..., None])" if images.ndim == 3 else ""
            raise InputError(
                f"{self!r}: images must be [N, H, W, C] (channels last), got shape {images.shape}{hint}; "
                "flat rows [N, H * W] come as images from fnn.data.load(..., layout='image')"
            )
        if self.pixels == 0:
            return images
        return _shift(key, images, self.pixels)

    def random_map(self, image, rng):
        """One image ``[H, W, C]`` (NumPy) translated by an offset drawn from ``rng`` (a ``numpy.random.Generator``):
        the per-record form, for :class:`fnn.data.Stream`'s ``transform`` (Grain's ``RandomMap`` protocol).

        Raises:
          InputError: (a ``ValueError``) ``image`` is not ``[H, W, C]``.
        """
        image = np.asarray(image)
        if image.ndim != 3:
            raise InputError(
                f"{self!r}: a record's image must be [H, W, C] (channels last), got shape {image.shape}; "
                "stream images with fnn.data.stream(..., layout='image')"
            )
        if self.pixels == 0:
            return image
        (h, w, _), p = image.shape, self.pixels
        dy, dx = rng.integers(0, 2 * p + 1, size=2)
        return np.pad(image, ((p, p), (p, p), (0, 0)))[dy : dy + h, dx : dx + w]


def _shift(key, images, pixels):
    """Each image of ``[N, H, W, C]`` cut from the zero-padded batch at its own offset ``o`` in ``0..2 pixels``
    (a translation by ``pixels - o``)."""
    n, h, w, c = images.shape
    offsets = jax.random.randint(key, (n, 2), 0, 2 * pixels + 1)
    padded = jnp.pad(images, ((0, 0), (pixels, pixels), (pixels, pixels), (0, 0)))
    return jax.vmap(lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c)))(padded, offsets)
