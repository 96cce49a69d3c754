"""Running an experiment from the command line: user errors as one line, exit status 2.

A mistake a user can fix (bad data, a bad flag value, a diverged run, a
checkpoint folder of another run) prints ``error: <message>`` on standard
error and exits with status 2, as argparse does for unknown flags; ``--debug``
shows the traceback instead. Anything else is a bug and keeps its traceback.
"""

import sys

import fnn

#: Exceptions that report a user's mistake, not a bug: every fnn error, and a bad value the script itself refuses.
USER_ERRORS = (fnn.Error, ValueError)


def add_flags(parser):
    """Adds ``--debug`` to an experiment's argument parser."""
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


def run(main, argv=None):
    """Calls ``main(argv)``; a user error prints ``error: ...`` and exits 2 unless ``--debug`` is given."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return main(argv)
    except USER_ERRORS as exc:
        if "--debug" in argv:
            raise
        message = " ".join(str(exc).split())  # one line
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


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
