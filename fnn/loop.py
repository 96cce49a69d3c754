"""Training loop: an epoch's optimizer steps compiled as one ``jax.lax.scan``, on one device or many.

The data is checked on the host (:mod:`fnn.validate`), then placed on the
devices once. Each epoch is two compiled calls: the scan over its full
batches (cut into segments when checkpoints are saved every N steps), and one
that trains the last smaller batch, if any, and evaluates the test set. The
training metrics are the notes': each batch's loss and error before its
update, from the forward pass the gradient needs, averaged over the epoch
(``train_metrics="full"`` re-evaluates the training set instead). The host
syncs once per epoch, to report metrics.

Every step watches its loss: the first non-finite one is carried through the
scan (no host sync per step) and stops training with :class:`TrainingDiverged`
at the end of the epoch, naming the epoch and the step.

With several devices (:mod:`fnn.parallel`) each batch is split over them and
the parameters are replicated; XLA reduces the gradients. With a checkpoint
folder (:mod:`fnn.checkpoint`) the run can be resumed from its last
checkpoint and ends with the same parameters and history, bit for bit, as an
uninterrupted run on the same machine.
"""

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from fnn import losses as _losses
from fnn import parallel, validate
from fnn import train as _train
from fnn.module import Loss
from fnn.paths import check_pair, check_path

__all__ = [
    "COLUMNS",
    "EVAL_CHUNK",
    "History",
    "TrainingDiverged",
    "evaluate",
    "fit",
    "make_epoch_end",
    "make_steps",
    "new_tally",
]

COLUMNS = ("train_loss", "test_loss", "train_err", "test_err")

#: Rows per evaluation chunk: chunks keep the hidden activations small enough
#: to stay in cache, which on a 2-core CPU beat one 60,000-row matmul.
EVAL_CHUNK = 1000


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and the step."""


@dataclasses.dataclass(frozen=True)
class History:
    """Per-epoch metrics of :func:`fit`, each a NumPy array of shape ``[epochs]``.

    ``train_err`` and ``test_err`` are ``None`` when the loss has no error
    rate (e.g. ``mse``). ``epoch_s`` is the wall time of each epoch (training
    and evaluation); ``compile_s`` the time to compile the epoch's functions;
    ``wall_s`` the whole run, compilation included. A resumed run's history
    starts with the epochs restored from the checkpoint.
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

    @classmethod
    def from_rows(cls, rows, *, compile_s, wall_s):
        """The history of the epochs in ``rows`` (dicts as :meth:`rows` makes them)."""
        columns = {c: np.array([row[c] for row in rows]) if c in rows[0] else None for c in COLUMNS}
        return cls(**columns, epoch_s=np.array([row["epoch_s"] for row in rows]), compile_s=compile_s, wall_s=wall_s)


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
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


def _batches(a, size):
    """The first ``len(a) - len(a) % size`` rows of ``a`` as ``[len // size, size, ...]``."""
    full = a.shape[0] - a.shape[0] % size
    return a[:full].reshape(-1, size, *a.shape[1:])


def _splitter(mesh):
    """``split(tree, rows)``: constrains a batch of ``rows`` rows to be split over ``mesh``'s devices.

    A batch whose rows do not divide evenly is left to XLA (computed whole on
    every device): the result is the same.
    """

    def split(tree, rows):
        if mesh is None or mesh.size == 1 or rows % mesh.size:
            return tree
        return jax.lax.with_sharding_constraint(tree, parallel.batch_sharding(mesh))

    return split


def evaluate(model, loss, params, x, y, *, chunk=EVAL_CHUNK, mesh=None):
    """Mean loss and error rate of ``model`` on ``(x, y)``; the error is ``None`` if ``loss`` has none.

    Rows are processed ``chunk`` at a time (``jax.lax.map``), the remainder in
    one last smaller chunk; the result equals one pass over all rows. With a
    ``mesh``, each chunk is split over its devices.
    """
    split = _splitter(mesh)

    def totals(xy):
        x, y = split(xy, xy[0].shape[0])
        outputs = model.apply(params, x)
        n = y.shape[0]
        error = loss.error(outputs, y) if loss.error is not None else 0.0
        return jnp.stack([loss.apply(outputs, y) * n, error * n])

    n = x.shape[0]
    full = n - n % chunk
    total = jnp.zeros(2, jnp.result_type(x.dtype, jnp.float32))
    if full:
        total = total + jax.lax.map(totals, (_batches(x, chunk), _batches(y, chunk))).sum(axis=0)
    if full < n:
        total = total + totals((x[full:], y[full:]))
    return total[0] / n, (total[1] / n if loss.error is not None else None)


