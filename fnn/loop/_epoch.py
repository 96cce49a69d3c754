"""The compiled parts of an epoch: its optimizer steps as one ``jax.lax.scan``, its end, and evaluation.

A :class:`Plan` holds everything that decides what an epoch computes. From it,
:func:`make_steps` builds the function that runs ``n`` consecutive optimizer
steps (one compiled call, a ``lax.scan``), and :func:`make_epoch_end` the one
that trains the last smaller batch, if any, and evaluates. Both carry
the epoch's running sums (:func:`new_epoch_sums`) through the steps: the sums behind the notes'
training metrics, and the divergence watch.

The divergence watch: a step *diverges* when its loss is NaN or infinite, or
when ``|loss| > divergence_factor * max(|first loss|, 1)``, the first loss
being the loss of the run's first step (a loss that grows by that factor is
no longer training; the floor of 1 keeps a run that starts near zero loss
from being stopped by noise). The first diverging step is recorded in the
epoch's sums on the device, without a host sync per step.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from fnn import _precision, parallel
from fnn._order import epoch_order
from fnn.data._stream import last_batch_rows
from fnn.module import Loss, Module
from fnn.train import DynamicLossScale, all_finite

#: Rows per evaluation chunk: chunks keep the hidden activations small enough
#: to stay in cache, which on a 2-core CPU beat one 60,000-row matmul.
EVAL_CHUNK = 1000


def steps_per_epoch(n_train, batch_size):
    """Optimizer steps per epoch of :func:`fnn.fit`: ``n_train // batch_size`` full batches and, when
    ``batch_size`` does not divide ``n_train``, one smaller last batch. What a learning-rate schedule needs before
    training starts, e.g. ``optax.cosine_decay_schedule(lr, epochs * steps_per_epoch(n, batch_size))``."""
    return n_train // batch_size + (last_batch_rows(n_train, batch_size) > 0)


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """What one epoch computes (see :func:`fnn.fit` for each field's meaning).

    ``key_impl`` is the implementation of the run's key (its data is part of
    the carried state); ``precision`` that of the products (``None``: the
    backend's default); ``step`` the optimizer step scanned over each epoch,
    ``step(state, batch) -> (state, metrics)`` (:func:`fnn.train.train_step`
    with ``accumulate``, or the user's own: ``own_step``); ``divergence_factor`` is ``inf`` when only non-finite
    losses count as divergence. ``streamed``: the steps are given the batches
    they train on (from a :class:`fnn.data.Stream`, whose per-record
    ``transform`` is recorded), not the whole training split.
    ``loss_scale``: the run's :class:`fnn.train.DynamicLossScale` at its
    start (:func:`fnn.train.loss_scale_for`), ``None`` for none.
    """

    model: Module
    loss: Loss
    optimizer: optax.GradientTransformation
    path: str
    batch_size: int
    n_train: int
    key_impl: str
    shuffle: bool
    augment: Callable | None
    mesh: jax.sharding.Mesh
    train_metrics: str
    divergence_factor: float
    streamed: bool = False
    transform: Callable | None = None
    precision: str | None = None
    step: Callable | None = None
    own_step: bool = False
    accumulate: int = 1
    sharding: str | dict = "replicated"
    loss_scale: DynamicLossScale | None = None

    @property
    def full_batches(self):
        """Full batches per epoch."""
        return self.n_train // self.batch_size

    @property
    def steps_per_epoch(self):
        """Optimizer steps per epoch: the full batches and the last smaller one, if any."""
        return steps_per_epoch(self.n_train, self.batch_size)


def _batches(a, size):
    """The first ``len(a) - len(a) % size`` rows of ``a`` as ``[len // size, size, ...]``."""
    full = a.shape[0] - a.shape[0] % size
    return a[:full].reshape(-1, size, *a.shape[1:])


def _splitter(mesh):
    """``split(tree, rows)``: constrains a batch of ``rows`` rows to be split over ``mesh``'s devices.

    A batch whose rows do not divide evenly is computed whole on every
    device, wherever its rows come from (the arrays, all on every device, or
    a stream's batch, split over them): one order of every sum, so both give
    the same result bit for bit.
    """

    def split(tree, rows):
        if mesh is None or mesh.size == 1:
            return tree
        sharding = parallel.replicated(mesh) if rows % parallel.data_shards(mesh) else parallel.batch_sharding(mesh)
        return jax.lax.with_sharding_constraint(tree, sharding)

    return split


def evaluate(model, loss, params, x, y, *, state=(), chunk=EVAL_CHUNK, mesh=None):
    """Mean loss and error rate of ``model`` on ``(x, y)``; the error is ``None`` if ``loss`` has none.

    Rows are processed ``chunk`` at a time (``jax.lax.map``), the remainder in
    one last smaller chunk; the result equals one pass over all rows. With a
    ``mesh``, each chunk is split over its devices. The model runs in
    evaluation mode, with its ``state`` (``()`` for a model without).
    """
    split = _splitter(mesh)
    dtype = jnp.result_type(jnp.float32, *(a.dtype for a in jax.tree.leaves(params)))  # bfloat16 sums in float32

    def totals(xy):
        x, y = split(xy, xy[0].shape[0])
        outputs, _ = model.apply(params, x, state=state, train=False)
        n = y.shape[0]
        error = loss.error(outputs, y) if loss.error is not None else 0.0
        return jnp.stack([loss.apply(outputs, y).astype(dtype), jnp.asarray(error, dtype)]) * n

    n = x.shape[0]
    full = n - n % chunk
    total = jnp.zeros(2, dtype)
    if full:
        total = total + jax.lax.map(totals, (_batches(x, chunk), _batches(y, chunk))).sum(axis=0)
    if full < n:
        total = total + totals((x[full:], y[full:]))
    return total[0] / n, (total[1] / n if loss.error is not None else None)


def new_epoch_sums(first_loss=float("nan")):
    """An epoch's running record before its first step.

    ``bad_step``/``bad_loss``: the first diverging step (-1 while there is
    none) and its loss; ``loss_sum``/``error_sum``: the sums over the rows
    trained so far of each batch's loss and error rate, from the forward pass
    before its update (the notes' training metrics); ``first_loss``: the
    run's first loss (NaN until the run's first step), which the divergence
    watch compares with; ``skipped``: the steps a loss scale skipped (their
    gradients not finite, :class:`fnn.train.DynamicLossScale`).
    """
    return {
        "bad_step": jnp.int32(-1),
        "bad_loss": jnp.float32(0),
        "loss_sum": jnp.float32(0),
        "error_sum": jnp.float32(0),
        "first_loss": jnp.float32(first_loss),
        "skipped": jnp.int32(0),
    }


def _count(epoch_sums, metrics, step, rows, factor):
    """Adds one step's ``metrics`` (its batch has ``rows`` rows) to the epoch's sums and watches for divergence."""
    value = metrics["loss"].astype(jnp.float32)
    first = jnp.where(jnp.isnan(epoch_sums["first_loss"]), value, epoch_sums["first_loss"])
    diverged = ~jnp.isfinite(value) | (jnp.abs(value) > factor * jnp.maximum(jnp.abs(first), 1.0))
    first_bad = (epoch_sums["bad_step"] < 0) & diverged
    return {
        "bad_step": jnp.where(first_bad, step, epoch_sums["bad_step"]).astype(jnp.int32),
        "bad_loss": jnp.where(first_bad, value, epoch_sums["bad_loss"]),
        "loss_sum": epoch_sums["loss_sum"] + rows * value,
        "error_sum": epoch_sums["error_sum"] + rows * jnp.asarray(metrics.get("error", 0.0), jnp.float32),
        "first_loss": first,
        "skipped": epoch_sums["skipped"] + jnp.asarray(metrics.get("skipped", False), jnp.int32),
    }


def _rows(a, order, start, size):
    """Rows ``start .. start + size`` of ``a`` in ``order`` (``None``: data order)."""
    if order is None:
        return jax.lax.dynamic_slice_in_dim(a, start, size)
    return a[jax.lax.dynamic_slice_in_dim(order, start, size)]


def make_steps(plan, n_steps, rows=None):
    """Builds the (unjitted) function that runs ``n_steps`` optimizer steps of an epoch.

    Returns ``steps(state, epoch_sums, epoch, first, x, y) -> (state, epoch_sums)``,
    ``state`` a :class:`fnn.train.TrainState`: steps ``first .. first +
    n_steps - 1`` of the epoch, each ``plan.step(state, batch)``, step ``i``
    on rows ``i * batch_size`` onwards (``rows`` of them, ``batch_size`` by
    default) in data order, or with ``plan.shuffle`` in the epoch's
    permutation ``permutation(fold_in(key, epoch), N)``, the run's key being
    ``state.key``. With ``plan.streamed``, ``x`` and ``y`` are instead the
    batches themselves, ``[n_steps, >= rows, ...]``, in that order (a batch's
    rows past ``rows`` are padding, dropped). ``plan.augment(key, x)``, if
    given, transforms each step's inputs with the key ``fold_in(fold_in(key,
    epoch), step)`` (epochs count from 1; the step's own randomness draws from
    ``fold_in(key, 0)``: :meth:`fnn.train.TrainState.step_key`). One step is
    compiled without a loop (see ``steps_per_call`` in :func:`fnn.fit`).
    """
    rows = plan.batch_size if rows is None else rows
    split = _splitter(plan.mesh)

    def steps(state, epoch_sums, epoch, first, x, y):
        run_key = jax.random.wrap_key_data(state.key, impl=state.key_impl)
        epoch_key = jax.random.fold_in(run_key, epoch)
        order = epoch_order(run_key, epoch, x.shape[0]) if plan.shuffle and not plan.streamed else None

        def step(carry, i):
            state, epoch_sums = carry
            if plan.streamed:
                inputs, targets = x[i, :rows], y[i, :rows]
            else:
                start = (first + i) * plan.batch_size
                inputs, targets = _rows(x, order, start, rows), _rows(y, order, start, rows)
            if plan.augment is not None:
                inputs = plan.augment(jax.random.fold_in(epoch_key, first + i), inputs)
            state, metrics = plan.step(state, split((inputs, targets), rows))
            return (state, _count(epoch_sums, metrics, first + i, rows, plan.divergence_factor)), None

        if n_steps == 1:  # no loop at all: XLA:CPU compiles some convolutions in a loop body to slow generic code
            carry, _ = step((state, epoch_sums), jnp.int32(0))
        else:
            carry, _ = jax.lax.scan(step, (state, epoch_sums), jnp.arange(n_steps))
        return carry

    return steps


def make_epoch_end(plan):
    """Builds the (unjitted) end of an epoch: the last smaller batch, if any, then the epoch's metrics.

    Returns ``end(state, epoch_sums, epoch, x, y, x_test, y_test) -> (state, epoch_sums, metrics)``, ``state`` a
    :class:`fnn.train.TrainState`, ``metrics`` mapping each name in
    :data:`fnn.loop._history.COLUMNS` to a scalar (the errors to ``None`` when the loss
    has no error rate) and ``"params_finite"`` to whether every parameter is
    finite. The test set is evaluated at the epoch's parameters; the training
    metrics are the mean over the epoch's examples of each batch's loss and
    error before its update (``plan.train_metrics == "batches"``, the notes'
    way, free) or an evaluation of the whole training set at the epoch's
    parameters (``"full"``, a third more work for the notes' recipe).
    """
    remainder = last_batch_rows(plan.n_train, plan.batch_size)
    last = make_steps(plan, 1, rows=remainder) if remainder else None
    model, loss, n_train = plan.model, plan.loss, plan.n_train

    def end(state, epoch_sums, epoch, x, y, x_test, y_test):
        if last is not None:
            state, epoch_sums = last(state, epoch_sums, epoch, plan.full_batches, x, y)
        with _precision.training(plan.precision):
            evaluated = {"state": state.model_state, "mesh": plan.mesh}
            if plan.train_metrics == "full":
                train_loss, train_err = evaluate(model, loss, state.params, x, y, **evaluated)
            else:
                train_loss = epoch_sums["loss_sum"] / n_train
                train_err = epoch_sums["error_sum"] / n_train if loss.error is not None else None
            test_loss, test_err = evaluate(model, loss, state.params, x_test, y_test, **evaluated)
        metrics = {"train_loss": train_loss, "test_loss": test_loss, "train_err": train_err, "test_err": test_err}
        return state, epoch_sums, {**metrics, "params_finite": all_finite((state.params, state.model_state))}

    return end
