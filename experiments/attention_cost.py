"""Where writing the backward by hand wins: attention's memory and step time, hand-written rule against autodiff.

The gradient of ``sum(attention(q, k, v) * C)`` with respect to ``q``, ``k``
and ``v`` (``C`` a fixed random cotangent; ``[B, T, H, D]`` inputs, ``T = S``)
at several sequence lengths, by

- ``custom``: ``fnn.ops.custom.attention``, the hand-written rule: forward and
  backward over tiles (``fnn.nn._attention.tile_shape``), keeping ``q``, ``k``,
  ``v``, ``o`` and one log-sum-exp per row, and recomputing the
  probabilities ``P`` in the backward;
- ``autodiff``: ``fnn.ops.autodiff.attention``, ``jax.grad`` of the plain
  ``softmax(q k^T / sqrt(D)) v``, which keeps ``P`` ``[B, H, T, S]``;
- ``autodiff_tiled``: ``jax.grad`` of the tiled forward (what tiling alone,
  without the hand-written backward, does for autodiff's memory);
- ``jax_nn``: ``jax.grad`` of ``jax.nn.dot_product_attention`` (XLA's own
  implementation), the layer a JAX user would otherwise call.

Per sequence length and path: XLA's memory analysis of the compiled gradient
(``fnn.inspect.compiled_cost``: temporary, argument and output bytes), the
gradient's error against a float64 reference (``autodiff`` in float64), and
the step time through ``fnn.bench.compare`` against ``autodiff`` (interleaved
rounds, bootstrap 95% interval of the per-round ratio, verdict with the
harness's 2% margin and strictly). With ``--layer self_attention`` the same
for the self-attention layer ``nn.attention(heads, head_dim)`` (custom and
autodiff, gradients with respect to its parameters and input). The target:
``custom``'s step time at most 1.05x ``autodiff``'s and its temporary bytes at
most ``autodiff``'s, at every length.

    python -m experiments.attention_cost --json experiments/results/attention_cost.json \\
        --plot experiments/results/attention_cost.png
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from experiments import _cli
from experiments._common import machine, markdown_table, pyplot, save_figure, write_json

PATHS = ("custom", "autodiff", "autodiff_tiled", "jax_nn")
LAYERS = ("op", "self_attention")
TIME_TARGET, TEMP_TARGET = 1.05, 1.0  # custom step time and temporary bytes, at most these times autodiff's


def attention_fns(causal):
    """``path -> (q, k, v) -> o`` for every path of :data:`PATHS`."""
    leaf = fnn.nn._attention.attention_leaf(causal)
    tiled = fnn.module.leaf("attention_tiled", forward=leaf.forward, backward=leaf.backward)  # apply = tiled forward
    return {
        "custom": lambda q, k, v: fnn.ops.custom.attention(q, k, v, causal=causal),
        "autodiff": lambda q, k, v: fnn.ops.autodiff.attention(q, k, v, causal=causal),
        "autodiff_tiled": lambda q, k, v: tiled.apply({"k": k, "v": v}, q),
        "jax_nn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla"),
    }


def gradient(attend):
    """``(q, k, v, c) -> (dq, dk, dv)`` of ``sum(attend(q, k, v) * c)``."""
    return jax.grad(lambda q, k, v, c: jnp.sum(attend(q, k, v) * c), argnums=(0, 1, 2))


def inputs(seq_len, batch, heads, head_dim, seed):
    """Standard normal ``q, k, v`` and cotangent ``c``, ``[batch, seq_len, heads, head_dim]`` float32."""
    keys = jax.random.split(jax.random.key(seed), 4)
    return tuple(jax.random.normal(k, (batch, seq_len, heads, head_dim), jnp.float32) for k in keys)


def self_attention_problem(seq_len, *, batch, heads, head_dim, causal, seed):
    """``({path: gradient}, args)`` for the self-attention layer ``nn.attention(heads, head_dim)`` over ``x[batch,
    seq_len, heads * head_dim]``: the gradient of ``sum(layer(params, x) * C)`` w.r.t. ``(params, x)``."""
    layer = fnn.nn.attention(heads, head_dim, causal=causal)
    k_init, k_x, k_c = jax.random.split(jax.random.key(seed), 3)
    width = heads * head_dim
    _, params = layer.init(k_init, (seq_len, width))
    x, c = (jax.random.normal(k, (batch, seq_len, width), jnp.float32) for k in (k_x, k_c))

    def grad_of(m):
        return jax.grad(lambda p, x, c: jnp.sum(m.apply(p, x) * c), argnums=(0, 1))

    return {"custom": grad_of(layer.by_rules), "autodiff": grad_of(layer)}, (params, x, c)


def problem(layer, seq_len, *, batch, heads, head_dim, causal, seed):
    """``({path: gradient}, args)`` of the attention op (every path of :data:`PATHS`) or the self-attention layer
    (custom and autodiff)."""
    if layer == "self_attention":
        return self_attention_problem(seq_len, batch=batch, heads=heads, head_dim=head_dim, causal=causal, seed=seed)
    return {path: gradient(f) for path, f in attention_fns(causal).items()}, inputs(
        seq_len, batch, heads, head_dim, seed
    )


def measure(seq_len, *, layer="op", batch, heads, head_dim, causal, rounds, block_s, margin, seed):
    """Every path's rows at one sequence length."""
    fns, args = problem(layer, seq_len, batch=batch, heads=heads, head_dim=head_dim, causal=causal, seed=seed)
    grads = {path: jax.jit(f) for path, f in fns.items()}
    compiled, compile_s = {}, {}  # timed here: fnn.bench.compare's compilations below find these in JAX's cache
    for path, g in grads.items():
        tic = time.perf_counter()
        compiled[path] = g.lower(*args).compile()
        compile_s[path] = time.perf_counter() - tic
    with jax.enable_x64(True):  # the float64 reference: autodiff of the plain formula
        args64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), args)
        reference = jax.tree.leaves(jax.device_get(jax.jit(fns["autodiff"])(*args64)))
    bench = fnn.bench.compare(grads, *args, baseline="autodiff", margin=margin, rounds=rounds, block_s=block_s)
    p_bytes = 4 * batch * heads * seq_len * seq_len
    rows = []
    for path in grads:
        result, cost = bench[path], fnn.inspect.compiled_cost(compiled[path])
        errors = [fnn.testing.relative_error(g, r) for g, r in zip(jax.tree.leaves(compiled[path](*args)), reference)]
        rows.append(
            {
                "layer": layer,
                "seq_len": seq_len,
                "path": path,
                "temp_bytes": cost["temp_bytes"],
                "step_s": result.median_s,
                "step_s_quartiles": [result.q1_s, result.q3_s],
                "cpu_s": result.cpu_median_s,
                "arg_bytes": cost["arg_bytes"],
                "out_bytes": cost["out_bytes"],
                "p_bytes": p_bytes,
                "tile": list(fnn.nn._attention.tile_shape(seq_len, seq_len)),
                "keeps_probabilities": fnn.nn._attention.keeps_probabilities(seq_len),
                "temp_over_p": cost["temp_bytes"] / p_bytes,
                "time_ratio": {"median": result.ratio, "ci95": [result.ci_low, result.ci_high]},
                "cpu_ratio": result.cpu_ratio,
                "verdict": result.verdict,
                "verdict_strict": fnn.bench.verdict(result.ci_low, result.ci_high),
                "compile_s": compile_s[path],
                "max_rel_err_vs_float64": max(errors),
                "bench": result.to_dict(),
            }
        )
    autodiff_temp = next(r["temp_bytes"] for r in rows if r["path"] == "autodiff")
    for row in rows:
        row["temp_ratio_vs_autodiff"] = row["temp_bytes"] / autodiff_temp
    return rows


