"""The order in which a shuffled run visits its training examples, written once for arrays and streams."""

import jax

__all__ = ["epoch_order"]


def epoch_order(run_key, epoch, n):
    """The order in which epoch ``epoch`` of a shuffled run visits ``n`` examples: ``permutation(fold_in(run_key,
    epoch), n)``, inside ``fit``'s compiled steps (arrays) and on the host (a stream) alike."""
    return jax.random.permutation(jax.random.fold_in(run_key, epoch), n)
