"""Training checkpoints with Orbax: the whole state of a run, saved atomically, the last K kept.

A checkpoint holds the parameters, the optimizer state and the run's RNG key
(from which every epoch's data order is derived) as arrays, and, as JSON, the
epoch and step reached, the history so far and the run's configuration. Orbax
writes each checkpoint into a temporary folder and renames it when complete,
so a save interrupted at any moment (even by SIGKILL) leaves the previous
checkpoint intact; unfinished folders are removed the next time the folder is
opened. Needs the ``checkpoint`` extra (``pip install -e '.[checkpoint]'`` in a clone).
"""

import json
from pathlib import Path

import jax

from fnn._errors import CheckpointError, InputError

__all__ = ["Checkpoints"]


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise CheckpointError(
            "checkpoints need orbax-checkpoint: pip install orbax-checkpoint "
            "(in a clone of fnn: pip install -e '.[checkpoint]')"
        ) from None
    return ocp


def _check_folder(folder):
    """Refuses a checkpoint folder that cannot be one: a file, or a path through a file."""
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                what = "is a file" if part == folder else f"lies under {part}, which is a file"
                raise CheckpointError(f"the checkpoint folder {folder} {what}; give a folder (new or of checkpoints)")
            return


def _orbax_finding(exc):
    """Orbax's message on one line, without its advice to pass ``partial_restore``, which fnn does not take."""
    lines = [line for line in str(exc).splitlines() if "partial_restore" not in line]
    return " ".join(" ".join(lines).split())


class Checkpoints:
    """A folder of numbered checkpoints, the newest ``keep`` of them kept.

    Args:
      directory: the folder (created if missing).
      keep: how many checkpoints to keep; older ones are deleted after a newer
        one is complete.
    """

    def __init__(self, directory, *, keep=3):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise InputError(f"keep must be a positive int (checkpoints to keep), got {keep!r}")
        _check_folder(Path(directory))
        ocp = _orbax()
        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(str(directory), options=options)
        self.directory = str(directory)
        self.closed = False

    def latest(self):
        """The number of the newest complete checkpoint, or ``None`` if there is none (a save still being written
        is waited for)."""
        self._manager.wait_until_finished()
        return self._manager.latest_step()

    def save(self, number, state, meta):
        """Saves ``state`` (a pytree of arrays) and ``meta`` (JSON-serialisable) as checkpoint ``number``.

        Asynchronously (Orbax's async checkpointer): the arrays are copied off
        the devices before this returns, so training may go on and change
        them, and the files are written in the background; the next save and
        :meth:`close` wait for the writing. ``meta`` is encoded now too (Orbax
        would encode it in the background, after the caller may have changed
        it). A checkpoint counts only once its folder is renamed into place,
        complete.
        """
        ocp = self._ocp
        try:
            meta = json.loads(json.dumps(meta, allow_nan=True))
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"a checkpoint's meta must be JSON: {exc}; pass lists, dicts, strings and numbers"
            ) from exc
        self._manager.save(
            number, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        )

    def restore(self, number, like):
        """Restores checkpoint ``number`` into the structure, shapes, dtypes and shardings of ``like``.

        Returns:
          ``(state, meta)``.
        """
        ocp = self._ocp
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = self._manager.restore(
                number, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"checkpoint {number} in {self.directory} does not match this run's model or optimizer "
                f"({_orbax_finding(exc)}); resume with the model and optimizer it was saved with, or start this run "
                "in an empty folder"
            ) from exc
        return restored["state"], restored["meta"]

    def close(self):
        """Waits for pending writes and releases the folder; closing twice is harmless."""
        if not self.closed:
            self._manager.close()
            self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
