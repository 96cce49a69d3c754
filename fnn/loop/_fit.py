"""``fit``: checks, then the run's state, then the compiled epoch functions, then the epoch loop."""

import concurrent.futures
import contextlib
import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn import _flops, _precision, parallel, validate
from fnn import losses as _losses
from fnn import train as _train
from fnn._errors import InputError, TrainingDiverged, TrainingInterrupted, UsageError
from fnn._numbers import as_int, real
from fnn._paths import check_pair, check_path
from fnn.data import Stream
from fnn.loop import _feed
from fnn.loop._callbacks import Callback, Checkpointing, EpochFunction, ProgressBar, Run, StallWatch
from fnn.loop._config import data_identity, run_config
from fnn.loop._epoch import Plan, make_epoch_end, make_steps, new_epoch_sums
from fnn.loop._history import History
from fnn.module import returned


def fit(
    model,
    params,
    data,
    *,
    loss=_losses.cross_entropy,
    path="custom",
    epochs=10,
    batch_size=100,
    optimizer=0.5,
    shuffle_key=None,
    augment=None,
    train_metrics="batches",
    devices=None,
    sharding="replicated",
    steps_per_call=None,
    divergence_factor=1e4,
    callbacks=(),
    progress=None,
    state=None,
    precision=None,
    step=None,
    accumulate=1,
    loss_scale=None,
):
    """Trains ``model`` from ``params`` on ``loss`` and reports per-epoch metrics.

    Args:
      model: any fnn module, e.g. ``fnn.nn.mlp([784, 500, 10])``.
      params: its parameter pytree (from ``model.init``); it is copied to the devices, not changed.
      data: an object with ``x_train [N, ...]``, ``y_train [N, ...]``,
        ``x_test``, ``y_test`` arrays, such as :func:`fnn.data.load` returns;
        or a :class:`fnn.data.Stream`, whose training records are read as
        training needs them (see its rules; it trains the same steps as the
        arrays would). Checked before training (a stream's batches as they
        are read): no empty split, as many targets as inputs, inputs the
        model takes (finite floating values) and targets the loss can take
        (class ids in ``[0, k)`` for a model with ``k`` outputs, 0/1 labels,
        finite values).
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
      devices: ``None`` for the default device; an int ``n`` for the first
        ``n`` devices, or a sequence of devices (``jax.devices()`` for every
        device of every process), to split each batch over them; or a
        ``jax.sharding.Mesh`` with an axis ``"data"``, which each batch is
        split over, and other axes (``"model"``) that only parameters are
        split over, by ``sharding``'s rules (a 2-D mesh: FSDP and tensor
        parallelism, :func:`fnn.parallel.training_mesh`).
      sharding: how the training state (parameters, optimizer state, model
        state) lies on those devices, one of :data:`fnn.parallel.LAYOUTS`:
        ``"replicated"``, a copy on each; ``"fsdp"``, each large array split
        along one axis over them (:func:`fnn.parallel.fsdp`), so that each
        device holds ``1/n`` of the state and XLA gathers each parameter
        where it is used. Or rules from the names of the parameters' axes to
        the mesh's axes (``{"in": "data", "out": "model"}``,
        :func:`fnn.parallel.by_names`): the parameters and the model's state
        (batch norm's statistics) split by their names, the optimizer's
        state as its parameters. The arithmetic is the same either way, up to the order
        of float32 sums.
      steps_per_call: optimizer steps compiled into one call, as a
        ``jax.lax.scan``. ``None`` chooses: the whole epoch (one call, no
        host round trip per step), or from a stream as many steps as about
        16 MiB of training data (the chunk read ahead and sent to the devices
        while the previous one trains), except on the ``autodiff`` path for a
        model with a convolution on a CPU, where 1: XLA's CPU backend runs a
        convolution inside a loop body through its slow generic code (JAX
        issue 12868), which JAX's own convolution gradient meets there,
        about 9x slower (fnn's hand-written rules are laid out to avoid it).
        The result is the same either way, bit for bit.
      divergence_factor: training stops with :class:`fnn.TrainingDiverged`,
        naming the first step whose loss is NaN or infinite, or larger in
        magnitude than ``divergence_factor * max(|first loss|, 1)`` (the run's
        first step's loss), and when the parameters stop being finite; the
        steps record it on the devices, and the host looks at the end of each
        epoch and before each callback that runs within one (no checkpoint
        is saved after it). ``None`` watches for non-finite values only.
      callbacks: :class:`fnn.loop.Callback` objects (checkpoints, early
        stopping, your own), or functions called after each epoch as
        ``f(row)`` with the epoch's :meth:`fnn.History.rows` dict.
      progress: show a ``tqdm`` bar over the epochs; ``None`` shows it only on a terminal.
      step: the optimizer step to scan over each epoch, ``step(state, batch)
        -> (state, metrics)`` on a :class:`fnn.train.TrainState` (the
        parameters, the optimizer's state made by ``optimizer``, the model's
        state, the step count, the run's key, the loss scale), ``metrics``
        holding the batch's ``"loss"`` (and ``"error"``); ``None``:
        :func:`fnn.train.train_step` of ``model``, ``loss``, ``optimizer``,
        ``path``, ``precision`` and ``accumulate``. Your own step (a loss with
        auxiliary outputs, two optimizers, a wrapped default step) trains
        here with everything else ``fit`` does: epochs, metrics, the
        divergence watch, callbacks, checkpoints and their resume.
      accumulate: split each batch into this many microbatches and apply
        their mean gradient once (:func:`fnn.train.train_step`): the same
        step in less memory, for a model without batch statistics.
      loss_scale: dynamic loss scaling (:class:`fnn.train.DynamicLossScale`:
        the loss multiplied by a scale before differentiation, the gradients
        divided by it, a step with a non-finite gradient skipped and the
        scale adapted): ``None`` scales a model with a float16
        :func:`fnn.nn.mixed_precision` block by ``DynamicLossScale()`` and
        no other (:func:`fnn.train.loss_scale_for`); a
        ``DynamicLossScale(...)`` gives its settings and starting scale. The
        run's state carries the scale, checkpoints keep it and the run's
        configuration records its settings; a callback reads it as
        ``run.state.loss_scale.scale``, and each epoch's row (a callback's
        ``row``) the steps it skipped as ``"skipped_steps"``. An epoch that
        skipped every step with the scale at its minimum stops training with
        :class:`fnn.TrainingDiverged`.
      precision: the precision of the matrix products and convolutions of
        every step and evaluation (see :func:`fnn.value_and_grad`): ``None``
        keeps the backend's default (TF32 for float32 on recent GPUs: faster,
        about 1e-3 relative error per product), ``"highest"`` full float32.
        A checkpoint records it.
      state: the model's state at the start (``model.init_state(input_shape)``);
        required for a model with state (batch norm). As for
        :meth:`fnn.module.Module.apply`, the trained state comes back exactly
        when ``state=`` was passed.

    A contextual model (batch norm, dropout; see :mod:`fnn.module`) trains in
    training mode, step ``t`` of the run (counting from 0 over every epoch)
    with the key ``fold_in(fold_in(run key, 0), t)`` (so runs repeat and
    resume exactly; :meth:`fnn.train.TrainState.step_key`), its state carried through the
    compiled steps and saved in checkpoints; it is evaluated in evaluation
    mode. With several devices, batch statistics are those of the whole
    batch, as on one device.

    Returns:
      ``(params, history)``, the trained parameters and a :class:`fnn.History`;
      with ``state=``, ``(params, state, history)``. ``history.config`` is the
      run's configuration (every setting of the model, the loss, the
      optimizer, the data's shapes; see :attr:`fnn.History.config`).

    Raises:
      fnn.DataError: data or parameters that cannot train this model.
      TrainingDiverged: the loss diverged (no checkpoint is saved after that;
        the last good one is kept).

    Examples:
      >>> import jax, fnn
      >>> data = fnn.data.synthetic(2048, 256, shape=(20,), classes=3)
      >>> model = fnn.nn.mlp([20, 64, 3])
      >>> _, params = model.init(jax.random.key(0), (20,))
      >>> params, history = fnn.fit(model, params, data, epochs=2, batch_size=64, progress=False)
      >>> len(history.test_err), bool(history.test_err[-1] < 0.5)
      (2, True)
    """
    start = time.perf_counter()
    epochs = _check_int("epochs", epochs, 1)
    splits, batch_size, n_train = _check(model, loss, path, data, params, batch_size, state)
    stream = data if isinstance(data, Stream) else None
    plan = _plan(
        model,
        loss,
        path,
        optimizer,
        n_train,
        batch_size,
        shuffle_key,
        augment,
        devices,
        sharding,
        train_metrics,
        divergence_factor,
        stream,
        _precision.check("fit", precision),
        step,
        accumulate,
        loss_scale,
    )
    parts = [*_callback_parts(callbacks), ProgressBar(progress), StallWatch(_chance_level(model, loss, splits))]
    input_shape = splits["train"][0].shape[1:]
    data_identity = functools.partial(_data_identity, splits, stream)
    run = _new_run(plan, params, state, shuffle_key, epochs, data_identity)
    if stream is None:
        feed = _feed.Arrays(splits, plan.mesh)
    else:
        feed = _feed.Streamed(stream, plan, _key_parts(shuffle_key)[0], _batch_check(model, loss, input_shape))
    steps_per_call = _steps_per_call(plan, steps_per_call, parts, feed, run)
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(feed.close)
            for part in parts:
                stack.callback(part.close)
            for part in parts:
                part.on_begin(run)
            if run.history:  # restored: decisions that follow from the history are made again
                for part in parts:
                    part.on_resume(run)
            compiled = _Compiled(plan, run, feed, (steps_per_call, plan.full_batches % steps_per_call))
            compile_s = time.perf_counter() - start
            _epochs(run, plan, compiled, steps_per_call, parts, feed)
            for part in parts:
                part.on_end(run)
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, TrainingInterrupted):
            raise
        raise TrainingInterrupted(_interrupted(run, parts)) from None
    history = History.from_rows(
        run.history,
        compile_s=compile_s,
        compile_seconds=dict(compiled.seconds),
        wall_s=time.perf_counter() - start,
        configure=lambda: {**run.config, "epochs": run.epochs, "devices": plan.mesh.size},
        count_work=functools.partial(_epoch_work, plan, compiled.shapes, feed),
    )
    return returned((run.state.params,), state, run.state.model_state, after=(history,))


