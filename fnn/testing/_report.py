"""The checker's report: one :class:`Check` per check, gathered in a :class:`Report`."""

import dataclasses
import math

from fnn._errors import CheckFailed

__all__ = ["FAILED", "INFO", "PASSED", "SKIPPED", "Check", "Report"]

PASSED, FAILED, SKIPPED, INFO = "passed", "failed", "skipped", "info"


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
        if self.error is None or self.tolerance is None:
            return None
        if self.tolerance == 0:
            return 0.0 if self.error == 0 else math.inf
        return self.error / self.tolerance

    def line(self):
        """This check as one row of :class:`Report`'s table."""
        status = "FAILED" if self.status == FAILED else self.status
        error = "" if self.error is None else f"{self.error:.1e}"
        tolerance = "" if self.tolerance is None else f"{self.tolerance:.1e}"
        return f"{self.name:<22}{status:<9}{error:>9}{tolerance:>11}  {self.where}  {self.detail}".rstrip()


@dataclasses.dataclass(frozen=True)
class Report:
    """Every check of one :func:`fnn.testing.check_module` or :func:`fnn.testing.check_loss` call.

    ``subject`` names what was checked (the module, its input shape and the
    seed); ``checks`` are in the order they ran. ``str(report)`` is a table,
    one row per check; :meth:`assert_ok` raises ``AssertionError`` with that
    table unless every check that ran passed.
    """

    subject: str
    checks: tuple

    @property
    def ok(self):
        """Whether no check failed (skipped and informational ones do not count)."""
        return not self.failed

    @property
    def failed(self):
        """The failed checks."""
        return tuple(c for c in self.checks if c.status == FAILED)

    @property
    def names(self):
        """The checks' names, in order."""
        return tuple(c.name for c in self.checks)

    def __getitem__(self, name):
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"no check named {name!r} in this report; it has {', '.join(self.names)}")

    def worst_ratio(self):
        """The largest ``error / tolerance`` over the checks that measured one (0 if none did)."""
        return max((c.ratio for c in self.checks if c.ratio is not None), default=0.0)

    def assert_ok(self):
        """Raises ``AssertionError`` with the report as its message if a check failed; returns the report."""
        if not self.ok:
            raise CheckFailed(str(self))
        return self

    def __str__(self):
        counts = {s: sum(c.status == s for c in self.checks) for s in (PASSED, FAILED, SKIPPED)}
        verdict = f"{counts[FAILED]} FAILED" if counts[FAILED] else "ok"
        head = (
            f"{self.subject}: {verdict} ({counts[PASSED]} passed, {counts[FAILED]} failed, {counts[SKIPPED]} skipped; "
            "errors relative to the largest reference entry)"
        )
        columns = f"{'check':<22}{'status':<9}{'error':>9}{'tolerance':>11}  where  detail"
        return "\n".join([head, columns, *(c.line() for c in self.checks)])
