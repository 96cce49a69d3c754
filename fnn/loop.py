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

from fnn import losses as _losses
from fnn import train as _train
from fnn.module import Loss
from fnn.paths import check_path

COLUMNS = ("train_loss", "test_loss", "train_err", "test_err")

#: Rows per evaluation chunk: chunks keep the hidden activations small enough
#: to stay in cache, which on a 2-core CPU beat one 60,000-row matmul.
EVAL_CHUNK = 1000


@dataclasses.dataclass(frozen=True)
class History:
    """Per-epoch metrics of :func:`fit`, each a NumPy array of shape ``[epochs]``.

    ``train_err`` and ``test_err`` are ``None`` when the loss has no error
    rate (e.g. ``mse``). ``epoch_s`` is the wall time of each epoch (training
    and evaluation);
    ``compile_s`` the time to compile the epoch function; ``wall_s`` the whole
    run, compilation included.
    """

    train_loss: np.ndarray
    test_loss: np.ndarray
    train_err: np.ndarray | None
    test_err: np.ndarray | None
    epoch_s: np.ndarray
    compile_s: float
    wall_s: float

    def rows(self):
        """One dict per epoch: ``{"epoch": 1, "train_loss": ..., ...}``."""
        columns = [c for c in COLUMNS if getattr(self, c) is not None]
        return [
            {"epoch": i + 1, **{c: float(getattr(self, c)[i]) for c in columns}, "epoch_s": float(self.epoch_s[i])}
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
        if x.ndim < 1 or y.ndim < 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"{split} split: expected x [N, ...] and targets [N, ...] with the same N, got x {x.shape} and y {y.shape}"
            )
    return x_train, y_train, x_test, y_test


def _batches(a, size):
    """The first ``len(a) - len(a) % size`` rows of ``a`` as ``[len // size, size, ...]``."""
    full = a.shape[0] - a.shape[0] % size
    return a[:full].reshape(-1, size, *a.shape[1:])


def evaluate(model, loss, params, x, y, *, chunk=EVAL_CHUNK):
    """Mean loss and error rate of ``model`` on ``(x, y)``; the error is ``None`` if ``loss`` has none.

    Rows are processed ``chunk`` at a time (``jax.lax.map``), the remainder in
    one last smaller chunk; the result equals one pass over all rows.
    """

    def totals(x, y):
        outputs = model.apply(params, x)
        n = y.shape[0]
        error = loss.error(outputs, y) if loss.error is not None else 0.0
        return jnp.stack([loss.apply(outputs, y) * n, error * n])

    n = x.shape[0]
    full = n - n % chunk
    total = jnp.zeros(2, jnp.result_type(x.dtype, jnp.float32))
    if full:
        total = total + jax.lax.map(lambda xy: totals(*xy), (_batches(x, chunk), _batches(y, chunk))).sum(axis=0)
    if full < n:
        total = total + totals(x[full:], y[full:])
    return total[0] / n, (total[1] / n if loss.error is not None else None)


def make_epoch(model, loss, optimizer, *, batch_size, path="custom", shuffle=False):
    """Builds the (unjitted) epoch function.

    Returns ``epoch(params, opt_state, key, x_train, y_train, x_test, y_test)
    -> (params, opt_state, metrics)``: steps through the training set in
    batches of ``batch_size`` (in data order, or permuted with ``key`` when
    ``shuffle``), a last smaller batch taking any remainder, then evaluates.
    ``metrics`` maps each name in :data:`COLUMNS` to a scalar (the errors to
    ``None`` when the loss has no error rate).
    """
    update = _train.optimizer_update(model, loss, optimizer, path=path)

    def step(carry, batch):
        params, opt_state, _ = update(*carry, batch)
        return (params, opt_state), None

    def epoch(params, opt_state, key, x, y, x_test, y_test):
        n = x.shape[0]
        if shuffle:
            order = jax.random.permutation(key, n)
            x, y = x[order], y[order]
        full = n - n % batch_size
        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), (_batches(x, batch_size), _batches(y, batch_size)))
        if full < n:
            (params, opt_state), _ = step((params, opt_state), (x[full:], y[full:]))
        train_loss, train_err = evaluate(model, loss, params, x, y)
        test_loss, test_err = evaluate(model, loss, params, x_test, y_test)
        return params, opt_state, dict(zip(COLUMNS, (train_loss, test_loss, train_err, test_err)))

    return epoch


def fit(
    model,
    params,
    data,
    *,
    loss: Loss = _losses.cross_entropy,
    path: str = "custom",
    epochs: int = 10,
    batch_size: int = 100,
    optimizer=0.5,
    shuffle_key=None,
    progress: bool | None = None,
    on_epoch: Callable | None = None,
):
    """Trains ``model`` from ``params`` on ``loss`` and reports per-epoch metrics.

    Args:
      model: any fnn module, e.g. ``fnn.nn.mlp([784, 500, 10])``.
      params: its parameter pytree (from ``model.init``); it is donated (do not reuse it).
      data: an object with ``x_train [N, ...]``, ``y_train [N, ...]``,
        ``x_test``, ``y_test`` arrays, such as :func:`fnn.data.load` returns.
      loss: any fnn loss; mean softmax cross-entropy by default.
      path: the gradient path, one of :data:`fnn.PATHS`.
      epochs: passes over the training set.
      batch_size: examples per step; if it does not divide ``N``, each epoch
        ends with one smaller batch, so every example is used.
      optimizer: a step size for plain SGD, or any ``optax.GradientTransformation``.
      shuffle_key: ``None`` keeps data order; a ``jax.random`` key shuffles
        every epoch (a new permutation each epoch, folded in from the key).
      progress: show a ``tqdm`` bar; ``None`` shows it only on a terminal.
      on_epoch: called after each epoch as ``on_epoch(row)`` with the dict of
        :meth:`History.rows` for that epoch.

    Returns:
      ``(params, history)``, the trained parameters and a :class:`History`.
    """
    check_path(path)
    if not isinstance(loss, Loss):
        raise TypeError(f"loss must be an fnn loss (e.g. fnn.losses.cross_entropy), got {type(loss).__name__}")
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
        make_epoch(model, loss, optimizer, batch_size=batch_size, path=path, shuffle=shuffle_key is not None),
        donate_argnums=(0, 1),
    )
    compiled = epoch_fn.lower(params, opt_state, key, *arrays).compile()
    compile_s = time.perf_counter() - start
    rows, epoch_s = [], []
    bar = tqdm(range(1, epochs + 1), desc="epochs", unit="epoch", disable=None if progress is None else not progress)
    for epoch in bar:
        tic = time.perf_counter()
        params, opt_state, values = compiled(params, opt_state, jax.random.fold_in(key, epoch), *arrays)
        values = {name: float(v) for name, v in values.items() if v is not None}  # waits for the epoch
        epoch_s.append(time.perf_counter() - tic)
        rows.append(values)
        bar.set_postfix({name: f"{v:.4f}" for name, v in values.items() if name in ("train_loss", "test_err")})
        if on_epoch is not None:
            on_epoch({"epoch": epoch, **values, "epoch_s": epoch_s[-1]})
    bar.close()
    history = History(
        **{c: np.array([row[c] for row in rows]) if c in rows[0] else None for c in COLUMNS},
        epoch_s=np.array(epoch_s),
        compile_s=compile_s,
        wall_s=time.perf_counter() - start,
    )
    return params, history
