"""Where :func:`fnn.fit`'s steps get their data: the arrays placed on the devices once, or a stream read as it trains.

:class:`Feed` is the protocol the epoch loop drives; :class:`Arrays` and
:class:`Streamed` are its two kinds.
"""

import abc
import collections

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fnn import parallel
from fnn._errors import CheckpointError, InputError
from fnn.data import Batches
from fnn.data._stream import last_batch_rows

#: About how many bytes of training data one compiled call of a streamed run takes (see ``steps_per_call``).
STREAM_CHUNK_BYTES = 16 << 20


class Feed(abc.ABC):
    """The data arguments of an epoch's compiled calls, and where the reading stands.

    The loop calls, per epoch: :meth:`begin`; for each call of ``n`` steps
    :meth:`steps` (its training data) then :meth:`dispatched`, and before a
    callback that may checkpoint :meth:`save_position`; :meth:`last_batch`
    for the call that trains the epoch's last smaller batch and evaluates;
    :meth:`end`; :meth:`read_ahead` while the devices finish. :meth:`close`
    on every exit. Only :meth:`shapes`, :meth:`steps` and :meth:`last_batch`
    have no default: a feed that holds nothing per epoch needs no more.

    Attributes:
      test: the test split ``(x, y)``, on the devices.
      steps_per_call: the steps one compiled call takes unless told otherwise
        (``fit`` takes the smaller of this and the epoch).
    """

    test: tuple
    steps_per_call: float

    @abc.abstractmethod
    def shapes(self, n):
        """The training arguments of a call of ``n`` steps (``None``: the last smaller batch), for compiling: arrays,
        or ``jax.ShapeDtypeStruct`` with their shardings."""

    @abc.abstractmethod
    def steps(self, n):
        """The training data of the next ``n`` steps, ``(x, y)``."""

    @abc.abstractmethod
    def last_batch(self):
        """The training data of the epoch's last smaller batch, ``(x, y)``."""

    def begin(self, run, steps_per_call):  # noqa: B027 (a default that does nothing)
        """Starts the epoch ``run.epoch`` at step ``run.step``; calls will train ``steps_per_call`` steps."""

    def dispatched(self, epoch_sums):  # noqa: B027 (a default that does nothing)
        """Notes a call dispatched (``epoch_sums`` its output, ready when the call is done)."""

    def save_position(self, run):  # noqa: B027 (a default that does nothing)
        """Records the position reached in ``run.data_state``, which checkpoints keep."""

    def end(self, run):  # noqa: B027 (a default that does nothing)
        """Ends the epoch."""

    def read_ahead(self, epoch, steps_per_call):  # noqa: B027 (a default that does nothing)
        """Prepares epoch ``epoch`` while the devices finish the current one."""

    def close(self):  # noqa: B027 (a default that does nothing)
        """Releases what the feed holds."""


class Arrays(Feed):
    """Every split placed whole on every device (``parallel.replicate``) before the first epoch: every call gets the
    whole training split, and the compiled steps pick their rows in the epoch's order (the step is the position)."""

    steps_per_call = float("inf")  # the whole epoch

    def __init__(self, splits, mesh):
        self.arrays = parallel.replicate(tuple(a for split in splits.values() for a in split), mesh)
        self.test = self.arrays[2:]

    def shapes(self, n):
        return self.arrays[:2]

    def steps(self, n):
        return self.arrays[:2]

    def last_batch(self):
        return self.arrays[:2]