def targets(rows):
    """Per sequence length, the custom path's time and temporary bytes against autodiff's, and the targets met."""
    custom = [r for r in rows if r["path"] == "custom"]
    per_len = {
        r["seq_len"]: {
            "time_ratio": r["time_ratio"]["median"],
            "temp_ratio": r["temp_ratio_vs_autodiff"],
            "met": r["time_ratio"]["median"] <= TIME_TARGET and r["temp_ratio_vs_autodiff"] <= TEMP_TARGET,
        }
        for r in custom
    }
    return {
        "custom_time_ratio_max": TIME_TARGET,
        "custom_temp_ratio_max": TEMP_TARGET,
        "per_seq_len": per_len,
        "met": bool(per_len) and all(v["met"] for v in per_len.values()),
    }


def _mib(n):
    return f"{n / 2**20:,.1f}"


def table(rows):
    header = ["T", "path", "temp MiB", "temp / autodiff", "temp / P", "step ms", "time / autodiff [95% CI]"]
    header += ["verdict (2%)", "strict", "CPU ratio", "max rel err"]
    return markdown_table(
        header,
        [
            [
                r["seq_len"],
                r["path"],
                _mib(r["temp_bytes"]),
                f"{r['temp_ratio_vs_autodiff']:.3f}",
                f"{r['temp_over_p']:.2f}",
                f"{1e3 * r['step_s']:.1f}",
                f"{r['time_ratio']['median']:.2f} [{r['time_ratio']['ci95'][0]:.2f}, {r['time_ratio']['ci95'][1]:.2f}]",
                r["verdict"],
                r["verdict_strict"],
                f"{r['cpu_ratio']:.2f}",
                f"{r['max_rel_err_vs_float64']:.1e}",
            ]
            for r in rows
        ],
    )


