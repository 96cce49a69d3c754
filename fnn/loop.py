"""Training loop: a whole epoch compiled as one ``jax.lax.scan`` over batches.

The data is placed on the device once. Each epoch is one compiled call that
runs every optimizer step and then evaluates loss and error on the full train
and test sets, so the host only syncs once per epoch (to report metrics).
"""

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from fnn import metrics as _metrics
from fnn import mlp as _mlp
from fnn import ops as _ops
from fnn import train as _train

COLUMNS = ("train_loss", "test_loss", "train_err", "test_err")

#: Rows per evaluation chunk: chunks keep the hidden activations small enough
#: to stay in cache, which on a 2-core CPU beat one 60,000-row matmul.
EVAL_CHUNK = 1000


@dataclasses.dataclass(frozen=True)
class History:
    """Per-epoch metrics of :func:`fit`, each a NumPy array of shape ``[epochs]``.

    ``epoch_s`` is the wall time of each epoch (training and evaluation);
    ``compile_s`` the time to compile the epoch function; ``wall_s`` the whole
    run, compilation included.
    """

    train_loss: np.ndarray
    test_loss: np.ndarray
    train_err: np.ndarray
    test_err: np.ndarray
    epoch_s: np.ndarray
    compile_s: float
    wall_s: float

    def rows(self):
        """One dict per epoch: ``{"epoch": 1, "train_loss": ..., ...}``."""
        return [
            {"epoch": i + 1, **{c: float(getattr(self, c)[i]) for c in COLUMNS}, "epoch_s": float(self.epoch_s[i])}
            for i in range(len(self.train_loss))
        ]


def _split_arrays(data):
    names = ("x_train", "y_train", "x_test", "y_test")
    try:
        arrays = [getattr(data, name) for name in names]
    except AttributeError:
        raise TypeError(
            "data must have x_train, y_train, x_test and y_test arrays (e.g. fnn.data.load(...)), "
            f"got {type(data).__name__}"
        ) from None
    x_train, y_train, x_test, y_test = (np.asarray(a) for a in arrays)
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise ValueError(
                f"{split} split: expected x [N, features] and y [N], got x {x.shape} and y {y.shape}"
            )
    return x_train, y_train, x_test, y_test


def evaluate(apply_fn, params, x, y, *, ops=_ops.custom, chunk=EVAL_CHUNK):
    """Mean cross-entropy and error rate of ``apply_fn(params, x)`` against labels ``y``.

    Rows are processed ``chunk`` at a time (``jax.lax.map``), the remainder in
    one last smaller chunk; the result equals one pass over all rows.
    """
    ops = _ops.get(ops)

    def totals(x, y):
        logits = apply_fn(params, x, ops=ops)
        n = y.shape[0]
        return jnp.stack([ops.cross_entropy(logits, y) * n, _metrics.error_rate(logits, y) * n])

    n = x.shape[0]
    full = n - n % chunk
    total = jnp.zeros(2, jnp.result_type(x.dtype, jnp.float32))
    if full:
        chunks = (x[:full].reshape(-1, chunk, x.shape[1]), y[:full].reshape(-1, chunk))
        total = total + jax.lax.map(lambda xy: totals(*xy), chunks).sum(axis=0)
    if full < n:
        total = total + totals(x[full:], y[full:])
    return total[0] / n, total[1] / n


def make_epoch(apply_fn, optimizer, *, batch_size, ops=_ops.custom, shuffle=False):
    """Builds the (unjitted) epoch function.

    Returns ``epoch(params, opt_state, key, x_train, y_train, x_test, y_test)
    -> (params, opt_state, metrics)``: steps through the training set in
    batches of ``batch_size`` (in data order, or permuted with ``key`` when
    ``shuffle``), a last smaller batch taking any remainder, then evaluates.
    ``metrics`` maps each name in :data:`COLUMNS` to a scalar.
    """
    ops = _ops.get(ops)
    update = _train.optimizer_update(
        lambda params, batch: ops.cross_entropy(apply_fn(params, batch[0], ops=ops), batch[1]), optimizer
    )

    def step(carry, batch):
        params, opt_state, _ = update(*carry, batch)
        return (params, opt_state), None

    def epoch(params, opt_state, key, x, y, x_test, y_test):
        n = x.shape[0]
        if shuffle:
            order = jax.random.permutation(key, n)
            x, y = x[order], y[order]
        full = n - n % batch_size
        batches = (x[:full].reshape(-1, batch_size, x.shape[1]), y[:full].reshape(-1, batch_size))
        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), batches)
        if full < n:
            (params, opt_state), _ = step((params, opt_state), (x[full:], y[full:]))
        train_loss, train_err = evaluate(apply_fn, params, x, y, ops=ops)
        test_loss, test_err = evaluate(apply_fn, params, x_test, y_test, ops=ops)
        return params, opt_state, dict(zip(COLUMNS, (train_loss, test_loss, train_err, test_err)))

    return epoch


