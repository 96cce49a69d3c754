"""Cost and accuracy of forward mode (``jax.jvp``) through each leaf module's and loss's hand-written rule.

The custom path's JVP (``jax.jvp`` through ``module.by_rules.apply``) is the
transpose of the hand-written backward rule; the autodiff path's is JAX's own
JVP of the plain ``jax.numpy`` forward. For every item of
``experiments.module_costs`` (``experiments/_items.py``: same modules, losses and shapes) the JVP of a
leaf module is taken with respect to ``(params, x)`` (the embedding, whose
inputs are integer ids, with respect to its parameters only), that of a loss
with respect to its outputs, the targets held fixed. The tangents are fixed
random normal arrays of each primal's shape and dtype. Per item:

- ``rel_error_float64``: both JVPs evaluated in float64 (``jax.enable_x64``,
  parameters, inputs and tangents cast), ``max |custom - autodiff| /
  max |autodiff|`` over the output; ``rel_error_float32`` the same for the
  float32 functions that are timed;
- time: both jitted float32 JVPs timed with ``fnn.bench.compare`` against
  autodiff (rounds of back-to-back calls, the order alternating): the median
  ratio custom / autodiff of wall time per call, its bootstrap 95% interval
  and verdict (``faster``/``slower`` where the interval excludes 1, else
  ``tie``), the verdict with the harness's 2% practical-equivalence margin
  (``verdict_margin``), and each path's median seconds per call;
- memory: XLA's temporary bytes of each compiled JVP (``fnn.inspect.memory``,
  that is ``memory_analysis().temp_size_in_bytes``);
- ``within_1_2x``: the target, custom JVP time at most 1.2x autodiff's JVP
  (the median ratio <= 1.2).

    python -m experiments.forward_costs --json experiments/results/forward_costs.json \\
        --markdown experiments/results/forward_costs.md
    python -m experiments.forward_costs --items tanh cross_entropy --rounds 6
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from experiments import _cli
from experiments._common import machine, markdown_table, write_json
from experiments._items import (
    ITEMS,
    LOGITS,
    MARGIN,
    PATHS,
    compare_paths,
    interval,
    kib,
    kind,
    measure_items,
    parse_study_args,
    study_fields,
    study_parser,
)
from experiments._items import losses as _losses
from experiments._items import modules as _modules
from experiments._items import problem as _items_problem

TARGET = 1.2  # custom JVP time at most this times autodiff's
TARGET_TEXT = "custom JVP time at most 1.2x autodiff's JVP"


# ---------------------------------------------------------------- the problems
def _tangent(key, tree):
    """A fixed random normal direction for every floating leaf of ``tree`` (``float0`` zeros for integer leaves)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    return treedef.unflatten(
        [
            jax.random.normal(k, a.shape, a.dtype)
            if jnp.issubdtype(a.dtype, jnp.floating)
            else np.zeros(a.shape, jax.dtypes.float0)
            for k, a in zip(keys, leaves)
        ]
    )


def module_problem(name, key):
    """The JVP function of each path and its float32 arguments for leaf module ``name``."""
    module, shape, *vocab = _modules()[name]
    k_init, k_x, k_dp, k_dx = jax.random.split(key, 4)
    out_shape, params = module.init(k_init, shape[1:])
    shapes = f"x {list(shape)} -> y {[shape[0], *out_shape]}"
    dparams = _tangent(k_dp, params)
    if vocab:  # integer ids: data, differentiated with respect to the table only
        x = jax.random.randint(k_x, shape, 0, vocab[0], jnp.int32)

        def jvp(m):
            return lambda params, x, dparams: jax.jvp(lambda p: m.apply(p, x), (params,), (dparams,))[1]

        return {"custom": jvp(module.by_rules), "autodiff": jvp(module)}, (params, x, dparams), shapes
    x = jax.random.normal(k_x, shape, jnp.float32)
    dx = _tangent(k_dx, x)

    def jvp(m):
        return lambda params, x, dparams, dx: jax.jvp(lambda p, z: m.apply(p, z), (params, x), (dparams, dx))[1]

    return {"custom": jvp(module.by_rules), "autodiff": jvp(module)}, (params, x, dparams, dx), shapes


