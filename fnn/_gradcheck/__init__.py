"""The machinery behind :mod:`fnn.testing` and :mod:`fnn.inspect`: both import it, neither imports the other.

- :mod:`~fnn._gradcheck.dtypes`: which leaves are floating, each dtype's eps and tolerance, casting, nudges;
- :mod:`~fnn._gradcheck.gradients`: a module's (or loss's) gradient on each path, compiled once per module;
- :mod:`~fnn._gradcheck.problem`: one draw of a checker problem and its gradients by path;
- :mod:`~fnn._gradcheck.compare`: relative errors, leaf-by-leaf agreement, and the conditioning tolerance;
- :mod:`~fnn._gradcheck.residuals`: what each path keeps between its forward and backward passes;
- :mod:`~fnn._gradcheck.report`: the one report type and its table.
"""
