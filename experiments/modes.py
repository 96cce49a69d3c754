"""Forward mode against reverse mode, measured: the notes' "why reverse mode?".

For an MLP ``n_in -> 256 -> 256 -> n_out`` (ReLU, no biases, float32) and a
single example ``x[n_in]``, as ``n_in`` varies (``n_out = 10``) and as
``n_out`` varies (``n_in = 784``), this times and counts the work of:

1. the full Jacobian ``[n_out, n_in]`` of the network by forward mode
   (``n_in`` JVPs) and by reverse mode (``n_out`` VJPs) on every path:
   ``jax.jacfwd``/``jax.jacrev`` of the plain code (``autodiff``) and through
   the hand-written rules (``custom``: forward mode by each rule's
   transpose), and the notes' forward and reverse sweeps (``backprop``:
   ``fnn.jvp(path="backprop")`` along every input direction, the modules'
   backward functions from every output direction);
2. the same Jacobian from each layer's materialised Jacobian (``W^T`` for a
   dense layer, ``diag(1[z > 0])`` for a ReLU at its input ``z``), the chain
   ``J5 J4 J3 J2 J1`` multiplied from the input side (``J5 (J4 (... J1))``,
   every product ``[*, n_in]``, like forward mode) and from the output side
   (``((J5 J4) ...) J1``, every product ``[n_out, *]``, like reverse mode);
3. the gradient of a scalar loss (cross-entropy of the logits against a label)
   with respect to ``x``: by one VJP (``jax.grad``; the notes' reverse sweep
   through the modules' backward functions) and by forward mode
   (``jax.jacfwd`` of the scalar loss: ``n_in`` JVPs); and, for scale, the
   gradient with respect to every weight by ``fnn.value_and_grad(...,
   path="backprop")``. The loss alone (one forward pass) is the unit.

Per configuration every function is timed by :func:`fnn.bench.compare`
(interleaved rounds, order alternating; medians, quartiles, and ratios to the
forward pass with bootstrap intervals), and pairs of interest (jacfwd/jacrev,
input/output chain, forward/reverse gradient) are compared round by round from
the same timings. Beside each time: XLA's ``cost_analysis`` of the compiled
function (FLOPs, bytes accessed) and its temporary bytes, so that the
conclusions rest on work counts as well as on times taken on a shared
machine. A memory probe compiles (does not time) the loss, its reverse-mode
gradient and one forward-mode JVP for deeper networks at a batch of rows and
records the temporary bytes each keeps. Finally, forward mode through the
hand-written rules (``jax.jvp``, ``jax.jacfwd`` over ``model.by_rules.apply``,
and the backprop path's forward sweep ``fnn.jvp(model, path="backprop")``)
is compared with autodiff's.

    python -m experiments.modes --json experiments/results/modes.json \\
        --plot experiments/results/modes.png
    python -m experiments.modes --quick        # seconds: tiny sizes, few rounds
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from experiments import _cli
from experiments._common import device_description, markdown_table, pyplot, save_figure, write_json
from fnn.testing import relative_error

HIDDEN = (256, 256)
N_IN_SWEEP, N_OUT_AT = (16, 64, 256, 784, 1024, 4096), 10
N_OUT_SWEEP, N_IN_AT = (1, 4, 16, 64, 256, 1024, 4096), 784
MEMORY_DEPTHS, MEMORY_BATCH = (1, 2, 4, 8, 16), 128

QUICK = {
    "hidden": (16, 16),
    "n_in": (8, 32),
    "n_out_at": 4,
    "n_out": (4,),
    "n_in_at": 8,
    "rounds": 6,
    "block_s": 0.002,
    "memory_depths": (1,),
    "memory_batch": 8,
}

#: name -> what the function computes; every function is ``f(params, x, label)``.
METHODS = {
    "forward": "the loss alone: one forward pass (the unit of cost)",
    "jacfwd": "Jacobian [n_out, n_in] by jax.jacfwd: n_in JVPs",
    "jacrev": "Jacobian [n_out, n_in] by jax.jacrev: n_out VJPs",
    "chain_from_input": "Jacobian as the product of the layers' Jacobians, multiplied from the input side",
    "chain_from_output": "Jacobian as the product of the layers' Jacobians, multiplied from the output side",
    "grad": "dL/dx by jax.grad: one VJP",
    "backprop_dx": "dL/dx by the notes' reverse sweep (modules' forward, then backward functions)",
    "backprop_params": "L and dL/dW for every weight by fnn.value_and_grad(path='backprop')",
    "jacfwd_loss": "dL/dx by jax.jacfwd of the scalar loss: n_in JVPs",
    "jacfwd_custom": "Jacobian by jax.jacfwd through the hand-written rules (their transposes): n_in JVPs",
    "jacrev_custom": "Jacobian by jax.jacrev through the hand-written rules: n_out VJPs",
    "jacfwd_backprop": "Jacobian by the notes' forward sweep (fnn.jvp(path='backprop')), one per input direction",
    "jacrev_backprop": "Jacobian by the notes' reverse sweep (the backward functions), one per output direction",
}
#: The Jacobian by each path: (forward mode, reverse mode).
BY_PATH = {
    "autodiff": ("jacfwd", "jacrev"),
    "custom": ("jacfwd_custom", "jacrev_custom"),
    "backprop": ("jacfwd_backprop", "jacrev_backprop"),
}
JACOBIAN = ("jacfwd", "jacrev", "chain_from_input", "chain_from_output", *BY_PATH["custom"], *BY_PATH["backprop"])
GRADIENT = ("forward", "grad", "backprop_dx", "backprop_params", "jacfwd_loss")
#: (numerator, denominator) pairs compared round by round.
PAIRS = (
    ("jacfwd", "jacrev"),
    ("chain_from_input", "chain_from_output"),
    ("jacfwd_loss", "grad"),
    BY_PATH["custom"],
    BY_PATH["backprop"],
)


# ---------------------------------------------------------------- the Jacobian from the layers' Jacobians
def layer_jacobian(layer, params, z, how="explicit"):
    """The Jacobian ``d layer(z) / dz`` of one layer of a single example ``z[n]``, as a matrix ``[k, n]``.

    ``how="explicit"``: ``W^T`` for a dense layer (a bias does not change
    it) and ``diag(1[z > 0])`` for a ReLU (``relu'(0) = 0``); any other layer
    falls back to ``jax.jacfwd``. ``how="jacfwd"``: ``jax.jacfwd`` of the
    layer's ``apply`` at ``z`` for every layer (``n`` JVPs each).
    """
    if how == "explicit" and layer.name == "dense":
        return params["w"].T
    if how == "explicit" and layer.name == "relu":
        return jnp.diag((z > 0).astype(z.dtype))
    if how not in ("explicit", "jacfwd"):
        raise ValueError(f"how must be 'explicit' or 'jacfwd', got {how!r}")
    return jax.jacfwd(layer.apply, argnums=1)(params, z)


def layer_jacobians(model, params, x, how="explicit"):
    """Each layer's Jacobian at its input on the forward pass of one example ``x[n_in]``, first layer first."""
    jacobians = []
    for layer, p in zip(model.children, params):
        jacobians.append(layer_jacobian(layer, p, x, how))
        x = layer.apply(p, x)
    return jacobians


def chain_from_input(jacobians):
    """``J_L (... (J_2 J_1))``: every partial product is ``[*, n_in]``, as forward mode carries it."""
    product = jacobians[0]
    for jacobian in jacobians[1:]:
        product = jacobian @ product
    return product


def chain_from_output(jacobians):
    """``((J_L J_(L-1)) ...) J_1``: every partial product is ``[n_out, *]``, as reverse mode carries it."""
    product = jacobians[-1]
    for jacobian in reversed(jacobians[:-1]):
        product = product @ jacobian
    return product


# ---------------------------------------------------------------- the functions measured
def methods(model, loss=fnn.losses.cross_entropy):
    """``{name: f(params, x, label)}`` for every name of :data:`METHODS`, for one example ``x[n_in]``."""

    def network(params, x):
        return model.apply(params, x)

    def objective(x, params, label):
        return loss.apply(model.apply(params, x), label)

    sweep = fnn.value_and_grad(model, loss, path="backprop", inputs=True)

    def backprop_dx(params, x, label):
        return sweep(params, x, label)[1][1]

    backprop_params = fnn.value_and_grad(model, loss, path="backprop")
    forward_sweep = fnn.jvp(model, path="backprop")

    def jacfwd_backprop(params, x, label):  # the forward sweep along every input direction
        return jax.vmap(lambda u: forward_sweep(params, x, dx=u)[1], out_axes=-1)(jnp.eye(x.shape[-1], dtype=x.dtype))

    def jacrev_backprop(params, x, label):  # the reverse sweep from every output direction
        y, saved = model.forward(params, x)
        return jax.vmap(lambda g: model.backward(params, saved, g)[1])(jnp.eye(y.shape[-1], dtype=y.dtype))

    def custom_network(params, x):
        return model.by_rules.apply(params, x)

    return {
        "forward": lambda params, x, label: objective(x, params, label),
        "jacfwd": lambda params, x, label: jax.jacfwd(network, argnums=1)(params, x),
        "jacrev": lambda params, x, label: jax.jacrev(network, argnums=1)(params, x),
        "chain_from_input": lambda params, x, label: chain_from_input(layer_jacobians(model, params, x)),
        "chain_from_output": lambda params, x, label: chain_from_output(layer_jacobians(model, params, x)),
        "grad": lambda params, x, label: jax.grad(objective)(x, params, label),
        "backprop_dx": backprop_dx,
        "backprop_params": backprop_params,
        "jacfwd_loss": lambda params, x, label: jax.jacfwd(objective)(x, params, label),
        "jacfwd_custom": lambda params, x, label: jax.jacfwd(custom_network, argnums=1)(params, x),
        "jacrev_custom": lambda params, x, label: jax.jacrev(custom_network, argnums=1)(params, x),
        "jacfwd_backprop": jacfwd_backprop,
        "jacrev_backprop": jacrev_backprop,
    }


def problem(n_in, n_out, hidden=HIDDEN, *, seed=0, dtype=jnp.float32):
    """The model and its arguments ``(params, x[n_in], label)`` for one configuration."""
    model = fnn.nn.mlp([n_in, *hidden, n_out], dtype=dtype)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), n_in), n_out)
    k_init, k_x = jax.random.split(key)
    _, params = model.init(k_init, (n_in,))
    x = jax.random.normal(k_x, (n_in,), dtype)
    return model, (params, x, jnp.asarray(0, jnp.int32))


