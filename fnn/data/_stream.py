"""Streaming training data: a :class:`Stream` names a random-access training source; :class:`Batches` reads it
by the rules :class:`Stream` states."""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from fnn._errors import DataError, InputError, UsageError
from fnn._numbers import positive_int
from fnn._order import epoch_order
from fnn.data._records import Records

__all__ = ["Batches", "Stream"]


@dataclasses.dataclass(frozen=True, eq=False)
class Stream:
    """Training data read from a random-access source as training needs it, for :func:`fnn.fit`.

    :func:`fnn.fit` trains from a :class:`Stream` as from arrays, reading the
    records as training needs them, through a Grain pipeline:

    * **Order.** Epoch ``e`` visits the records in the order
      ``permutation(fold_in(run key, e), N)``, the order the in-memory path uses,
      so both train the same steps on the same batches (without a
      ``shuffle_key``, data order). The order does not depend on the number of
      processes.
    * **Shards.** Global batch ``s`` is the records at positions ``s * B ..
      (s + 1) * B - 1`` of that order; process ``p`` of ``P`` reads only its
      ``B / P`` consecutive rows of it (the rows its devices hold), so the
      processes read disjoint records and together all of them.
    * **The last smaller batch.** When ``B`` does not divide ``N``, the last
      ``r = N mod B`` records form one smaller batch. Each process reads its
      share of them: ``ceil(r / D)`` rows per device of its own (``D`` devices in
      all) from the start of those ``r``, fewer or none at the end, padded with
      zeros to that size; the compiled step drops the padding, so it trains on
      exactly the ``r`` records, as the in-memory path does. No record is dropped.
    * **Reading.** The rows of the ``n`` steps of one compiled call are read
      as one chunk ``[n, B / P, ...]`` (with ``source.read`` when the source
      has it, as :class:`fnn.data.Records` does, else record by record),
      checked and transformed record by record. Grain reads chunks in
      ``threads`` threads (or ``workers`` processes) and keeps ``prefetch``
      of them ready, so host memory holds a few chunks, not the dataset.
    * **Transforms.** ``transform(x, rng) -> x`` runs on each training record in
      the readers, ``rng`` being a ``numpy.random.Generator`` (Philox) keyed by
      the run's key and counting from the epoch and the record's position in the
      epoch: augmented runs repeat, resume and shard exactly.
    * **Resume.** The Grain iterator's state (the next chunk of the epoch) goes
      into checkpoints, and a resumed epoch continues from it.
    * **Checks.** Every batch is checked as it is read, as ``fit`` checks
      arrays (shapes and dtypes of record 0, finite inputs, targets the loss
      takes); a failure names the source and the record's index.

    Attributes:
      train: the training records: any object with ``len(train)`` and
        ``train[i] -> (x, y)`` (NumPy arrays, or values NumPy takes), such as
        :class:`fnn.data.Records`, a ``grain.MapDataset`` (e.g.
        ``grain.MapDataset.source(tfds.data_source(...)).map(to_pair)``) or a
        list. Every record must have the shapes and dtypes of record 0.
      x_test: test inputs ``[N_test, ...]``, evaluated in memory.
      y_test: test targets ``[N_test, ...]``.
      transform: ``transform(x, rng) -> x``, applied to each training record's
        input in the readers (augmentation), ``rng`` a
        ``numpy.random.Generator`` of its own (see above), or an object with
        that as its ``random_map(x, rng)`` method (Grain's ``RandomMap``,
        :func:`fnn.data.random_shift`); it must
        keep the input's shape and dtype, and must be picklable when
        ``workers > 0``.
      workers: Grain worker processes that read and transform; 0 reads in
        threads of this process. Grain starts them (new processes) at each
        epoch, so a script that uses them keeps its top-level code under
        ``if __name__ == "__main__":``; they pay off when the transform, not
        the reading, is the work.
      threads: reading threads (per worker).
      prefetch: chunks read ahead (per worker), each the steps of one
        compiled call of :func:`fnn.fit`; ``None``: 3, so the next call's data
        is ready when the current one ends.
      name: how messages name the source (default: its type and size).
    """

    train: Any
    x_test: Any
    y_test: Any
    transform: Callable | None = None
    workers: int = 0
    threads: int = 2
    prefetch: int | None = None
    name: str | None = None

    def __post_init__(self):
        if not (hasattr(self.train, "__len__") and hasattr(self.train, "__getitem__")):
            raise UsageError(
                "Stream(train=...) needs a random-access source (len(train) and train[i] -> (x, y)): "
                "fnn.data.Records, a grain.MapDataset, a list of pairs; "
                f"got {type(self.train).__name__} (an iterator cannot be shuffled, sharded or resumed)"
            )
        if len(self.train) == 0:
            raise DataError(f"the training source {self.source_name} holds no records")
        if self.transform is not None and not callable(getattr(self.transform, "random_map", self.transform)):
            raise UsageError(f"Stream(transform=...) must be a function transform(x, rng) -> x, got {self.transform!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise InputError(f"Stream(workers=...) must be an int >= 0 (0: read in threads), got {self.workers!r}")
        positive_int("Stream", "threads", self.threads)
        if self.prefetch is not None:
            positive_int("Stream", "prefetch", self.prefetch)

    @property
    def source_name(self):
        """The name messages give the training source (``name``, else its type and size, or a Records' repr)."""
        if self.name:
            return self.name
        if isinstance(self.train, Records):
            return repr(self.train)
        return f"the training source ({type(self.train).__name__} of {len(self.train)} records)"

    def record(self, index):
        """Record ``index`` of the training source as a pair of NumPy arrays ``(x, y)``; a record that is not an
        ``(x, y)`` pair is refused naming its index and the fix."""
        return _pair(self.train[int(index)], index, self.source_name)

    def record_spec(self):
        """``((x shape, x dtype), (y shape, y dtype))`` of record 0, which every record must match."""
        x, y = self.record(0)
        return (x.shape, x.dtype), (y.shape, y.dtype)


def _pair(record, index, name):
    """``record`` as ``(x, y)`` NumPy arrays, or :class:`fnn.DataError` naming what it is and how to map it."""
    if not (isinstance(record, tuple | list) and len(record) == 2):
        what = f"a {type(record).__name__}" + (f" of {len(record)}" if isinstance(record, tuple | list) else "")
        keys = f" with keys {sorted(record)}" if isinstance(record, dict) else ""
        raise DataError(
            f"{name}: record {index} is {what}{keys}, expected an (x, y) pair; map the source to pairs, e.g. "
            "grain.MapDataset.source(src).map(lambda r: (r['image'], r['label']))"
        )
    return tuple(np.asarray(a) for a in record)


def last_batch_rows(n, batch_size, devices=1):
    """The rows of an epoch's last, smaller batch, one definition for arrays and streams: of ``n`` examples in
    batches of ``batch_size``, the ``r = n mod batch_size`` left over (0 where ``batch_size`` divides ``n``: no such
    batch), padded to ``ceil(r / devices) * devices`` rows so that each of ``devices`` devices holds as many."""
    return math.ceil(n % batch_size / devices) * devices


class Batches:
    """The training batches one process reads from a :class:`Stream`, by the rules :class:`Stream` states.

    Args:
      stream: the :class:`Stream`.
      batch_size: the global batch size ``B``.
      key_data, key_impl: the run's key (its data and implementation).
      shuffle: shuffle every epoch (else data order).
      devices: ``D``, devices over all processes; ``local_devices`` of them
        are this process's, which is ``process`` of ``processes``.
      check: ``check(x, y)`` raising :class:`fnn.DataError` for a batch the
        model or loss cannot take; each batch is checked as it is read.
    """

    def __init__(
        self, stream, batch_size, key_data, key_impl, shuffle, *, devices, local_devices, process, processes, check
    ):
        self.stream, self.batch_size, self.shuffle, self.check = stream, batch_size, shuffle, check
        self.n = len(stream.train)
        self.key_data, self.key_impl = np.asarray(key_data), key_impl
        self.process, self.processes = process, processes
        self.local_batch = batch_size // processes
        self.last_rows = last_batch_rows(self.n, batch_size, devices) // devices * local_devices
        self.spec = stream.record_spec()
        self._philox_key = _philox_key(self.key_data)
        self._orders = {}  # epoch -> its order (a NumPy array, or a jax.Array still being computed)
        if shuffle:  # compiled now, not in the first epoch
            _permutation.lower(self.key_data, key_impl, 1, self.n).compile()

    @property
    def full_batches(self):
        return self.n // self.batch_size

    def order(self, epoch):
        """The epoch's order of the records, ``permutation(fold_in(key, epoch), N)`` (``arange(N)`` unshuffled).

        The orders of ``epoch`` and ``epoch + 1`` are kept (the next one is
        computed on the device while this one trains); older ones are dropped.
        """
        if not self.shuffle:
            return np.arange(self.n)
        for e in (epoch, epoch + 1):
            if e not in self._orders:
                self._orders[e] = _permutation(self.key_data, self.key_impl, e, self.n)  # dispatched, not awaited
        self._orders = {e: order for e, order in self._orders.items() if e >= epoch}
        self._orders[epoch] = np.asarray(self._orders[epoch])
        return self._orders[epoch]

    def epoch(self, epoch, first, steps_per_call, state=None):
        """An iterator over this process's rows of the epoch's full batches from step ``first`` on, ``steps_per_call``
        steps at a time (the last chunk shorter): ``(x [n, B / P, ...], y [n, B / P, ...])``, resumed from a
        Grain iterator ``state`` (JSON, its ``get_state()``) if given."""
        grain = _grain()
        chunks = math.ceil((self.full_batches - first) / steps_per_call)
        read = _ChunkReader(self, self.order(epoch), epoch, first, steps_per_call)
        prefetch = self.stream.prefetch or 3
        options = grain.ReadOptions(num_threads=self.stream.threads, prefetch_buffer_size=prefetch)
        iterator = grain.MapDataset.range(chunks).map(read).to_iter_dataset(options)
        if self.stream.workers:
            _absl_flags_parsed()  # Grain's worker pool reads absl flags, which a plain script never parses
            iterator = iterator.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.stream.workers))
        iterator = iter(iterator)
        if state is not None:
            iterator.set_state(state)
        return iterator

    def last(self, epoch):
        """This process's share of the epoch's last smaller batch, ``(x [1, L, ...], y [1, L, ...])`` padded with
        zeros to ``L`` rows (see :class:`Stream`); ``L`` is 0 when ``B`` divides ``N``."""
        first = self.full_batches * self.batch_size
        start = first + self.process * self.last_rows
        positions = np.arange(min(start, self.n), min(start + self.last_rows, self.n))
        x, y = _BatchReader(self, self.order(epoch), epoch).rows(positions)
        (x_shape, x_dtype), (y_shape, y_dtype) = self.spec
        pad = self.last_rows - len(positions)
        x = np.concatenate([x, np.zeros((pad, *x_shape), x_dtype)])
        y = np.concatenate([y, np.zeros((pad, *y_shape), y_dtype)])
        return x[None], y[None]