def fit(
    params,
    data,
    *,
    epochs: int = 10,
    batch_size: int = 100,
    optimizer=0.5,
    ops=_ops.custom,
    apply_fn: Callable = _mlp.apply,
    shuffle_key=None,
    progress: bool | None = None,
    on_epoch: Callable | None = None,
):
    """Trains ``params`` with mean softmax cross-entropy and reports per-epoch metrics.

    Args:
      params: a parameter pytree for ``apply_fn``; it is donated (do not reuse it).
      data: an object with ``x_train [N, n]``, ``y_train [N]``, ``x_test``,
        ``y_test`` arrays, such as :func:`fnn.data.load` returns.
      epochs: passes over the training set.
      batch_size: examples per step; if it does not divide ``N``, each epoch
        ends with one smaller batch, so every example is used.
      optimizer: a step size for plain SGD, or any ``optax.GradientTransformation``.
      ops: the gradient path, ``fnn.ops.custom`` or ``fnn.ops.autodiff`` (or name).
      apply_fn: ``apply_fn(params, x, *, ops) -> logits``; an MLP by default.
      shuffle_key: ``None`` keeps data order; a ``jax.random`` key shuffles
        every epoch (a new permutation each epoch, folded in from the key).
      progress: show a ``tqdm`` bar; ``None`` shows it only on a terminal.
      on_epoch: called after each epoch as ``on_epoch(row)`` with the dict of
        :meth:`History.rows` for that epoch.

    Returns:
      ``(params, history)``, the trained parameters and a :class:`History`.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    x_train, y_train, x_test, y_test = _split_arrays(data)
    if not isinstance(batch_size, int) or not 1 <= batch_size <= len(x_train):
        raise ValueError(f"batch_size must be an int in [1, {len(x_train)}] (the training set size), got {batch_size!r}")
    start = time.perf_counter()
    optimizer = _train.as_optimizer(optimizer)
    opt_state = optimizer.init(params)
    arrays = jax.device_put((x_train, y_train, x_test, y_test))
    key = jax.random.key(0) if shuffle_key is None else shuffle_key
    epoch_fn = jax.jit(
        make_epoch(apply_fn, optimizer, batch_size=batch_size, ops=ops, shuffle=shuffle_key is not None),
        donate_argnums=(0, 1),
    )
    compiled = epoch_fn.lower(params, opt_state, key, *arrays).compile()
    compile_s = time.perf_counter() - start
    rows, epoch_s = [], []
    bar = tqdm(range(1, epochs + 1), desc="epochs", unit="epoch", disable=None if progress is None else not progress)
    for epoch in bar:
        tic = time.perf_counter()
        params, opt_state, values = compiled(params, opt_state, jax.random.fold_in(key, epoch), *arrays)
        values = {name: float(v) for name, v in values.items()}  # waits for the epoch
        epoch_s.append(time.perf_counter() - tic)
        rows.append(values)
        bar.set_postfix(train_loss=f"{values['train_loss']:.4f}", test_err=f"{values['test_err']:.4f}")
        if on_epoch is not None:
            on_epoch({"epoch": epoch, **values, "epoch_s": epoch_s[-1]})
    bar.close()
    history = History(
        **{c: np.array([row[c] for row in rows]) for c in COLUMNS},
        epoch_s=np.array(epoch_s),
        compile_s=compile_s,
        wall_s=time.perf_counter() - start,
    )
    return params, history