def measure(n_in, n_out, *, hidden, rounds, block_s, seed=0):
    """Times, work counts and agreement of every method at one configuration."""
    model, args = problem(n_in, n_out, hidden, seed=seed)
    fns = {name: jax.jit(fn) for name, fn in methods(model).items()}
    facts, outputs = {}, {}
    for name, fn in fns.items():
        compiled = fn.lower(*args).compile()  # the same compilation fnn.bench.compare reuses
        facts[name] = fnn.inspect.compiled_cost(compiled)
        outputs[name] = jax.block_until_ready(compiled(*args))
    timings = fnn.bench.compare(fns, *args, baseline="forward", rounds=rounds, block_s=block_s, seed=seed)
    unit = facts["forward"]["flops"]
    for name in fns:
        facts[name]["flops_per_forward"] = facts[name]["flops"] / unit if unit else float("nan")
    pairs = {}
    for a, b in PAIRS:
        pair = fnn.bench.summarize(
            {n: timings[n].wall_s for n in (b, a)}, {n: timings[n].cpu_s for n in (b, a)}, baseline=b, seed=seed
        )[a]
        pairs[f"{a}/{b}"] = {
            "ratio": pair.ratio,
            "ci_low": pair.ci_low,
            "ci_high": pair.ci_high,
            "cpu_ratio": pair.cpu_ratio,
            "verdict": pair.verdict,
            "flop_ratio": facts[a]["flops"] / facts[b]["flops"],
        }
    return {
        "n_in": n_in,
        "n_out": n_out,
        "sizes": [n_in, *hidden, n_out],
        "methods": {name: {**facts[name], **timings[name].to_dict()} for name in fns},
        "pairs": pairs,
        "max_rel_diff": {
            **{name: relative_error(outputs[name], outputs["jacrev"]) for name in JACOBIAN if name != "jacrev"},
            **{name: relative_error(outputs[name], outputs["grad"]) for name in ("backprop_dx", "jacfwd_loss")},
        },
    }