def loss_problem(name, key):
    """Each path's JVP (with respect to the outputs, targets fixed) and its arguments for loss ``name``."""
    loss, kind = _losses()[name]
    k_out, k_y, k_d = jax.random.split(key, 3)
    outputs = 3 * jax.random.normal(k_out, LOGITS, jnp.float32)
    targets = {
        "class": jax.random.randint(k_y, LOGITS[:1], 0, LOGITS[1], jnp.int32),
        "real": jax.random.normal(k_y, LOGITS, jnp.float32),
        "binary": jax.random.bernoulli(k_y, 0.5, LOGITS).astype(jnp.int32),
    }[kind]
    d_outputs = _tangent(k_d, outputs)

    def jvp(f):
        return lambda outputs, targets, d: jax.jvp(lambda o: f(o, targets), (outputs,), (d,))[1]

    shapes = f"outputs {list(LOGITS)}, targets {list(targets.shape)} {targets.dtype}"
    return {"custom": jvp(loss.by_rules.apply), "autodiff": jvp(loss.apply)}, (outputs, targets, d_outputs), shapes


def problem(name, seed=0):
    """Item ``name``'s JVPs, their arguments and its shapes (``_items.problem``)."""
    return _items_problem(name, seed, module_problem, loss_problem)


# ---------------------------------------------------------------- one item
def rel_error(custom, autodiff):
    """``max |custom - autodiff| / max |autodiff|`` over every leaf of the outputs."""
    diff = max(float(jnp.max(jnp.abs(c - a))) for c, a in zip(jax.tree.leaves(custom), jax.tree.leaves(autodiff)))
    scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(autodiff))
    return diff / max(scale, 1e-300)


def float64_error(jvps, args):
    """:func:`rel_error` of the two JVPs evaluated in float64 (floating arguments cast; integer ones kept)."""
    with jax.enable_x64(True):
        wide = jax.tree.map(
            lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
            args,
            is_leaf=lambda a: hasattr(a, "dtype"),
        )
        out = {path: jax.jit(jvps[path])(*wide) for path in PATHS}
        dtypes = {a.dtype for a in jax.tree.leaves(out["custom"])} | {a.dtype for a in jax.tree.leaves(out["autodiff"])}
        if dtypes != {jnp.dtype(jnp.float64)}:
            raise AssertionError(f"the float64 JVPs returned {sorted(map(str, dtypes))}")
        return rel_error(out["custom"], out["autodiff"])


def measure(name, *, rounds, block_s, seed=0):
    """Every measurement of one item, both paths."""
    jvps, args, shapes = problem(name, seed)
    jitted = {path: jax.jit(jvps[path]) for path in PATHS}
    compiled = {path: jitted[path].lower(*args).compile() for path in PATHS}
    temp = {path: fnn.inspect.memory(compiled[path])["temp_bytes"] for path in PATHS}
    err32 = rel_error(compiled["custom"](*args), compiled["autodiff"](*args))
    err64 = float64_error(jvps, args)
    bench = compare_paths(jitted, args, rounds=rounds, block_s=block_s)
    timed = bench["custom"]
    return {
        "item": name,
        "kind": kind(name),
        "shapes": shapes,
        "rel_error_float64": err64,
        "rel_error_float32": err32,
        "time_ratio": {"median": timed.ratio, "ci95": [timed.ci_low, timed.ci_high]},
        "verdict": timed.verdict,
        "margin": MARGIN,
        "verdict_margin": fnn.bench.verdict(timed.ci_low, timed.ci_high, MARGIN),
        "cpu_ratio": timed.cpu_ratio,
        "median_s_custom": timed.median_s,
        "median_s_autodiff": bench["autodiff"].median_s,
        "temp_bytes_custom": temp["custom"],
        "temp_bytes_autodiff": temp["autodiff"],
        "within_1_2x": timed.ratio <= TARGET,
        "rounds": rounds,
        "bench": {path: bench[path].to_dict() for path in PATHS},
    }