def _interrupted(run, parts):
    """What an interrupted run says: where it stopped, its last checkpoint, and how to resume from it."""
    where = f"training interrupted in epoch {run.epoch}, after step {run.step} of {run.steps_per_epoch}"
    folders = [part.directory for part in parts if isinstance(part, Checkpointing)]
    if run.last_checkpoint is None:
        kept = "no checkpoint was saved" + (
            "" if folders else " (add fnn.loop.Checkpointing(folder) to the callbacks to keep one)"
        )
        return f"{where}; {kept}"
    return (
        f"{where}; the last checkpoint is {run.last_checkpoint}: call fit again with "
        f"fnn.loop.Checkpointing({str(folders[0])!r}, resume=True) to continue from it"
    )


def _chance_level(model, loss, splits):
    """``() -> (loss, error)`` at the chance level on the test split: the loss of outputs that ignore the inputs
    (all zero: ``ln k`` for cross-entropy over ``k`` classes) and, for class ids, the error of always answering the
    most frequent class (``None`` for other targets); ``None`` for a loss without an error rate (a regression has
    no chance level)."""
    if loss.error is None:
        return None
    x, y = splits["test"]

    def chance():
        level = float(_chance_loss(loss, (y.shape[0], *model._output_shape(x.shape[1:])), y))
        classes = y.ndim == 1 and np.issubdtype(y.dtype, np.integer)
        return level, (1 - np.bincount(y).max() / len(y) if classes else None)

    return chance