# ---------------------------------------------------------------- memory and the custom path
def memory_probe(depths, *, batch, width=HIDDEN[0], n_in=N_IN_AT, n_out=N_OUT_AT, seed=0):
    """Temporary bytes of the loss, its reverse-mode gradient and one JVP, for MLPs of growing depth.

    At ``batch`` rows: ``forward`` is the loss; ``grad_params`` is
    ``jax.grad`` of the loss with respect to every weight (reverse mode keeps
    every layer's activations for the backward pass); ``jvp_x`` is one
    forward-mode directional derivative of the loss along a direction of the
    input (it carries one tangent beside the values, and keeps neither).
    Compiled only, not timed.
    """
    rows = []
    for depth in depths:
        model = fnn.nn.mlp([n_in, *([width] * depth), n_out])
        k_init, k_x, k_v = jax.random.split(jax.random.fold_in(jax.random.key(seed), depth), 3)
        _, params = model.init(k_init, (n_in,))
        x, v = (jax.random.normal(k, (batch, n_in), jnp.float32) for k in (k_x, k_v))
        labels = jnp.zeros((batch,), jnp.int32)

        def objective(params, x, labels, model=model):
            return fnn.losses.cross_entropy.apply(model.apply(params, x), labels)

        fns = {
            "forward": objective,
            "grad_params": jax.grad(objective),
            "jvp_x": lambda params, x, labels, v, objective=objective: jax.jvp(
                lambda x: objective(params, x, labels), (x,), (v,)
            ),
        }
        row = {"depth": depth, "activation_bytes_per_layer": batch * width * 4}
        for name, fn in fns.items():
            call_args = (params, x, labels, v) if name == "jvp_x" else (params, x, labels)
            row[name] = fnn.inspect.compiled_cost(jax.jit(fn).lower(*call_args).compile())
        rows.append(row)
    return {"batch": batch, "width": width, "n_in": n_in, "n_out": n_out, "rows": rows}