# ---------------------------------------------------------------- report


def table(rows):
    header = [
        "item",
        "rel error f64",
        "time c/a [95% CI]",
        "verdict",
        "verdict (2%)",
        "autodiff us",
        "custom us",
        "temp KiB c / a",
        "within 1.2x",
    ]
    return markdown_table(
        header,
        [
            [
                r["item"],
                f"{r['rel_error_float64']:.1e}",
                interval(r["time_ratio"]),
                r["verdict"],
                r["verdict_margin"],
                f"{1e6 * r['median_s_autodiff']:.0f}",
                f"{1e6 * r['median_s_custom']:.0f}",
                f"{kib(r['temp_bytes_custom'])} / {kib(r['temp_bytes_autodiff'])}",
                "yes" if r["within_1_2x"] else "**no**",
            ]
            for r in rows
        ],
    )


def markdown(result):
    """The results as a short markdown report: the target, the machine, the table."""
    target = result["target"]
    missed = ", ".join(target["missed"]) or "none"
    return (
        "# Forward mode: custom JVP against autodiff's JVP\n\n"
        f"Target: {target['statement']}. Met by {len(result['rows']) - len(target['missed'])} of "
        f"{len(result['rows'])} items; missed: {missed}.\n\n"
        f"Device: {result['machine']['device']}; JAX {result['machine']['jax_version']}; {result['rounds']} rounds of "
        f"{result['block_s']} s blocks; load average (1 min) {result['load_average_before'][0]:.2f} before, "
        f"{result['load_average_after'][0]:.2f} after. The ratio is the median over rounds of custom / autodiff "
        "wall time per call, with its bootstrap 95% interval; the relative error is "
        "max |custom - autodiff| / max |autodiff| of the two JVPs in float64.\n\n"
        f"Run: `{result['command']}`\n\n" + table(result["rows"]) + "\n"
    )


def parse_args(argv=None):
    parser = study_parser(__doc__.split("\n\n")[0], rounds=10, block_s=0.1)
    parser.add_argument("--markdown", metavar="PATH", help="write the table as markdown")
    return parse_study_args(parser, argv)


def describe(r):
    """One measured item in a line."""
    return (
        f"{r['item']:>20}: rel error f64 {r['rel_error_float64']:.1e}, time c/a {interval(r['time_ratio'])} "
        f"{r['verdict']}, autodiff {1e6 * r['median_s_autodiff']:.0f} us"
    )


def main(argv=None):
    args = parse_args(argv)
    rows, load_before = measure_items(args, measure, describe)
    missed = [r["item"] for r in rows if not r["within_1_2x"]]
    result = {
        "experiment": "forward_costs",
        "command": "python -m experiments.forward_costs "
        + " ".join(["--items", *args.items] if args.items != list(ITEMS) else [])
        + f" --rounds {args.rounds} --block-s {args.block_s}",
        "jvp": "jax.jvp of module.apply w.r.t. (params, x) (embedding: params only); of a loss w.r.t. its outputs",
        "tangents": "fixed random normal arrays of each primal's shape and dtype",
        "target": {
            "statement": TARGET_TEXT,
            "max_ratio": TARGET,
            "met": not missed,
            "missed": missed,
        },
        "machine": machine(),
        **study_fields(args, load_before),
        "rows": rows,
    }
    result["command"] = " ".join(result["command"].split())
    print()
    print(table(rows))
    print(f"\nmissed {TARGET}x: {missed or 'none'}")
    if args.json:
        write_json(args.json, result)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown(result))
    return result


if __name__ == "__main__":
    _cli.run(main)