def plot(path, rows, title):
    plt = pyplot()
    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(12, 4.5))
    lens = sorted({r["seq_len"] for r in rows})
    for i, name in enumerate(dict.fromkeys(r["path"] for r in rows)):
        mine = sorted((r for r in rows if r["path"] == name), key=lambda r: r["seq_len"])
        ax_m.plot(lens, [r["temp_bytes"] / 2**20 for r in mine], "o-", color=f"C{i}", label=name)
        ratios = [r["time_ratio"] for r in mine]
        med = np.array([r["median"] for r in ratios])
        err = [med - [r["ci95"][0] for r in ratios], [r["ci95"][1] for r in ratios] - med]
        ax_t.errorbar(lens, med, yerr=err, fmt="o-", color=f"C{i}", capsize=3, label=name)
    ax_m.plot(lens, [rows[0]["p_bytes"] / rows[0]["seq_len"] ** 2 * n * n / 2**20 for n in lens], "k:", label="P")
    ax_m.set(xscale="log", yscale="log", xlabel="sequence length T = S", ylabel="temporary MiB (XLA memory analysis)")
    ax_m.set_title("memory of the compiled gradient")
    ax_t.axhline(1.0, color="k", lw=0.8)
    ax_t.set(xscale="log", xlabel="sequence length T = S", ylabel="step time / autodiff's (median, 95% CI)")
    ax_t.set_title("time")
    for ax in (ax_m, ax_t):
        ax.minorticks_off()
        ax.set_xticks(lens, [str(n) for n in lens])
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path, title)


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-lens", nargs="+", type=_positive, default=[64, 128, 256, 512, 1024, 2048])
    parser.add_argument(
        "--layer", choices=LAYERS, default="op", help="the attention op (q, k, v) or the self-attention layer"
    )
    parser.add_argument("--batch", type=_positive, default=2)
    parser.add_argument("--heads", type=_positive, default=4)
    parser.add_argument("--head-dim", type=_positive, default=64)
    parser.add_argument("--causal", action="store_true", help="causal attention (each query sees itself and earlier)")
    parser.add_argument("--margin", type=float, default=0.02, help="time differences within this fraction are a tie")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write memory and time against sequence length as PNG")
    _cli.add_timing_flags(parser, rounds=10, block_s=0.2)
    _cli.add_flags(parser)
    args = parser.parse_args(argv)
    _cli.check_timing_flags(parser, args)
    if not 0 <= args.margin < 1:
        parser.error(f"--margin must be in [0, 1), e.g. 0.02 for 2%, got {args.margin}")
    return args


def main(argv=None):
    args = parse_args(argv)
    load_before = os.getloadavg()
    config = {
        k: getattr(args, k) for k in ("layer", "batch", "heads", "head_dim", "causal", "rounds", "block_s", "margin")
    }
    rows = []
    for seq_len in args.seq_lens:
        rows += measure(seq_len, seed=args.seed, **config)
        custom = next(r for r in rows[::-1] if r["path"] == "custom")
        print(
            f"T={seq_len}: custom temp {_mib(custom['temp_bytes'])} MiB ({custom['temp_ratio_vs_autodiff']:.3f} of "
            f"autodiff's), time {custom['time_ratio']['median']:.2f} of autodiff's, {custom['verdict']}",
            flush=True,
        )
    print()
    print(table(rows))
    result = {
        "experiment": "attention_cost",
        "gradient": (
            "jax.grad of sum(attention(q, k, v) * C) w.r.t. q, k, v; T = S"
            if args.layer == "op"
            else "jax.grad of sum(nn.attention(heads, head_dim)(params, x) * C) w.r.t. params and x"
        ),
        "config": {**config, "seq_lens": args.seq_lens, "seed": args.seed},
        **machine(),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "rows": rows,
        "target": targets(rows),
    }
    print(f"\ntarget (custom time <= {TIME_TARGET}x and temp <= {TEMP_TARGET}x autodiff's): {result['target']}")
    if args.json:
        write_json(args.json, result)
    if args.plot:
        what = "attention" if args.layer == "op" else "self-attention"
        plot(args.plot, rows, f"{what}{' (causal)' if args.causal else ''}: hand-written rule against autodiff")
    return result


if __name__ == "__main__":
    _cli.run(main)
