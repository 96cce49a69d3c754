"""Cost of each leaf module's and loss's hand-written backward rule (custom path) against JAX's autodiff.

For every leaf module the gradient is ``jax.grad`` of ``sum(module(params, x) * C)``
with respect to ``(params, x)``, ``C`` a fixed random cotangent; for every
loss it is ``jax.grad`` of the loss with respect to its outputs. The
``custom`` path differentiates ``module.by_rules`` (the leaves differentiated by the
hand-written backward), the ``autodiff`` path the plain ``jax.numpy`` forward.
Per item and path:

- XLA's memory analysis of the compiled gradient (``fnn.inspect.memory``):
  temporary, argument and output bytes;
- XLA's ``cost_analysis``: FLOPs, transcendentals, bytes accessed; and the
  ops of the optimised HLO (``fnn.inspect.hlo_counts``; ``kernels``: the
  entry computation's ops that do work; ``ops``: every non-fusion op in every
  computation, fusion bodies included), with the difference of the op kinds
  custom minus autodiff (``fnn.inspect.op_diff``);
- the residuals the forward pass keeps (``fnn.inspect.residuals``), the
  bytes of those not already an argument;
- step time: both compiled gradients timed with ``fnn.bench.compare``
  against autodiff (rounds of calls, the order alternating), per round the
  ratio custom / autodiff of wall time and of process CPU time; the median
  ratio, its bootstrap 95% interval and the verdict (``faster``/``slower``
  where the interval excludes 1, else ``tie``), and beside it the verdict with
  the harness's practical-equivalence margin of 2% (``verdict_margin``). One
  control item times autodiff against a second compilation of itself.

A leaf with integer inputs (the embedding) is differentiated with respect to
its parameters only. Batch norm is measured in training mode (the batch's
statistics) and in evaluation mode, dropout in training mode, each with its
state and key fixed (``fnn.context.bind``). The attention op is a leaf over ``q`` with ``k`` and
``v`` as its parameters.

    python -m experiments.module_costs --json experiments/results/module_costs.json \\
        --plot experiments/results/module_costs.png
    python -m experiments.module_costs --items gelu layer_norm --rounds 10 --hlo-dir /tmp/hlo

A ratio is called a difference only where its interval excludes 1.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from experiments import _cli
from experiments._common import machine, markdown_table, pyplot, save_figure, write_json
from experiments._items import (
    ATTENTION,
    FEATURES,
    IMAGE,
    LOGITS,
    MARGIN,
    PATHS,
    ROWS,
    SELF_ATTENTION,
    SEQUENCE,
    TOKENS,
    VOCAB,
    WIDTH,
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


def module_problem(name, key):
    """The two gradient functions and their arguments for leaf module ``name``."""
    module, shape, *vocab = _modules()[name]
    k_init, k_x, k_ct = jax.random.split(key, 3)
    out_shape, params = module.init(k_init, shape[1:])
    if vocab:  # integer ids: data, differentiated with respect to the table only
        x = jax.random.randint(k_x, shape, 0, vocab[0], jnp.int32)
    else:
        x = jax.random.normal(k_x, shape, jnp.float32)
    cotangent = jax.random.normal(k_ct, (shape[0], *out_shape), jnp.float32)

    def gradient(m):
        return jax.grad(lambda params, x, c: jnp.sum(m.apply(params, x) * c), argnums=0 if vocab else (0, 1))

    shapes = f"x {list(shape)} -> y {[shape[0], *out_shape]}"
    return {"custom": gradient(module.by_rules), "autodiff": gradient(module)}, (params, x, cotangent), shapes


def loss_problem(name, key):
    """The two gradient functions (with respect to the outputs) and their arguments for loss ``name``."""
    loss, kind = _losses()[name]
    k_out, k_y = jax.random.split(key)
    outputs = 3 * jax.random.normal(k_out, LOGITS, jnp.float32)
    targets = {
        "class": jax.random.randint(k_y, LOGITS[:1], 0, LOGITS[1], jnp.int32),
        "real": jax.random.normal(k_y, LOGITS, jnp.float32),
        "binary": jax.random.bernoulli(k_y, 0.5, LOGITS).astype(jnp.int32),
    }[kind]
    shapes = f"outputs {list(LOGITS)}, targets {list(targets.shape)} {targets.dtype}"
    return {"custom": jax.grad(loss.by_rules.apply), "autodiff": jax.grad(loss.apply)}, (outputs, targets), shapes


def problem(name, seed=0):
    """Item ``name``'s gradient functions, their arguments and its shapes (``_items.problem``)."""
    return _items_problem(name, seed, module_problem, loss_problem)


