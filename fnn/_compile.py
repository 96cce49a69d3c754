"""Compiled programs kept between runs: JAX's persistent compilation cache, in one call.

A short run spends most of its time compiling (a one-epoch run of the
Flax tutorial's CNN on a GPU: 3.4 s of 3.7). JAX can keep every compiled
program on disk and find it again in a later process
(``jax_compilation_cache_dir``); :func:`use_compilation_cache` turns that on
with the settings fnn's programs need, and fnn's command-line experiments
call it first thing.
"""

import os
from pathlib import Path

import jax

__all__ = ["use_compilation_cache"]

#: The environment variable that names the folder (else ``$FNN_CACHE_DIR/jax``, else ``~/.cache/fnn/jax``).
ENV_VAR = "FNN_COMPILATION_CACHE"


def use_compilation_cache(folder=None, *, min_compile_s=0.0):
    """Keeps every compiled program in ``folder``, so that a later run finds it compiled; returns the folder.

    Args:
      folder: where; by default ``$FNN_COMPILATION_CACHE``, else ``jax`` in
        fnn's cache folder (``$FNN_CACHE_DIR``, else ``~/.cache/fnn``).
      min_compile_s: keep only programs that took at least this long to
        compile (JAX's default is 1 s, which would leave out most of fnn's
        small programs; 0 keeps them all).

    Programs are found again by what was compiled (the program, the device,
    JAX's and XLA's versions, the compile options), so a stale entry is
    never used. Call it once, before the first compilation; it changes
    JAX's process-wide configuration (``jax_compilation_cache_dir`` and
    ``jax_persistent_cache_min_compile_time_secs``).

    Example::

        fnn.use_compilation_cache()  # first thing in a script
    """
    if folder is None:
        base = os.environ.get("FNN_CACHE_DIR") or Path.home() / ".cache" / "fnn"
        folder = os.environ.get(ENV_VAR) or Path(base) / "jax"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