def _grain():
    try:
        import grain
    except ImportError:
        raise UsageError(
            "streaming needs Grain: pip install grain (in a clone of fnn: pip install -e '.[stream]')"
        ) from None
    return grain


def _absl_flags_parsed():
    """Marks absl's flags parsed (at their defaults) unless the program parsed them, as ``absl.app`` would."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@functools.partial(jax.jit, static_argnums=(1, 3))
def _permutation(key_data, key_impl, epoch, n):
    return epoch_order(jax.random.wrap_key_data(key_data, impl=key_impl), epoch, n)


def _philox_key(key_data):
    """The run's key data as the two 64-bit words of a Philox key."""
    words = np.zeros(4, np.uint32)
    flat = np.asarray(key_data, np.uint32).ravel()[:4]
    words[: len(flat)] = flat
    return words.view(np.uint64)


class _BatchReader:
    """``rows(positions) -> (x, y)``: the records at ``positions`` of an epoch's order (picklable for workers)."""

    def __init__(self, batches, order, epoch):
        self.order, self.epoch = order, epoch
        self.source, self.name = batches.stream.train, batches.stream.source_name
        transform = batches.stream.transform
        self.transform = getattr(transform, "random_map", transform)
        self.check, self.spec = batches.check, batches.spec
        self.batch_size, self.local_batch, self.process = batches.batch_size, batches.local_batch, batches.process
        self.philox_key = batches._philox_key

    def rows(self, positions):
        """The records at ``positions`` of the epoch's order, read, checked and transformed."""
        indices = self.order[positions]
        if not len(indices):
            (x_shape, x_dtype), (y_shape, y_dtype) = self.spec
            return np.empty((0, *x_shape), x_dtype), np.empty((0, *y_shape), y_dtype)
        x, y = self._read(indices)
        self._check(indices, x, y)
        if self.transform is not None:
            x = self._transformed(positions, indices, x)
        return x, y

    def _read(self, indices):
        if hasattr(self.source, "read"):
            x, y = self.source.read(indices)
            self._check_spec((x.shape[1:], y.shape[1:]), (x.dtype, y.dtype), None)
            return x, y
        (x_shape, x_dtype), (y_shape, y_dtype) = self.spec
        x = np.empty((len(indices), *x_shape), x_dtype)
        y = np.empty((len(indices), *y_shape), y_dtype)
        for j, i in enumerate(indices):
            xi, yi = _pair(self.source[int(i)], i, self.name)
            self._check_spec((xi.shape, yi.shape), (xi.dtype, yi.dtype), i)
            x[j], y[j] = xi, yi
        return x, y

    def _check_spec(self, shapes, dtypes, index):
        """Refuses records whose shapes or dtypes differ from record 0's (``index`` None: a batch read at once)."""
        (x_shape, x_dtype), (y_shape, y_dtype) = self.spec
        if shapes != (x_shape, y_shape) or dtypes != (x_dtype, y_dtype):
            which = f"record {index}" if index is not None else "its records"
            raise DataError(
                f"{self.name}: {which} has x {dtypes[0]}{list(shapes[0])} and y {dtypes[1]}{list(shapes[1])}; "
                f"expected x {x_dtype}{list(x_shape)} and y {y_dtype}{list(y_shape)} like record 0"
            )

    def _check(self, indices, x, y):
        """``check`` on the batch; on a failure, finds the first failing record and names it."""
        try:
            self.check(x, y)
        except DataError:
            for j, i in enumerate(indices):
                try:
                    self.check(x[j : j + 1], y[j : j + 1])
                except DataError as e:
                    raise DataError(f"{self.name}: record {i}: {e}") from None
            raise

    def _transformed(self, positions, indices, x):
        """Each record's ``transform(x, rng)`` with its own Philox generator (see :class:`Stream`)."""
        out = np.empty_like(x)
        for j, position in enumerate(positions):
            # The draws count up from the low words, so each record's stream stays its own.
            bits = np.random.Philox(key=self.philox_key, counter=[0, 0, int(position), self.epoch])
            result = np.asarray(self.transform(x[j], np.random.Generator(bits)))
            if result.shape != x.shape[1:] or result.dtype != x.dtype:
                raise DataError(
                    f"{self.name}: the transform turned record {indices[j]}'s x {x.dtype}{list(x.shape[1:])} into "
                    f"{result.dtype}{list(result.shape)}; it must keep the shape and dtype"
                )
            out[j] = result
        return out


class _ChunkReader(_BatchReader):
    """``read(j) -> (x [n, B / P, ...], y [n, B / P, ...])``: this process's rows of chunk ``j`` of an epoch, the
    ``n`` (at most ``steps_per_call``) steps from ``first + j * steps_per_call`` on, read as one batch."""

    def __init__(self, batches, order, epoch, first, steps_per_call):
        super().__init__(batches, order, epoch)
        self.first, self.steps_per_call, self.full_batches = first, steps_per_call, batches.full_batches

    def __call__(self, j):
        steps = np.arange(
            self.first + int(j) * self.steps_per_call,
            min(self.first + (int(j) + 1) * self.steps_per_call, self.full_batches),
        )
        starts = steps * self.batch_size + self.process * self.local_batch
        x, y = self.rows((starts[:, None] + np.arange(self.local_batch)).ravel())
        return x.reshape(len(steps), self.local_batch, *x.shape[1:]), y.reshape(
            len(steps), self.local_batch, *y.shape[1:]
        )