# ---------------------------------------------------------------- compiled code
def compiled_facts(compiled):
    """Memory, cost (``fnn.inspect.compiled_cost``) and op counts (``fnn.inspect.hlo_counts``) of a gradient."""
    hlo = fnn.inspect.hlo_counts(compiled.as_text())
    return {
        **fnn.inspect.compiled_cost(compiled),
        "kernels": hlo["kernels"],
        "ops": sum(n for kind, n in hlo["ops_all"].items() if not kind.startswith("fusion:")),
        "kernel_kinds": hlo["ops_top"],
        "op_kinds": hlo["ops_all"],
        "hlo": {k: v for k, v in hlo.items() if k not in ("ops_top", "ops_all")},
    }


# ---------------------------------------------------------------- residuals
#: A leaf module's objective ``sum(y * C)`` as a loss of ``(y, C)``, so that ``fnn.inspect.residuals`` lists it.
COTANGENT_DOT = fnn.module.loss("cotangent_dot", forward=lambda y, c: (jnp.sum(y * c), c), backward=lambda c, g: g * c)
#: The identity, so that a loss alone is a model-and-loss pair for ``fnn.inspect.residuals``.
IDENTITY = fnn.nn.identity()


def saved_residuals(name, path, args):
    """What the forward pass of item ``name`` on ``path`` keeps for its backward pass (``fnn.inspect.residuals``)."""
    if name in _modules():
        params, x, cotangent = args
        found = fnn.inspect.residuals(_modules()[name][0], COTANGENT_DOT, path, params, x, cotangent)
    else:
        outputs, targets = args
        found = fnn.inspect.residuals(IDENTITY, _losses()[name][0], path, (), outputs, targets)
    return {k: found[k] for k in ("saved", "total_bytes", "computed_bytes")}


# ---------------------------------------------------------------- one item
def temp_ratio(custom, autodiff):
    """custom / autodiff temporary bytes; 1 when both are 0, inf when only autodiff's is."""
    if autodiff:
        return custom / autodiff
    return 1.0 if not custom else float("inf")


def _ratio_fields(result):
    """The ``fnn.bench`` comparison of one function with the baseline, in this script's field names."""
    return {"median": result.ratio, "ci95": [result.ci_low, result.ci_high], "verdict": result.verdict}