def _rows(a, order, start, size):
    """Rows ``start .. start + size`` of ``a`` in ``order`` (``None``: data order)."""
    if order is None:
        return jax.lax.dynamic_slice_in_dim(a, start, size)
    return a[jax.lax.dynamic_slice_in_dim(order, start, size)]


def new_tally():
    """An epoch's running record before its first step: no bad step, nothing summed.

    ``bad_step``/``bad_loss``: the first step whose loss is not finite (-1
    while there is none) and that loss; ``loss_sum``/``error_sum``: the sums
    over the rows trained so far of each batch's loss and error rate, from
    the forward pass before its update (the notes' training metrics).
    """
    return {
        "bad_step": jnp.int32(-1),
        "bad_loss": jnp.float32(0),
        "loss_sum": jnp.float32(0),
        "error_sum": jnp.float32(0),
    }


def _count(tally, metrics, step, rows):
    """Adds one step's ``metrics`` (its batch has ``rows`` rows) to the tally."""
    value = metrics["loss"]
    first_bad = (tally["bad_step"] < 0) & ~jnp.isfinite(value)
    return {
        "bad_step": jnp.where(first_bad, step, tally["bad_step"]).astype(jnp.int32),
        "bad_loss": jnp.where(first_bad, value, tally["bad_loss"]).astype(jnp.float32),
        "loss_sum": (tally["loss_sum"] + rows * value).astype(jnp.float32),
        "error_sum": (tally["error_sum"] + rows * metrics.get("error", 0.0)).astype(jnp.float32),
    }


def make_steps(
    model,
    loss,
    optimizer,
    *,
    batch_size,
    n_steps,
    rows=None,
    path="custom",
    key_impl="threefry2x32",
    shuffle=False,
    augment=None,
    mesh=None,
):
    """Builds the (unjitted) function that runs ``n_steps`` optimizer steps of an epoch.

    Returns ``steps(params, opt_state, tally, key_data, epoch, first, x, y) ->
    (params, opt_state, tally)``: steps ``first .. first + n_steps - 1`` of the
    epoch, step ``i`` on rows ``i * batch_size`` onwards (``rows`` of them,
    ``batch_size`` by default) in data order, or with ``shuffle`` in the
    epoch's permutation ``permutation(fold_in(key, epoch), N)``, the run's key
    being ``key_data`` of implementation ``key_impl``. ``augment(key, x) -> x``,
    if given, transforms each step's inputs with the key
    ``fold_in(fold_in(key, epoch), step)``. ``tally`` (see :func:`new_tally`)
    records the first step whose loss is not finite and sums the batches'
    losses and errors.
    """
    update = _train.optimizer_update(model, loss, optimizer, path=path)
    rows = batch_size if rows is None else rows
    split = _splitter(mesh)

    def steps(params, opt_state, tally, key_data, epoch, first, x, y):
        epoch_key = jax.random.fold_in(jax.random.wrap_key_data(key_data, impl=key_impl), epoch)
        order = jax.random.permutation(epoch_key, x.shape[0]) if shuffle else None

        def step(carry, i):
            params, opt_state, tally = carry
            start = (first + i) * batch_size
            inputs = _rows(x, order, start, rows)
            if augment is not None:
                inputs = augment(jax.random.fold_in(epoch_key, first + i), inputs)
            batch = split((inputs, _rows(y, order, start, rows)), rows)
            params, opt_state, metrics = update(params, opt_state, batch)
            return (params, opt_state, _count(tally, metrics, first + i, rows)), None

        (params, opt_state, tally), _ = jax.lax.scan(step, (params, opt_state, tally), jnp.arange(n_steps))
        return params, opt_state, tally

    return steps