@functools.partial(jax.jit, static_argnums=(0, 1))
def _chance_loss(loss, shape, y):
    """``loss`` of all-zero outputs of ``shape`` against ``y``: one program (compiled once per loss and shape), not
    one per operation."""
    return loss.apply(jnp.zeros(shape, jnp.float32), y)


# ---------------------------------------------------------------- checks and set-up
def _check(model, loss, path, data, params, batch_size, state):
    """Checks the run's arguments and data on the host; returns ``({"train": (x, y), "test": (x, y)}, batch_size,
    n_train)``, the batch size as a Python int and ``n_train`` the training examples (a stream's records; its
    ``"train"`` split is record 0 alone)."""
    check_pair(model, loss)
    check_path(path)
    splits = _stream_splits(data) if isinstance(data, Stream) else _split_arrays(data)
    validate.check_splits(splits, model)
    n_train = len(data.train) if isinstance(data, Stream) else splits["train"][0].shape[0]
    batch_size = _check_int("batch_size", batch_size, 1, n_train, f" (the training set has {n_train} examples)")
    validate.check_params(model, params, splits["train"][0].shape[1:])
    if state is None:
        model._context(None, True)  # a model with state needs one
    else:
        validate.check_state(model, state, splits["train"][0].shape[1:])
    validate.check_targets(model, loss, splits)
    return splits, batch_size, n_train