def measure(name, *, rounds, block_s, seed=0, hlo_dir=None):
    """Every measurement of one item, both paths."""
    grads, args, shapes = problem(name, seed)
    jitted = {path: jax.jit(grads[path]) for path in PATHS}
    compiled = {path: jitted[path].lower(*args).compile() for path in PATHS}
    out_c, out_a = (compiled[p](*args) for p in PATHS)
    err = max(
        float(jnp.max(jnp.abs(c - a)) / jnp.maximum(jnp.max(jnp.abs(a)), 1e-30))
        for c, a in zip(jax.tree.leaves(out_c), jax.tree.leaves(out_a))
    )
    facts = {path: compiled_facts(compiled[path]) for path in PATHS}
    for path in PATHS:
        facts[path]["residuals"] = saved_residuals(name, path, args)
        if hlo_dir is not None:
            Path(hlo_dir).mkdir(parents=True, exist_ok=True)
            (Path(hlo_dir) / f"{name}.{path}.hlo.txt").write_text(compiled[path].as_text())
    bench = compare_paths(jitted, args, rounds=rounds, block_s=block_s)
    c, a, timed = facts["custom"], facts["autodiff"], bench["custom"]
    return {
        "item": name,
        "kind": kind(name),
        "shapes": shapes,
        "max_rel_diff": err,
        "custom": c,
        "autodiff": a,
        "op_diff_custom_minus_autodiff": fnn.inspect.op_diff(c["op_kinds"], a["op_kinds"]),
        "temp_bytes_ratio": temp_ratio(c["temp_bytes"], a["temp_bytes"]),
        "flops_ratio": c["flops"] / a["flops"] if a["flops"] else None,
        "time_ratio_wall": _ratio_fields(timed),
        "time_ratio_cpu": {"median": timed.cpu_ratio},
        "verdict": timed.verdict,
        "margin": MARGIN,
        "verdict_margin": fnn.bench.verdict(timed.ci_low, timed.ci_high, MARGIN),
        "step_s_custom_median": bench["custom"].median_s,
        "step_s_autodiff_median": bench["autodiff"].median_s,
        "cpu_s_custom_median": bench["custom"].cpu_median_s,
        "cpu_s_autodiff_median": bench["autodiff"].cpu_median_s,
        "calls_per_block": {path: bench[path].calls for path in PATHS},
        "rounds": rounds,
        "bench": {path: bench[path].to_dict() for path in PATHS},
        "custom_temp_exceeds_autodiff": c["temp_bytes"] > a["temp_bytes"],
        "custom_slower": timed.verdict == "slower",
        "custom_slower_beyond_margin": fnn.bench.verdict(timed.ci_low, timed.ci_high, MARGIN) == "slower",
        "custom_faster": timed.verdict == "faster",
    }


def control(*, rounds, block_s, seed=0, name="gelu"):
    """Autodiff against a second compilation of itself: the ratio that measures nothing but noise."""
    grads, args, _ = problem(name, seed)
    fns = {"autodiff": jax.jit(grads["autodiff"]), "again": jax.jit(lambda *x: grads["autodiff"](*x))}
    bench = fnn.bench.compare(fns, *args, baseline="autodiff", rounds=rounds, block_s=block_s)
    return {
        "item": f"{name} autodiff / autodiff",
        "time_ratio_wall": _ratio_fields(bench["again"]),
        "time_ratio_cpu": {"median": bench["again"].cpu_ratio},
        "verdict": bench["again"].verdict,
        "calls_per_block": {k: r.calls for k, r in bench.items()},
        "bench": {k: r.to_dict() for k, r in bench.items()},
    }


# ---------------------------------------------------------------- report


def table(rows):
    header = [
        "item",
        "temp KiB custom / autodiff",
        "arg KiB",
        "MFLOP custom / autodiff",
        "kernels c / a",
        "ops c / a",
        "autodiff us",
        "wall ratio c/a [95% CI]",
        "verdict",
        "verdict (2%)",
        "CPU ratio c/a",
    ]
    return markdown_table(
        header,
        [
            [
                r["item"],
                f"{kib(r['custom']['temp_bytes'])} / {kib(r['autodiff']['temp_bytes'])}",
                kib(r["custom"]["arg_bytes"]),
                f"{r['custom']['flops'] / 1e6:.2f} / {r['autodiff']['flops'] / 1e6:.2f}",
                f"{r['custom']['kernels']} / {r['autodiff']['kernels']}",
                f"{r['custom']['ops']} / {r['autodiff']['ops']}",
                f"{1e6 * r['step_s_autodiff_median']:.0f}",
                interval(r["time_ratio_wall"]),
                r["verdict"],
                r["verdict_margin"],
                f"{r['time_ratio_cpu']['median']:.2f}",
            ]
            for r in rows
        ],
    )