def make_epoch_end(
    model,
    loss,
    optimizer,
    *,
    batch_size,
    n_train,
    path="custom",
    key_impl="threefry2x32",
    shuffle=False,
    augment=None,
    mesh=None,
    train_metrics="batches",
):
    """Builds the (unjitted) end of an epoch: the last smaller batch, if any, then the epoch's metrics.

    Returns ``end(params, opt_state, tally, key_data, epoch, x, y, x_test, y_test)
    -> (params, opt_state, tally, metrics)``, ``metrics`` mapping each name in
    :data:`COLUMNS` to a scalar (the errors to ``None`` when the loss has no
    error rate). ``key_impl``, ``shuffle`` and ``augment`` are as in
    :func:`make_steps`. The test set is evaluated at the epoch's parameters; the
    training metrics are the mean over the epoch's examples of each batch's
    loss and error before its update (``train_metrics="batches"``, the notes'
    way, free) or an evaluation of the whole training set at the epoch's
    parameters (``"full"``, a third more work for the notes' recipe).
    """
    full, remainder = divmod(n_train, batch_size)
    last = None
    if remainder:
        last = make_steps(
            model,
            loss,
            optimizer,
            batch_size=batch_size,
            n_steps=1,
            rows=remainder,
            path=path,
            key_impl=key_impl,
            shuffle=shuffle,
            augment=augment,
            mesh=mesh,
        )

    def end(params, opt_state, tally, key_data, epoch, x, y, x_test, y_test):
        if last is not None:
            params, opt_state, tally = last(params, opt_state, tally, key_data, epoch, full, x, y)
        if train_metrics == "full":
            train_loss, train_err = evaluate(model, loss, params, x, y, mesh=mesh)
        else:
            train_loss = tally["loss_sum"] / n_train
            train_err = tally["error_sum"] / n_train if loss.error is not None else None
        test_loss, test_err = evaluate(model, loss, params, x_test, y_test, mesh=mesh)
        return params, opt_state, tally, dict(zip(COLUMNS, (train_loss, test_loss, train_err, test_err)))

    return end


def _check_int(name, value, low, high=None, hint=""):
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an int {bound}{hint}, got {value!r}")