def _callback_parts(callbacks):
    """The callbacks as :class:`Callback` objects (a function ``f(row)`` wrapped), checked before any training."""
    if isinstance(callbacks, Callback) or callable(callbacks) or isinstance(callbacks, (str, bytes)):
        raise UsageError(f"callbacks must be a list of callbacks, got one {type(callbacks).__name__}: pass [it]")
    try:
        callbacks = list(callbacks)
    except TypeError:
        raise UsageError(f"callbacks must be a list of callbacks, got {type(callbacks).__name__}") from None
    for i, c in enumerate(callbacks):
        if not (isinstance(c, Callback) or callable(c)):
            raise UsageError(
                f"callbacks[{i}] is {type(c).__name__} {c!r}: each callback must be an fnn.loop.Callback "
                "(fnn.loop.Checkpointing(...), fnn.loop.EarlyStopping(...)) or a function f(row) to call after each "
                "epoch"
            )
    return [c if isinstance(c, Callback) else EpochFunction(c) for c in callbacks]


def _check_int(name, value, low, high=None, hint=""):
    """``value`` as a Python int (a NumPy or 0-d JAX integer too) in ``[low, high]``, else ``ValueError``."""
    number = as_int(value)
    if number is None or number < low or (high is not None and number > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise InputError(f"{name} must be an int {bound}{hint}, got {value!r}")
    return number


def _stream_splits(stream):
    """The splits to check before a streamed run: its record 0 as the training split (every batch is checked
    as it is read), and the test arrays."""
    x, y = (a[None] for a in stream.record(0))
    return {"train": (x, y), "test": (np.asarray(stream.x_test), np.asarray(stream.y_test))}


def _batch_check(model, loss, input_shape):
    """``check(x, y)``: the checks of :func:`_check` on one batch of a stream's training records."""

    output_shape = model._output_shape(input_shape)

    def check(x, y):
        model._check_inputs(x, "train")
        validate.check_targets(model, loss, {"train": (x, y)}, output_shape)

    return check


def _split_arrays(data):
    names = ("x_train", "y_train", "x_test", "y_test")
    try:
        arrays = [np.asarray(getattr(data, name)) for name in names]
    except AttributeError:
        raise UsageError(
            "data must have x_train, y_train, x_test and y_test arrays (e.g. fnn.data.load(...)), "
            f"or be a fnn.data.Stream (e.g. fnn.data.stream(...)), got {type(data).__name__}"
        ) from None
    return {"train": tuple(arrays[:2]), "test": tuple(arrays[2:])}


def _plan(
    model,
    loss,
    path,
    optimizer,
    n_train,
    batch_size,
    shuffle_key,
    augment,
    devices,
    sharding,
    train_metrics,
    factor,
    stream,
    precision,
    step,
    accumulate,
    loss_scale,
):
    """The :class:`Plan` of the run, its arguments checked."""
    if train_metrics not in ("batches", "full"):
        raise InputError(f"train_metrics must be 'batches' or 'full', got {train_metrics!r}")
    if train_metrics == "full" and stream is not None:
        raise InputError(
            "train_metrics='full' evaluates the whole training set, which a stream does not hold in memory; "
            "use train_metrics='batches' (the notes' metrics), or pass the data as arrays"
        )
    if factor is not None:
        factor = real("fit", "divergence_factor", factor, within="above 1 (or None)", ok=lambda f: f > 1)
    mesh = parallel.training_mesh(devices)
    if not isinstance(sharding, dict) and sharding not in parallel.LAYOUTS:
        raise InputError(
            f"sharding must be one of {', '.join(map(repr, parallel.LAYOUTS))}, or rules from axis names to mesh "
            f"axes (a dict, e.g. {{'in': 'data'}}), got {sharding!r}"
        )
    shards = parallel.data_shards(mesh)
    if batch_size % shards:
        raise InputError(
            f"batch_size {batch_size} does not split evenly over {shards} devices"
            f"{' (the mesh axis data)' if len(mesh.shape) > 1 else ''}; "
            f"use a multiple of {shards} or a number of devices that divides {batch_size}"
        )
    targets = set(sharding.values()) if isinstance(sharding, dict) else set()
    idle = [name for name, size in mesh.shape.items() if name != parallel.AXIS and size > 1 and name not in targets]
    if idle:
        raise InputError(
            f"the mesh's axes {idle} would repeat the same work on each of their devices: batches split over 'data' "
            f"alone and sharding={sharding!r} splits nothing over them; give rules that map axis names to them "
            f"(sharding={{'in': 'data', 'out': {idle[0]!r}}}), or a mesh of the axis 'data' alone"
        )
    optimizer, own_step = _train.as_optimizer(optimizer), step is not None
    if not own_step:
        step = _train.train_step(model, loss, optimizer, path=path, precision=precision, accumulate=accumulate)
    elif not callable(step):
        raise UsageError(f"step must be a function step(state, batch) -> (state, metrics), got {type(step).__name__}")
    elif as_int(accumulate) != 1:
        raise UsageError("accumulate= sets fit's own step; with step= of your own, accumulate inside it")
    return Plan(
        model,
        loss,
        optimizer,
        path,
        batch_size,
        n_train,
        _key_parts(shuffle_key)[1],
        shuffle_key is not None,
        augment,
        mesh,
        train_metrics,
        math.inf if factor is None else float(factor),
        stream is not None,
        None if stream is None else stream.transform,
        precision,
        step,
        own_step,
        as_int(accumulate),
        sharding,
        _train.loss_scale_for(model, loss_scale),
    )


def _key_parts(shuffle_key):
    """``(key_data, impl)`` of the run's key: ``shuffle_key``, or ``jax.random.key(0)`` if None."""
    key = jax.random.key(0) if shuffle_key is None else jnp.asarray(shuffle_key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key), jax.random.key_impl(key)
    if key.dtype == jnp.uint32 and key.shape == (2,):
        return key, "threefry2x32"
    raise UsageError(f"shuffle_key must be a jax.random key (jax.random.key(seed)), got {key.dtype} {key.shape}")


def _steps_per_call(plan, steps_per_call, parts, feed, run):
    """Steps per compiled call: ``steps_per_call`` (or its automatic choice), cut to the callbacks' ``every_steps``.

    A stream's chunk is a bound, not a length: with callbacks every ``k``
    steps it becomes the largest divisor of ``k`` within it (a chunk of 53
    steps and checkpoints every 50 steps give chunks of 50, not 1).
    """
    periods = [c.every_steps for c in parts if c.every_steps is not None]
    if steps_per_call is None:
        if _slow_in_a_loop(plan, run, feed):
            return 1
        bound = min(plan.full_batches, feed.steps_per_call)
        if periods and bound < plan.full_batches:
            every = math.gcd(*periods)
            return max(d for d in range(1, min(every, bound) + 1) if every % d == 0)
        steps_per_call = bound
    else:
        steps_per_call = _check_int("steps_per_call", steps_per_call, 1)
    return max(1, math.gcd(min(steps_per_call, plan.full_batches), *periods))


def _slow_in_a_loop(plan, run, feed):
    """Whether a step on the autodiff path runs an XLA convolution on a CPU (see ``steps_per_call`` in :func:`fit`):
    read from the step's program (``jax.make_jaxpr``, nothing compiled), whatever the layers are called (a
    convolution in the matrix form runs none)."""
    if plan.path != "autodiff" or plan.mesh.devices.flat[0].platform != "cpu":
        return False
    step = jax.make_jaxpr(make_steps(plan, 1))(run.state, run.epoch_sums, 1, 0, *feed.shapes(1))
    return _runs(step.jaxpr, "conv_general_dilated")


def _runs(jaxpr, primitive):
    """Whether ``jaxpr`` (or a jaxpr inside it) runs ``primitive``."""
    return any(
        eqn.primitive.name == primitive
        or any(_runs(inner, primitive) for inner in jax.extend.core.jaxprs_in_params(eqn.params))
        for eqn in jaxpr.eqns
    )


def _data_identity(splits, stream):
    """:func:`fnn.loop._config.data_identity` of the training data: the arrays, or the stream's records."""
    if stream is not None:
        return data_identity(source=stream.train)
    return data_identity(*splits["train"])


def _new_run(plan, params, model_state, shuffle_key, epochs, data):
    """The run before its first step: its :class:`fnn.train.TrainState` laid out on the devices as ``plan.sharding``
    says and its epoch's sums replicated,
    nothing trained; ``data()`` identifies its training data (computed with the configuration, when first needed)."""
    key_data, key_impl = _key_parts(shuffle_key)
    state = _train.TrainState(
        params,
        plan.optimizer.init(params),
        () if model_state is None else model_state,
        jnp.int32(0),
        key_data,
        key_impl,
        plan.loss_scale,
    )
    configure = lambda: run_config(plan, params, key_data, data(), epochs)  # noqa: E731
    state = parallel.place(state, _state_layout(plan, state))
    epoch_sums = parallel.replicate(new_epoch_sums(), plan.mesh)
    layout = {"devices": plan.mesh.size, "mesh": dict(plan.mesh.shape), "sharding": plan.sharding}
    return Run(configure, state, epochs, plan.steps_per_epoch, epoch_sums=epoch_sums, layout=layout)


def _state_layout(plan, state):
    """The shardings of the run's :class:`fnn.train.TrainState`: a layout by name, or the rules of
    ``plan.sharding`` applied to the axis names of the parameters and of the model's state (batch norm's running
    statistics), the optimizer state's parameter-shaped arrays laid out as their parameters, the rest
    replicated."""
    if not isinstance(plan.sharding, dict):
        return parallel.layout(plan.sharding, state, plan.mesh)
    whole = parallel.replicated(plan.mesh)
    named = (parallel.logical_axes(plan.model, state.params), parallel.state_axes(plan.model, state.model_state))
    params, model_state = parallel.by_names((state.params, state.model_state), named, plan.mesh, plan.sharding)
    opt_state = optax.tree_map_params(
        plan.optimizer, lambda _, sharding: sharding, state.opt_state, params, transform_non_params=lambda _: whole
    )
    step, key, loss_scale = jax.tree.map(lambda _: whole, (state.step, state.key, state.loss_scale))
    return dataclasses.replace(
        state, params=params, opt_state=opt_state, model_state=model_state, step=step, key=key, loss_scale=loss_scale
    )


# ---------------------------------------------------------------- compiled functions
class _Compiled:
    """The epoch's compiled functions: ``steps(n)`` for each steps_per_call length, and ``end``.

    The end and the calls of ``lengths`` steps are traced here, then
    compiled by XLA at once, each in a thread of its own (XLA compiles
    outside Python's lock, so on several cores they overlap; tracing, which
    reads this thread's JAX settings, stays here); ``seconds`` holds each
    one's lowering and compile time, by name (``"end"``, ``"steps[600]"``),
    and a length the epoch meets later (a run resumed mid-epoch) is compiled
    when first needed and timed too.
    """

    def __init__(self, plan, run, feed, lengths):
        self.plan, self.feed, self._steps, self.seconds = plan, feed, {}, {}
        carried = (run.state, run.epoch_sums)
        self.shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), carried)
        kept = jax.tree.map(lambda a: a.sharding, run.state)  # the state's layout, kept from call to call
        self.out_shardings = (kept, parallel.replicated(plan.mesh))  # the state; the epoch's sums and metrics
        lowered = {"end": self._lowered(None), **{n: self._lowered(n) for n in dict.fromkeys(lengths) if n}}
        with concurrent.futures.ThreadPoolExecutor(len(lowered)) as pool:
            compiled = dict(zip(lowered, pool.map(self._compiled, lowered.items())))
        self.end = compiled.pop("end")
        self._steps.update(compiled)

    def _lowered(self, n):
        """``(seconds, the lowered call)`` of ``n`` steps (``None``: the epoch's end)."""
        tic = time.perf_counter()
        if n is None:
            every = (*self.out_shardings, self.out_shardings[1])  # the metrics replicated too
            end = jax.jit(make_epoch_end(self.plan), donate_argnums=0, out_shardings=every)
            found = end.lower(*self.shapes, 1, *self.feed.shapes(None), *self.feed.test)
        else:
            steps = jax.jit(make_steps(self.plan, n), donate_argnums=0, out_shardings=self.out_shardings)
            found = steps.lower(*self.shapes, 1, 0, *self.feed.shapes(n))
        return time.perf_counter() - tic, found

    def _compiled(self, item):
        """The compiled ``(name, (seconds lowering, lowered))``; records the seconds it took in all."""
        name, (seconds, lowered) = item
        tic = time.perf_counter()
        compiled = lowered.compile()
        self.seconds["end" if name == "end" else f"steps[{name}]"] = seconds + time.perf_counter() - tic
        return compiled

    def steps(self, n):
        """The compiled call that runs ``n`` steps (``None`` for 0)."""
        if n and n not in self._steps:
            self._steps[n] = self._compiled((n, self._lowered(n)))
        return self._steps.get(n)