def plot(path, rows, ctrl, title):
    plt = pyplot()
    names = [r["item"] for r in rows] + (["control"] if ctrl else [])
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, max(4.5, 1.5 + 0.25 * len(names))))
    ratios = [r["time_ratio_wall"] for r in rows] + ([ctrl["time_ratio_wall"]] if ctrl else [])
    y = np.arange(len(names))
    med = np.array([r["median"] for r in ratios])
    lo, hi = med - np.array([r["ci95"][0] for r in ratios]), np.array([r["ci95"][1] for r in ratios]) - med
    ax_t.errorbar(med, y, xerr=[lo, hi], fmt="o", capsize=3)
    ax_t.axvline(1.0, color="k", lw=0.8)
    ax_t.set(yticks=y, yticklabels=names, xlabel="step time custom / autodiff (median, 95% CI)", title="time")
    ax_t.invert_yaxis()
    temp = [(r["custom"]["temp_bytes"] / 2**20, r["autodiff"]["temp_bytes"] / 2**20) for r in rows]
    y = np.arange(len(rows))
    ax_m.barh(y - 0.2, [t[0] for t in temp], 0.4, label="custom")
    ax_m.barh(y + 0.2, [t[1] for t in temp], 0.4, label="autodiff")
    ax_m.set(
        yticks=y, yticklabels=[r["item"] for r in rows], xlabel="temporary MiB (XLA memory analysis)", title="memory"
    )
    ax_m.invert_yaxis()
    ax_m.legend()
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3, axis="x")
    save_figure(fig, path, title)


def parse_args(argv=None):
    parser = study_parser(__doc__.split("\n\n")[0], rounds=30, block_s=0.05)
    parser.add_argument("--no-control", action="store_true", help="skip the autodiff-against-itself control")
    parser.add_argument("--hlo-dir", help="write each compiled gradient's optimised HLO here")
    parser.add_argument("--plot", metavar="PATH", help="write the ratios and temporary bytes as PNG")
    return parse_study_args(parser, argv)


def describe(r):
    """One measured item in a line."""
    return (
        f"{r['item']:>16}: temp {kib(r['custom']['temp_bytes'])} / {kib(r['autodiff']['temp_bytes'])} KiB, "
        f"time c/a {interval(r['time_ratio_wall'])} {r['verdict']} (CPU {r['time_ratio_cpu']['median']:.2f}), "
        f"autodiff {1e6 * r['step_s_autodiff_median']:.0f} us"
    )


def main(argv=None):
    args = parse_args(argv)
    rows, load_before = measure_items(args, measure, describe, hlo_dir=args.hlo_dir)
    ctrl = None if args.no_control else control(rounds=args.rounds, block_s=args.block_s, seed=args.seed)
    if ctrl:
        print(
            f"control {ctrl['item']}: {interval(ctrl['time_ratio_wall'])} {ctrl['verdict']} "
            f"(CPU {ctrl['time_ratio_cpu']['median']:.2f})"
        )
    print()
    print(table(rows))
    result = {
        "experiment": "module_costs",
        "shapes": {
            "elementwise, layer_norm, dense, softmax": [ROWS, FEATURES],
            "conv2d, 2-D pooling, group_norm": list(IMAGE),
            "losses": list(LOGITS),
            "conv1d, 1-D pooling": list(SEQUENCE),
            "embedding ids, vocabulary, width": [list(TOKENS), VOCAB, WIDTH],
            "attention q, k, v": list(ATTENTION),
            "self_attention (4 heads of 64)": list(SELF_ATTENTION),
        },
        "gradient": "jax.grad of sum(module(params, x) * C) w.r.t. (params, x); of the loss w.r.t. its outputs",
        **machine(),
        **study_fields(args, load_before),
        "rows": rows,
        "control": ctrl,
        "flagged": {
            "custom_temp_exceeds_autodiff": [r["item"] for r in rows if r["custom_temp_exceeds_autodiff"]],
            "custom_slower": [r["item"] for r in rows if r["custom_slower"]],
            "custom_slower_beyond_margin": [r["item"] for r in rows if r["custom_slower_beyond_margin"]],
            "custom_faster": [r["item"] for r in rows if r["custom_faster"]],
        },
    }
    print(f"\nflagged: {result['flagged']}")
    if args.json:
        write_json(args.json, result)
    if args.plot:
        plot(args.plot, rows, ctrl, "hand-written rules against autodiff, per leaf module and loss")
    return result


if __name__ == "__main__":
    _cli.run(main)
