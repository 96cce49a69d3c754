"""The one report of fnn's checks and comparisons: rows of one kind, a table of them, and what each column holds.

:func:`fnn.testing.check_module` and :func:`fnn.testing.check_loss` (rows:
:class:`Check`), :func:`fnn.testing.compare_vjp` (rows:
:class:`fnn._gradcheck.compare.Difference`), :func:`fnn.inspect.wrong_rules`
(rows: :class:`fnn.inspect.Rule`) and :func:`fnn.inspect.compare_paths`
(rows: :class:`fnn.inspect.PathRow`) all return a :class:`Report`.
``str(report)`` is one table, made by :func:`table`, followed by the meaning
of each of its columns.
"""

import dataclasses
import math
from collections.abc import Callable

from fnn._errors import CheckFailed

__all__ = ["CHECK_COLUMNS", "FAILED", "INFO", "PASSED", "SKIPPED", "Check", "Column", "Report", "table"]

PASSED, FAILED, SKIPPED, INFO = "passed", "failed", "skipped", "info"


def ratio(error, tolerance):
    """``error / tolerance`` (0 when both are 0, ``inf`` over a zero tolerance or for a check that raised);
    ``None`` where nothing was measured."""
    if tolerance is None:
        return None
    if error is None:
        return math.inf
    if tolerance == 0:
        return 0.0 if error == 0 else math.inf
    return error / tolerance


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a report's table: its ``name`` (the header), its ``meaning`` (printed below the table) and
    ``cell(row) -> str``."""

    name: str
    meaning: str
    cell: Callable


def table(columns, rows):
    """The lines of a table: a header of the columns' names, then one line per row, columns padded to align."""
    cells = [[c.name for c in columns], *([c.cell(row) for c in columns] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in cells]


def number(value, spec=".1e", empty=""):
    """``value`` formatted by ``spec``, or ``empty`` for ``None``."""
    return empty if value is None else format(value, spec)


@dataclasses.dataclass(frozen=True)
class Check:
    """One check's outcome.

    Attributes:
      name: the check, e.g. ``"backward"`` or ``"dtype[float32]"``.
      status: ``"passed"``, ``"failed"``, ``"skipped"`` (it could not run;
        ``detail`` says why) or ``"info"`` (reported, never failing).
      error: the largest error found, relative to the largest reference entry
        of the gradient leaf it was found in (:func:`fnn.testing.relative_error`);
        ``None`` where nothing is measured.
      tolerance: the tolerance that error was held to, in the same units.
      where: where the largest error (or the failure) is, e.g. ``"dparams['w'][2, 1]"``.
      detail: what was compared, and on failure what was wrong.
    """

    name: str
    status: str
    error: float | None = None
    tolerance: float | None = None
    where: str = ""
    detail: str = ""

    @property
    def passed(self):
        """``True`` or ``False`` for a check that ran, ``None`` for a skipped or informational one."""
        return {PASSED: True, FAILED: False}.get(self.status)

    @property
    def ratio(self):
        """``error / tolerance`` (0 when both are 0, ``inf`` over a zero tolerance); ``None`` if unmeasured."""
        return None if self.error is None else ratio(self.error, self.tolerance)


#: The columns of a checker's report.
CHECK_COLUMNS = (
    Column("check", "the check (see fnn.testing's module doc for what each compares)", lambda c: c.name),
    Column(
        "status",
        "passed, FAILED, skipped (the detail says why) or info (reported, never failing)",
        lambda c: "FAILED" if c.status == FAILED else c.status,
    ),
    Column(
        "error",
        "the largest error, relative to the largest entry of the reference's gradient leaf",
        lambda c: number(c.error),
    ),
    Column("tolerance", "what that error was held to, in the same units", lambda c: number(c.tolerance)),
    Column("where", "the entry of the largest error (or the failure)", lambda c: c.where),
    Column("detail", "what was compared, and on failure what was wrong", lambda c: c.detail),
)


@dataclasses.dataclass(frozen=True)
class Report:
    """Rows of one kind (checks, rules, differences, paths) from one call, with their table.

    Attributes:
      subject: what was checked or compared, e.g. ``"check_module(dense(n_out=3), input (4, 5), seed 0)"``.
      rows: the rows, in the order the producer gives them (its docs say which).
      columns: the ``Column`` of the table ``str(report)`` prints.
      key: the row attribute that names a row: ``report[name]`` is the row whose ``key`` is ``name``.
      settings: how the rows were measured, JSON-ready (``{}`` if nothing to say).
      notes: lines printed after the table (e.g. how compiled code differs).

    A row *fails* when its ``passed`` is ``False`` (``None``: it informs,
    never fails). :attr:`ok` is whether no row failed; :meth:`assert_ok`
    raises :class:`fnn.CheckFailed` with the table unless it is.
    """

    subject: str
    rows: tuple
    columns: tuple
    key: str
    settings: dict = dataclasses.field(default_factory=dict)
    notes: tuple = ()

    @property
    def ok(self):
        """Whether no row failed (skipped and informational rows do not count)."""
        return not self.failed

    @property
    def failed(self):
        """The rows that failed, in order."""
        return tuple(row for row in self.rows if getattr(row, "passed", None) is False)

    @property
    def keys(self):
        """Each row's name (its :attr:`key` attribute), in order."""
        return tuple(getattr(row, self.key) for row in self.rows)

    def __getitem__(self, name):
        """The row named ``name``."""
        for row in self.rows:
            if getattr(row, self.key) == name:
                return row
        raise KeyError(f"no row named {name!r} in this report; it has {', '.join(map(str, self.keys))}")

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)

    def worst_ratio(self):
        """The largest ``error / tolerance`` over the rows that measured one (0 if none did)."""
        return max((r.ratio for r in self.rows if getattr(r, "ratio", None) is not None), default=0.0)

    def assert_ok(self):
        """Raises :class:`fnn.CheckFailed` (an ``AssertionError``) with the report as its message if a row failed;
        returns the report."""
        if not self.ok:
            raise CheckFailed(str(self))
        return self

    def to_dict(self):
        """The report as JSON-ready data: ``subject``, ``settings`` and ``rows`` (each row's fields)."""
        rows = [row.to_dict() if hasattr(row, "to_dict") else dataclasses.asdict(row) for row in self.rows]
        return {"subject": self.subject, "settings": dict(self.settings), "rows": rows}

    def __str__(self):
        """A head line (the subject, and how many rows passed, failed or were skipped), the table, the notes, and
        what each column holds."""
        statuses = [getattr(row, "passed", None) for row in self.rows]
        counts = {"passed": statuses.count(True), "failed": statuses.count(False)}
        skipped = sum(getattr(row, "status", None) == SKIPPED for row in self.rows)
        verdict = f"{counts['failed']} FAILED" if counts["failed"] else "ok"
        tally = f"{counts['passed']} passed, {counts['failed']} failed" + (f", {skipped} skipped" if skipped else "")
        head = f"{self.subject}: {verdict} ({tally})" if any(s is not None for s in statuses) else self.subject
        legend = [f"  {c.name}: {c.meaning}" for c in self.columns]
        return "\n".join([head, *table(self.columns, self.rows), *self.notes, "columns:", *legend])