def custom_path_forward_mode(n_in, n_out, hidden):
    """Forward mode through the hand-written rules, against autodiff's: ``jax.jvp`` and ``jax.jacfwd`` through
    ``model.by_rules.apply``, and the backprop path's forward sweep (``fnn.jvp(model, path="backprop")``)."""
    model, (params, x, _) = problem(n_in, n_out, hidden)
    u = jnp.ones_like(x)
    plain, custom = (lambda x: model.apply(params, x)), (lambda x: model.by_rules.apply(params, x))
    jvp = jax.jvp(plain, (x,), (u,))[1]
    pairs = {
        "jax.jvp": (jax.jvp(custom, (x,), (u,))[1], jvp),
        "jax.jacfwd": (jax.jacfwd(custom)(x), jax.jacfwd(plain)(x)),
        "fnn.jvp(path='backprop')": (fnn.jvp(model, path="backprop")(params, x, dx=u)[1], jvp),
    }
    return {
        name: {"raised": None, "max_rel_diff_vs_autodiff": float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))}
        for name, (got, want) in pairs.items()
    }


# ---------------------------------------------------------------- report
def _ms(seconds):
    return f"{seconds * 1e3:.3g}"


def _mflop(flops):
    return f"{flops / 1e6:.3g}"


def _pair(pair):
    return f"{pair['ratio']:.3g} [{pair['ci_low']:.3g}, {pair['ci_high']:.3g}]"