def _key_parts(shuffle_key):
    """``(key_data, impl)`` of the run's key: ``shuffle_key``, or ``jax.random.key(0)`` if None."""
    key = jax.random.key(0) if shuffle_key is None else jnp.asarray(shuffle_key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key), jax.random.key_impl(key)
    if key.dtype == jnp.uint32 and key.shape == (2,):
        return key, "threefry2x32"
    raise TypeError(f"shuffle_key must be a jax.random key (jax.random.key(seed)), got {key.dtype} {key.shape}")


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
    devices=None,
    checkpoint_dir=None,
    checkpoint_every: int = 1,
    checkpoint_every_steps: int | None = None,
    keep: int = 3,
    resume: bool = False,
    train_metrics: str = "batches",
    augment: Callable | None = None,
):
    """Trains ``model`` from ``params`` on ``loss`` and reports per-epoch metrics.

    Args:
      model: any fnn module, e.g. ``fnn.nn.mlp([784, 500, 10])``.
      params: its parameter pytree (from ``model.init``); it is copied to the devices, not changed.
      data: an object with ``x_train [N, ...]``, ``y_train [N, ...]``,
        ``x_test``, ``y_test`` arrays, such as :func:`fnn.data.load` returns.
        Checked before training: no empty split, as many targets as inputs,
        finite floating inputs, and targets the loss can take (class ids in
        ``[0, k)`` for a model with ``k`` outputs, 0/1 labels, finite values).
      loss: any fnn loss; mean softmax cross-entropy by default.
      path: the gradient path, one of :data:`fnn.PATHS`.
      epochs: passes over the training set (the total, counting restored ones).
      batch_size: examples per step; if it does not divide ``N``, each epoch
        ends with one smaller batch, so every example is used. With several
        devices it must split evenly over them (the last smaller batch need
        not: it is computed whole on each device).
      optimizer: a step size for plain SGD, or any ``optax.GradientTransformation``.
      shuffle_key: ``None`` keeps data order; a ``jax.random`` key shuffles
        every epoch (epoch ``e`` uses ``permutation(fold_in(key, e), N)``).
      progress: show a ``tqdm`` bar; ``None`` shows it only on a terminal.
      on_epoch: called after each epoch as ``on_epoch(row)`` with the dict of
        :meth:`History.rows` for that epoch.
      devices: ``None`` for the default device; an int ``n`` for the first
        ``n`` devices, or a sequence of devices (``jax.devices()`` for every
        device of every process), to split each batch over them.
      checkpoint_dir: a folder to save checkpoints in (needs orbax-checkpoint).
      checkpoint_every: save after every this many epochs (and after the last).
      checkpoint_every_steps: also save after every this many steps within an epoch.
      keep: how many checkpoints to keep.
      resume: continue from the newest checkpoint in ``checkpoint_dir``, if
        any; the run's configuration must match the checkpoint's.
      augment: ``augment(key, x) -> x``, applied inside the compiled step to
        each training batch's inputs (data augmentation); the key of step
        ``s`` of epoch ``e`` is ``fold_in(fold_in(run key, e), s)``, the run
        key being ``shuffle_key`` or ``jax.random.key(0)``, so augmented runs
        repeat and resume exactly. Test inputs are never augmented.
      train_metrics: ``"batches"``: an epoch's train loss and error are the
        mean over its examples of each batch's loss and error before that
        batch's update (the notes' way: free, from the forward pass the
        gradient needs); ``"full"``: the whole training set evaluated at the
        epoch's end. The test set is always evaluated at the epoch's end.

    Returns:
      ``(params, history)``, the trained parameters and a :class:`History`.

    Raises:
      fnn.validate.DataError: data or parameters that cannot train this model.
      TrainingDiverged: the loss became NaN or infinite (no checkpoint is
        saved after that; the last good one is kept).
    """
    start = time.perf_counter()
    check_pair(model, loss)
    check_path(path)
    _check_int("epochs", epochs, 1)
    splits = _split_arrays(data)
    validate.check_splits(splits, model)
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    n_train = x_train.shape[0]
    _check_int("batch_size", batch_size, 1, n_train, f" (the training set has {n_train} examples)")
    validate.check_params(model, params, x_train.shape[1:])
    validate.check_targets(model, params, loss, splits)
    mesh = parallel.data_mesh(1 if devices is None else devices)
    if batch_size % mesh.size:
        raise ValueError(
            f"batch_size {batch_size} does not split evenly over {mesh.size} devices; "
            f"use a multiple of {mesh.size} or a number of devices that divides {batch_size}"
        )
    full_batches = n_train // batch_size
    segment = full_batches
    if checkpoint_every_steps is not None:
        _check_int("checkpoint_every_steps", checkpoint_every_steps, 1)
        segment = min(checkpoint_every_steps, full_batches) or full_batches
    _check_int("checkpoint_every", checkpoint_every, 1)
    if train_metrics not in ("batches", "full"):
        raise ValueError(f"train_metrics must be 'batches' or 'full', got {train_metrics!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from")

    optimizer = _train.as_optimizer(optimizer)
    key_data, key_impl = _key_parts(shuffle_key)
    state = {"params": params, "opt_state": optimizer.init(params), "key": key_data, "tally": new_tally()}
    state = parallel.replicate(state, mesh)
    arrays = parallel.replicate((x_train, y_train, x_test, y_test), mesh)
    config = {
        "model": repr(model),
        "loss": loss.name,
        "path": path,
        "batch_size": batch_size,
        "n_train": n_train,
        "n_test": int(x_test.shape[0]),
        "shuffle": shuffle_key is not None,
        "train_metrics": train_metrics,
        "augment": None if augment is None else getattr(augment, "__name__", repr(augment)),
    }
    steps_per_epoch = full_batches + (n_train % batch_size > 0)
    first_epoch, first_step, rows = 1, 0, []
    checkpoints = None
    if checkpoint_dir is not None:
        from fnn.checkpoint import CheckpointError, Checkpoints

        checkpoints = Checkpoints(checkpoint_dir, keep=keep)
        latest = checkpoints.latest()
        if latest is not None and not resume:
            checkpoints.close()
            raise CheckpointError(
                f"{checkpoint_dir} already holds checkpoints (newest {latest}); pass resume=True to continue "
                "that run, or use an empty folder"
            )
        if latest is not None:
            state, meta = checkpoints.restore(latest, state)
            differ = {k: (meta["config"].get(k), v) for k, v in config.items() if meta["config"].get(k) != v}
            if differ:
                checkpoints.close()
                raise CheckpointError(
                    f"checkpoint {latest} in {checkpoint_dir} is from a different run; "
                    + "; ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, (a, b) in differ.items())
                )
            first_epoch, first_step, rows = meta["next_epoch"], meta["next_step"], meta["history"]

    donate = {"donate_argnums": (0, 1)}
    out = {"out_shardings": parallel.replicated(mesh)}
    kw = {
        "batch_size": batch_size,
        "path": path,
        "key_impl": key_impl,
        "shuffle": shuffle_key is not None,
        "augment": augment,
        "mesh": mesh,
    }
    compiled = {}

    def steps_fn(n):
        if n not in compiled:
            fn = jax.jit(make_steps(model, loss, optimizer, n_steps=n, **kw), **donate, **out)
            compiled[n] = fn.lower(
                state["params"], state["opt_state"], state["tally"], state["key"], 1, 0, *arrays[:2]
            ).compile()
        return compiled[n]

    end_fn = jax.jit(
        make_epoch_end(model, loss, optimizer, n_train=n_train, train_metrics=train_metrics, **kw), **donate, **out
    )
    end_fn = end_fn.lower(state["params"], state["opt_state"], state["tally"], state["key"], 1, *arrays).compile()
    for n in {segment, full_batches % segment} - {0}:
        steps_fn(n)
    fresh_tally = parallel.replicate(new_tally(), mesh)
    compile_s = time.perf_counter() - start

    def save(epoch, step, next_epoch, next_step, tally):
        meta = {"next_epoch": next_epoch, "next_step": next_step, "history": rows, "config": config}
        number = (epoch - 1) * steps_per_epoch + step
        checkpoints.save(number, {**state, "params": params, "opt_state": opt_state, "tally": tally}, meta)

    def diverged(tally, epoch):
        bad_step, bad_value = int(tally["bad_step"]), float(tally["bad_loss"])
        if bad_step < 0:
            return
        kept = (
            f"the last good checkpoint is {checkpoints.latest()} in {checkpoint_dir}"
            if checkpoints is not None and checkpoints.latest() is not None
            else "no checkpoint was saved (pass checkpoint_dir to keep one)"
        )
        if checkpoints is not None:
            checkpoints.close()
        raise TrainingDiverged(
            f"training diverged: the loss became {bad_value} at epoch {epoch}, step {bad_step + 1} of "
            f"{steps_per_epoch}; {kept}. Try a smaller learning rate."
        )

    params, opt_state, resumed_tally = state["params"], state["opt_state"], state["tally"]
    bar = tqdm(
        range(first_epoch, epochs + 1), desc="epochs", unit="epoch", disable=None if progress is None else not progress
    )
    for epoch in bar:
        tic = time.perf_counter()
        step = first_step if epoch == first_epoch else 0
        tally = resumed_tally if step else fresh_tally
        while step < full_batches:
            n = min(segment, full_batches - step)
            params, opt_state, tally = steps_fn(n)(params, opt_state, tally, state["key"], epoch, step, *arrays[:2])
            step += n
            if checkpoints is not None and checkpoint_every_steps is not None and step < full_batches:
                diverged(tally, epoch)
                save(epoch, step, epoch, step, tally)
        params, opt_state, tally, values = end_fn(params, opt_state, tally, state["key"], epoch, *arrays)
        values = {name: float(v) for name, v in values.items() if v is not None}  # waits for the epoch
        diverged(tally, epoch)
        rows.append({"epoch": epoch, **values, "epoch_s": time.perf_counter() - tic})
        if checkpoints is not None and (epoch % checkpoint_every == 0 or epoch == epochs):
            save(epoch, steps_per_epoch, epoch + 1, 0, fresh_tally)
        bar.set_postfix({name: f"{v:.4f}" for name, v in values.items() if name in ("train_loss", "test_err")})
        if on_epoch is not None:
            on_epoch(rows[-1])
    bar.close()
    if checkpoints is not None:
        checkpoints.close()
    return params, History.from_rows(rows, compile_s=compile_s, wall_s=time.perf_counter() - start)
