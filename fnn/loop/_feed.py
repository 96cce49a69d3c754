"""Where :func:`fnn.fit`'s steps get their data: the arrays placed on the devices once, or a stream read as it trains.

A feed gives the compiled calls their data arguments: ``chunk(n)`` the
training data of the next ``n`` steps, ``last()`` that of the epoch's last
smaller batch, ``test`` the test split; ``begin(run, segment)`` and ``end(run)``
bracket an epoch, ``read_ahead(epoch, segment)`` prepares the next one while
the devices finish the current one, and ``mark(run)`` records the position
reached in ``run.data_state``, which checkpoints keep. :class:`Arrays` hands every call the whole
training split (the compiled steps pick their rows, in the epoch's order);
:class:`Streamed` hands each call the chunk of batches it trains on, read by
:class:`fnn.data.Batches` and assembled into global arrays over the devices
of every process, and keeps the reader's position in ``run.data_state`` for
checkpoints.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fnn import parallel
from fnn._errors import CheckpointError, InputError
from fnn.data import Batches

#: About how many bytes of training data one compiled call of a streamed run takes (see ``steps_per_call``).
STREAM_CHUNK_BYTES = 16 << 20


class Arrays:
    """Every split placed whole on every device (``parallel.replicate``) before the first epoch."""

    #: Steps per compiled call unless told otherwise: the whole epoch (``fit`` takes the smaller).
    steps_per_call = float("inf")

    def __init__(self, splits, mesh):
        self.arrays = parallel.replicate(tuple(a for split in splits.values() for a in split), mesh)
        self.test = self.arrays[2:]

    def specs(self, n):
        """The training arguments of a call of ``n`` steps (``None``: the last smaller batch), for compiling."""
        return self.arrays[:2]

    def begin(self, run, segment):
        """Starts the epoch ``run.epoch`` at step ``run.step``; calls will train ``segment`` steps."""

    def chunk(self, n):
        return self.arrays[:2]

    def mark(self, run):
        """Records the position reached (the arrays need none: the step is the position)."""

    def read_ahead(self, epoch, segment):
        """Prepares epoch ``epoch`` while the devices finish the current one (the arrays need nothing)."""

    def last(self):
        return self.arrays[:2]

    def end(self, run):
        """Ends the epoch."""


class Streamed:
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
        self.batches = Batches(
            stream,
            plan.batch_size,
            key_data,
            plan.key_impl,
            plan.shuffle,
            devices=len(devices),
            local_devices=len(local),
            process=local[0] // len(local),
            processes=processes,
            check=check,
        )
        self.mesh, self.batch_size = mesh, plan.batch_size
        self.sharding = NamedSharding(mesh, P(None, parallel.AXIS))
        self.test = parallel.replicate((np.asarray(stream.x_test), np.asarray(stream.y_test)), mesh)
        (self.x_shape, self.x_dtype), (self.y_shape, self.y_dtype) = self.batches.spec
        self.iterator, self.first_chunk, self.ahead = None, None, None
        record_bytes = self.x_dtype.itemsize * np.prod(self.x_shape) + self.y_dtype.itemsize * np.prod(self.y_shape)
        #: Steps per compiled call unless told otherwise: about :data:`STREAM_CHUNK_BYTES` of data.
        self.steps_per_call = max(1, int(STREAM_CHUNK_BYTES // (record_bytes * plan.batch_size)))

    def _rows(self, n):
        """Global rows of a call of ``n`` steps (``None``: the last smaller batch, padded)."""
        if n is None:
            return self.batches.last_rows * self.batches.processes
        return self.batch_size

    def specs(self, n):
        steps, rows = 1 if n is None else n, self._rows(n)
        return (
            jax.ShapeDtypeStruct((steps, rows, *self.x_shape), self.x_dtype, sharding=self.sharding),
            jax.ShapeDtypeStruct((steps, rows, *self.y_shape), self.y_dtype, sharding=self.sharding),
        )

    def begin(self, run, segment):
        saved = run.data_state if run.step else None
        if run.step and saved is None:
            raise CheckpointError(
                f"the checkpoint resumes epoch {run.epoch} at step {run.step} but holds no position of the "
                "stream (it was saved by a run from arrays): resume it with the same arrays"
            )
        if self.ahead is not None and self.ahead[0] == (run.epoch, run.step, segment):
            (self.epoch, self.first, self.segment), self.iterator, self.first_chunk = self.ahead
            self.ahead = None
            return
        self.ahead, self.first_chunk = None, None
        self.epoch, self.first, self.segment, state = run.epoch, run.step, segment, None
        if saved is not None and saved["segment"] == segment:  # the same chunks: Grain's own position
            self.first, state = saved["first"], saved["reader"]
            reached = self.first + state["next_index"] * segment if "next_index" in state else run.step
            if reached != run.step:
                raise CheckpointError(
                    f"the checkpoint resumes epoch {run.epoch} at step {run.step} but the stream's saved position "
                    f"is step {reached}: the checkpoint is damaged"
                )
        self.iterator = self.batches.epoch(run.epoch, self.first, segment, state)

    def read_ahead(self, epoch, segment):
        """Starts epoch ``epoch`` (from its first step) and reads its first chunk, while the devices finish the
        current epoch; :meth:`begin` takes it up."""
        iterator = self.batches.epoch(epoch, 0, segment)
        self.ahead = ((epoch, 0, segment), iterator, next(iterator))

    def chunk(self, n):
        if self.first_chunk is not None:
            (x, y), self.first_chunk = self.first_chunk, None
        else:
            x, y = next(self.iterator)
        assert len(x) == n, (len(x), n)  # the loop and the reader cut the epoch alike
        return self._put(x, y, self.batch_size)

    def mark(self, run):
        run.data_state = {"first": self.first, "segment": self.segment, "reader": self.iterator.get_state()}

    def last(self):
        x, y = self.batches.last(self.epoch)
        return self._put(x, y, self._rows(None))

    def end(self, run):
        self.iterator = None
        run.data_state = None

    def _put(self, x, y, rows):
        """Assembles every process's ``[n, local rows, ...]`` into global ``[n, rows, ...]`` arrays."""
        return tuple(
            jax.make_array_from_process_local_data(self.sharding, a, (a.shape[0], rows, *a.shape[2:])) for a in (x, y)
        )