class Streamed(Feed):
    """A :class:`fnn.data.Stream` read a chunk of steps at a time, each chunk one global array over the devices."""

    def __init__(self, stream, plan, key_data, check):
        mesh = plan.mesh
        devices = list(mesh.devices.flat)
        local = [i for i, d in enumerate(devices) if d.process_index == jax.process_index()]
        processes = len({d.process_index for d in devices})
        if len(local) * processes != len(devices) or local != list(range(local[0], local[0] + len(local))):
            raise InputError(
                "streaming needs every process to hold the same number of the mesh's devices, in one block; "
                f"this process holds positions {local} of {len(devices)}"
            )
        shards = parallel.data_shards(mesh)  # each batch split over these, whole along the mesh's other axes
        if shards != len(devices) and processes > 1:
            raise InputError(
                f"streaming over {processes} processes splits each batch over all of the mesh's devices, but the "
                f"mesh {dict(mesh.shape)} splits batches over 'data' alone; stream on a mesh with the axis 'data' "
                "alone, or pass the data as arrays"
            )
        self.batches = Batches(
            stream,
            plan.batch_size,
            key_data,
            plan.key_impl,
            plan.shuffle,
            devices=shards,
            local_devices=len(local) * shards // len(devices),
            process=local[0] // len(local),
            processes=processes,
            check=check,
        )
        self.batch_size, self.devices = plan.batch_size, shards
        self.sharding = NamedSharding(mesh, P(None, parallel.AXIS))
        self.test = parallel.replicate((np.asarray(stream.x_test), np.asarray(stream.y_test)), mesh)
        (self.x_shape, self.x_dtype), (self.y_shape, self.y_dtype) = self.batches.spec
        self.iterator, self.first_chunk, self.ahead = None, None, None
        self.workers, self.in_flight = stream.workers, collections.deque()
        record_bytes = self.x_dtype.itemsize * np.prod(self.x_shape) + self.y_dtype.itemsize * np.prod(self.y_shape)
        #: Steps per compiled call unless told otherwise: about :data:`STREAM_CHUNK_BYTES` of data.
        self.steps_per_call = max(1, int(STREAM_CHUNK_BYTES // (record_bytes * plan.batch_size)))

    def _rows(self, n):
        """Global rows of a call of ``n`` steps (``None``: the last smaller batch, padded)."""
        if n is None:
            return last_batch_rows(self.batches.n, self.batch_size, self.devices)
        return self.batch_size

    def shapes(self, n):
        steps, rows = 1 if n is None else n, self._rows(n)
        return (
            jax.ShapeDtypeStruct((steps, rows, *self.x_shape), self.x_dtype, sharding=self.sharding),
            jax.ShapeDtypeStruct((steps, rows, *self.y_shape), self.y_dtype, sharding=self.sharding),
        )

    def begin(self, run, steps_per_call):
        """Starts the epoch at ``run.step``: from what :meth:`read_ahead` prepared, from the reader's position a
        checkpoint saved (when the run reads the same chunks with the same workers), or afresh at that step (the
        epoch and step alone fix what comes next, so a checkpoint written from arrays resumes too)."""
        self._close()
        self.epoch, self.first, self.steps_per_call, self.first_chunk = run.epoch, run.step, steps_per_call, None
        ahead, self.ahead = self.ahead, None
        if ahead is not None and ahead[0] == (run.epoch, run.step, steps_per_call):
            _, self.iterator, self.first_chunk = ahead
            return
        if ahead is not None:
            _close(ahead[1])
        saved, state = (run.data_state or {}) if run.step else {}, None
        if saved.get("steps_per_call") == steps_per_call and saved.get("workers") == self.workers:  # the same chunks
            self.first, state = saved["first"], saved["reader"]
            reached = self.first + state["next_index"] * steps_per_call if "next_index" in state else run.step
            if reached != run.step:
                raise CheckpointError(
                    f"the checkpoint resumes epoch {run.epoch} at step {run.step} but the stream's saved position "
                    f"is step {reached}: the checkpoint is damaged"
                )
        self.iterator = self.batches.epoch(run.epoch, self.first, steps_per_call, state)

    def read_ahead(self, epoch, steps_per_call):
        """Starts epoch ``epoch`` (from its first step) and reads its first chunk while the devices finish the
        current epoch; :meth:`begin` takes it up. Where that reading fails, nothing is kept: :meth:`begin` starts
        the epoch afresh and the error comes from there, after this epoch's callbacks (its checkpoint) have run."""
        iterator = self.batches.epoch(epoch, 0, steps_per_call)
        try:
            chunk = _owned(next(iterator))
        except Exception:  # read again, and raised, where the epoch begins
            _close(iterator)
            return
        self.ahead = ((epoch, 0, steps_per_call), iterator, chunk)

    def steps(self, n):
        if self.first_chunk is not None:
            (x, y), self.first_chunk = self.first_chunk, None
        else:
            x, y = _owned(next(self.iterator))
        assert len(x) == n, (len(x), n)  # the loop and the reader cut the epoch alike
        return self._put(x, y, self.batch_size)

    def dispatched(self, epoch_sums):
        """Notes a call dispatched (``epoch_sums`` its output); waits for the call before the last, so at most two
        calls' chunks are queued on the devices and host memory stays bounded when reading outruns training."""
        self.in_flight.append(epoch_sums)
        if len(self.in_flight) > 2:
            jax.block_until_ready(self.in_flight.popleft())

    def save_position(self, run):
        reader = self.iterator.get_state()
        run.data_state = {
            "first": self.first,
            "steps_per_call": self.steps_per_call,
            "workers": self.workers,
            "reader": reader,
        }

    def last_batch(self):
        x, y = self.batches.last(self.epoch)
        return self._put(x, y, self._rows(None))

    def end(self, run):
        self._close()
        self.in_flight.clear()
        run.data_state = None

    def close(self):
        """Stops the readers (Grain's threads or worker processes)."""
        self._close()
        if self.ahead is not None:
            _close(self.ahead[1])
            self.ahead = None

    def _close(self):
        if self.iterator is not None:
            _close(self.iterator)
            self.iterator = None

    def _put(self, x, y, rows):
        """Assembles every process's ``[n, local rows, ...]`` into global ``[n, rows, ...]`` arrays."""
        return tuple(
            jax.make_array_from_process_local_data(self.sharding, a, (a.shape[0], rows, *a.shape[2:])) for a in (x, y)
        )


def _owned(chunk):
    """``chunk``'s arrays in this process's own memory. A Grain worker hands its arrays over in shared memory,
    which the array releases when it is collected, on a thread: copied and released now, none is left behind when
    the run is interrupted (and the device never holds a view of a steps_per_call about to go)."""
    owned = []
    for a in chunk:
        shm = getattr(a, "shm", None)
        if shm is None or not hasattr(a, "unlink_on_del"):
            owned.append(a)
            continue
        owned.append(np.array(a))
        a._unlink_on_del = False  # released here, not by the collector: the steps_per_call's name goes now
        shm.unlink()
    return tuple(owned)


def _close(iterator):
    """Closes a Grain iterator (stopping its threads or worker processes) where Grain offers it."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
