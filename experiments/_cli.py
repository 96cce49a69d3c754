"""Running an experiment from the command line: user errors as one line, exit status 2.

A mistake a user can fix (bad data, a bad flag value, a diverged run, a
checkpoint folder of another run) prints ``error: <message>`` on standard
error and exits with status 2, as argparse does for unknown flags; Ctrl-C
prints ``interrupted: <where it stopped, the last checkpoint>`` and exits
130; a warning prints as ``warning: <message>``. ``--debug`` shows the
tracebacks instead. Anything else is a bug and keeps its traceback.
Compiled programs are kept between runs (:func:`fnn.use_compilation_cache`)
unless ``--no-compilation-cache`` is given.
"""

import sys
import warnings

import fnn

#: Exceptions that report a user's mistake, not a bug: every fnn error, and a bad value the script itself refuses.
USER_ERRORS = (fnn.Error, ValueError)


def add_flags(parser):
    """Adds ``--debug`` and ``--no-compilation-cache`` to an experiment's argument parser."""
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="compile every program afresh (by default compiled programs are kept in fnn's cache folder: "
        "fnn.use_compilation_cache)",
    )


def _one_line(message, category, filename, lineno, file=None, line=None):
    """``warnings.showwarning`` for the command line: ``warning: <message>``, one line."""
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)


def run(main, argv=None):
    """Calls ``main(argv)``; a user error prints ``error: ...`` and exits 2, an interrupt (Ctrl-C) prints
    ``interrupted: ...`` (where training stopped, its last checkpoint) and exits 130, unless ``--debug`` is given.
    fnn's warnings print as ``warning: ...``, one line each."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    if "--no-compilation-cache" not in argv:
        fnn.use_compilation_cache()  # a second run of a script finds its programs compiled
    if not debug:
        warnings.showwarning = _one_line
    try:
        return main(argv)
    except USER_ERRORS as exc:
        if debug:
            raise
        message = " ".join(str(exc).split())  # one line
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        if debug:
            raise
        print(f"interrupted: {' '.join(str(exc).split())}".rstrip(": "), file=sys.stderr)
        sys.exit(130)


def add_timing_flags(parser, *, rounds, block_s):
    """Adds ``--rounds`` and ``--block-s``, the ``fnn.bench.compare`` settings of a timing study, with defaults."""
    parser.add_argument(
        "--rounds", type=int, default=rounds, help=f"timing rounds (at least {fnn.bench.MIN_ROUNDS}; default {rounds})"
    )
    parser.add_argument(
        "--block-s", type=float, default=block_s, help=f"seconds of back-to-back calls per round (default {block_s})"
    )


def check_timing_flags(parser, args):
    """Refuses a ``--rounds`` below ``fnn.bench.MIN_ROUNDS`` and a ``--block-s`` that is not positive."""
    if args.rounds < fnn.bench.MIN_ROUNDS:
        parser.error(f"--rounds must be at least {fnn.bench.MIN_ROUNDS}, got {args.rounds}")
    if not args.block_s > 0:
        parser.error(f"--block-s must be positive, got {args.block_s}")