def _epoch_work(plan, shapes, feed):
    """One epoch's model FLOPs (:func:`fnn._flops.count`, from the programs, nothing compiled): a step's times the
    full batches, and the epoch's end (the last smaller batch and the evaluation)."""
    step = _flops.count(make_steps(plan, 1), *shapes, 1, 0, *feed.shapes(1))
    end = _flops.count(make_epoch_end(plan), *shapes, 1, *feed.shapes(None), *feed.test)
    return _flops.FlopCount(
        plan.full_batches * step.flops + end.flops,
        _summed(plan.full_batches, step.dtypes, end.dtypes),
        _summed(plan.full_batches, step.precisions, end.precisions),
        "; ".join(sorted({step.note, end.note} - {""})),
    )


def _summed(steps, per_step, end):
    """``{key: steps * per_step[key] + end[key]}``."""
    return {k: steps * per_step.get(k, 0.0) + end.get(k, 0.0) for k in {*per_step, *end}}


# ---------------------------------------------------------------- the epoch loop
def _epochs(run, plan, compiled, steps_per_call, parts, feed):
    """Trains from ``run.epoch`` to ``run.epochs``, calling the callbacks; stops early on ``run.stop``."""
    while run.epoch <= run.epochs and not run.stop:
        tic = time.perf_counter()
        feed.begin(run, steps_per_call)
        while run.step < plan.full_batches:
            n = min(steps_per_call, plan.full_batches - run.step)
            _advance(run, compiled.steps(n), run.epoch, run.step, *feed.steps(n))
            feed.dispatched(run.epoch_sums)
            run.step += n
            due = [part for part in parts if part.every_steps and run.step % part.every_steps == 0]
            if due and run.step < plan.full_batches:
                feed.save_position(run)
                _watch(run, plan, run.epoch_sums)  # waits for the steps: only before a callback sees them
                for part in due:
                    part.on_steps(run)
        metrics = _advance(run, compiled.end, run.epoch, *feed.last_batch(), *feed.test)
        feed.end(run)
        if run.epoch < run.epochs:
            feed.read_ahead(run.epoch + 1, steps_per_call)  # while the devices evaluate
        values = {name: float(v) for name, v in metrics.items() if v is not None}  # waits for the epoch
        _watch(run, plan, run.epoch_sums, values.pop("params_finite"))
        skipped = _skipped(run, plan)
        run.step = run.steps_per_epoch
        run.epoch_sums = parallel.replicate(new_epoch_sums(float(run.epoch_sums["first_loss"])), plan.mesh)
        row = {"epoch": run.epoch, **values, **skipped, "epoch_s": time.perf_counter() - tic}
        run.history.append(row)
        for part in parts:
            part.on_epoch_end(run, row)
        if run.epoch == run.epochs or run.stop:
            return
        run.epoch, run.step = run.epoch + 1, 0