def tables(points):
    """The Jacobian and gradient tables (markdown) of every configuration."""
    jac_rows, grad_rows = [], []
    for p in points:
        m, pairs = p["methods"], p["pairs"]
        jac_rows.append(
            [
                p["n_in"],
                p["n_out"],
                *(_ms(m[n]["median_s"]) for n in JACOBIAN),
                _pair(pairs["jacfwd/jacrev"]),
                _pair(pairs["chain_from_input/chain_from_output"]),
                _pair(pairs["jacfwd_custom/jacrev_custom"]),
                _pair(pairs["jacfwd_backprop/jacrev_backprop"]),
                *(_mflop(m[n]["flops"]) for n in JACOBIAN),
            ]
        )
        grad_rows.append(
            [
                p["n_in"],
                p["n_out"],
                *(_ms(m[n]["median_s"]) for n in GRADIENT),
                _pair(pairs["jacfwd_loss/grad"]),
                *(f"{m[n]['flops_per_forward']:.3g}" for n in GRADIENT[1:]),
            ]
        )
    jac = markdown_table(
        [
            "n_in",
            "n_out",
            "jacfwd ms",
            "jacrev ms",
            "chain in ms",
            "chain out ms",
            "custom fwd ms",
            "custom rev ms",
            "backprop fwd ms",
            "backprop rev ms",
            "jacfwd/jacrev [95% CI]",
            "chain in/out [95% CI]",
            "custom fwd/rev [95% CI]",
            "backprop fwd/rev [95% CI]",
            "jacfwd MFLOP",
            "jacrev MFLOP",
            "chain in MFLOP",
            "chain out MFLOP",
            "custom fwd MFLOP",
            "custom rev MFLOP",
            "backprop fwd MFLOP",
            "backprop rev MFLOP",
        ],
        jac_rows,
    )
    grad = markdown_table(
        [
            "n_in",
            "n_out",
            "forward ms",
            "grad ms",
            "backprop dx ms",
            "backprop params ms",
            "jacfwd(loss) ms",
            "jacfwd(loss)/grad [95% CI]",
            "grad FLOP/fwd",
            "backprop dx FLOP/fwd",
            "backprop params FLOP/fwd",
            "jacfwd(loss) FLOP/fwd",
        ],
        grad_rows,
    )
    return jac, grad


def memory_table(memory):
    rows = [
        [r["depth"], *(f"{r[n]['temp_bytes'] / 1024:.0f}" for n in ("forward", "grad_params", "jvp_x"))]
        for r in memory["rows"]
    ]
    return markdown_table(["hidden layers", "loss temp KiB", "grad (reverse) temp KiB", "jvp (forward) temp KiB"], rows)