def _advance(run, fn, *args):
    """Runs a compiled ``fn`` on the run's state and epoch_sums; returns its extra outputs, if any."""
    run.state, run.epoch_sums, *rest = fn(run.state, run.epoch_sums, *args)
    return rest[0] if rest else None


def _skipped(run, plan):
    """``{"skipped_steps": n}``, the steps of the epoch a loss scale skipped (``{}`` without one); raises
    :class:`fnn.TrainingDiverged` when it skipped every one of them and its scale is at its minimum, where the
    gradients overflow however small the scale, and training has stopped moving."""
    scaling = run.state.loss_scale
    if scaling is None:
        return {}
    skipped, scale = int(run.epoch_sums["skipped"]), float(scaling.scale)
    if skipped == run.steps_per_epoch and scale <= scaling.minimum:
        raise TrainingDiverged(
            f"training diverged: every step of epoch {run.epoch} had a non-finite gradient and was skipped, with the "
            f"loss scale at its minimum {scale:g}: the float16 backward overflows however small the scale. Compute in "
            "bfloat16 (nn.mixed_precision(model, jnp.bfloat16)), or try a smaller learning rate"
        )
    return {"skipped_steps": skipped}


def _watch(run, plan, epoch_sums, params_finite=True):
    """Raises :class:`fnn.TrainingDiverged` if the epoch's sums recorded a diverging step or the parameters are not
    finite."""
    bad_step, bad_value = int(epoch_sums["bad_step"]), float(epoch_sums["bad_loss"])
    if bad_step < 0 and params_finite:
        return
    kept = (
        f"the last good checkpoint is {run.last_checkpoint}"
        if run.last_checkpoint is not None
        else "no checkpoint was saved (add fnn.loop.Checkpointing(folder) to the callbacks to keep one)"
    )
    if bad_step < 0:
        what = f"the parameters stopped being finite in epoch {run.epoch}"
    else:
        first, factor = float(epoch_sums["first_loss"]), plan.divergence_factor
        why = f", more than {factor:g} times max(|first loss| {abs(first):.4g}, 1)" if math.isfinite(bad_value) else ""
        where = f"at epoch {run.epoch}, step {bad_step + 1} of {run.steps_per_epoch}"
        what = f"the loss became {bad_value:.4g}{why} {where}"
    raise TrainingDiverged(f"training diverged: {what}; {kept}. Try a smaller learning rate.")