def plot(path, result):
    """Time and FLOPs against n_in and against n_out, log-log, one line per method."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 4, figsize=(22, 9))
    for row, group in enumerate((JACOBIAN, GRADIENT)):
        for col, (sweep, fixed) in enumerate((("n_in", "n_out"), ("n_out", "n_in"))):
            points = sorted((p for p in result["points"] if sweep in p["sweeps"]), key=lambda p: p[sweep])
            if not points:
                continue
            xs = [p[sweep] for p in points]
            for i, name in enumerate(group):
                ms = np.array([p["methods"][name]["median_s"] for p in points]) * 1e3
                low = ms - np.array([p["methods"][name]["q1_s"] for p in points]) * 1e3
                high = np.array([p["methods"][name]["q3_s"] for p in points]) * 1e3 - ms
                axes[row, col].errorbar(xs, ms, yerr=[low, high], marker="o", color=f"C{i}", capsize=2, label=name)
                flops = [p["methods"][name]["flops"] for p in points]
                axes[row, col + 2].plot(xs, flops, marker="o", color=f"C{i}", label=name)
            label = f"{fixed} = {points[0][fixed]}"
            what = "Jacobian" if row == 0 else "gradient of the loss"
            axes[row, col].set(
                xscale="log",
                yscale="log",
                xlabel=sweep,
                ylabel="median ms (quartiles)",
                title=f"{what}: time vs {sweep} ({label})",
            )
            axes[row, col + 2].set(
                xscale="log",
                yscale="log",
                xlabel=sweep,
                ylabel="FLOPs (XLA cost_analysis)",
                title=f"{what}: FLOPs vs {sweep} ({label})",
            )
            for ax in (axes[row, col], axes[row, col + 2]):
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=8)
    save_figure(
        fig,
        path,
        f"Forward vs reverse mode, MLP n_in-{'-'.join(map(str, result['hidden']))}-n_out, "
        f"one example, {result['device']}",
    )


# ---------------------------------------------------------------- command line
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run: tiny sizes, few rounds")
    parser.add_argument("--hidden", type=int, nargs="+", default=list(HIDDEN), help="hidden widths")
    parser.add_argument("--n-in", type=int, nargs="+", default=list(N_IN_SWEEP), help="inputs of the n_in sweep")
    parser.add_argument("--n-out-at", type=int, default=N_OUT_AT, help="n_out during the n_in sweep")
    parser.add_argument("--n-out", type=int, nargs="+", default=list(N_OUT_SWEEP), help="outputs of the n_out sweep")
    parser.add_argument("--n-in-at", type=int, default=N_IN_AT, help="n_in during the n_out sweep")
    parser.add_argument("--rounds", type=int, default=10, help="timing rounds per configuration")
    parser.add_argument("--block-s", type=float, default=0.05, help="seconds of calls per method per round")
    parser.add_argument("--memory-depths", type=int, nargs="+", default=list(MEMORY_DEPTHS))
    parser.add_argument("--memory-batch", type=int, default=MEMORY_BATCH)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write time and FLOPs vs n_in and n_out as PNG")
    _cli.add_flags(parser)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, list(value) if isinstance(value, tuple) else value)
    return args


def configurations(args):
    """The unique ``(n_in, n_out)`` pairs of both sweeps, each with the sweeps it belongs to."""
    points = {}
    for n_in in args.n_in:
        points.setdefault((n_in, args.n_out_at), []).append("n_in")
    for n_out in args.n_out:
        points.setdefault((args.n_in_at, n_out), []).append("n_out")
    return points


def main(argv=None):
    args = parse_args(argv)
    hidden = tuple(args.hidden)
    load_before, start = os.getloadavg(), time.perf_counter()
    points = []
    for (n_in, n_out), sweeps in configurations(args).items():
        point = measure(n_in, n_out, hidden=hidden, rounds=args.rounds, block_s=args.block_s, seed=args.seed)
        points.append({"sweeps": sweeps, **point})
        m, pairs = point["methods"], point["pairs"]
        print(
            f"n_in {n_in:5d} n_out {n_out:5d}: jacfwd {_ms(m['jacfwd']['median_s'])} ms, "
            f"jacrev {_ms(m['jacrev']['median_s'])} ms (ratio {_pair(pairs['jacfwd/jacrev'])}); "
            f"grad {_ms(m['grad']['median_s'])} ms, jacfwd(loss) {_ms(m['jacfwd_loss']['median_s'])} ms",
            flush=True,
        )
    memory = memory_probe(
        args.memory_depths,
        batch=args.memory_batch,
        width=hidden[0],
        n_in=args.n_in_at,
        n_out=args.n_out_at,
        seed=args.seed,
    )
    result = {
        "device": device_description(),
        "jax_version": jax.__version__,
        "dtype": "float32",
        "hidden": list(hidden),
        "activation": "relu",
        "loss": "cross_entropy (label 0)",
        "quick": args.quick,
        "rounds": args.rounds,
        "block_s": args.block_s,
        "methods": METHODS,
        "points": points,
        "memory": memory,
        "custom_path_forward_mode": custom_path_forward_mode(args.n_in_at, args.n_out_at, hidden),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "wall_s": time.perf_counter() - start,
    }
    jac, grad = tables(points)
    print("\nJacobian [n_out, n_in]\n" + jac + "\n\ndL/dx of the scalar loss\n" + grad)
    print("\nTemporary bytes at a batch of", memory["batch"], "rows\n" + memory_table(memory))
    for name, record in result["custom_path_forward_mode"].items():
        print(f"\n{name} through the hand-written rules: {record['max_rel_diff_vs_autodiff']:.1e} from autodiff's")
    if args.json:
        write_json(args.json, result)
    if args.plot:
        plot(args.plot, result)
    return result


if __name__ == "__main__":
    _cli.run(main)
