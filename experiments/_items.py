"""What the cost studies (``module_costs``, ``forward_costs``) share: the leaf modules and losses they measure, with
their shapes; their options (:func:`study_parser`, :func:`parse_study_args`); how an item's problem is keyed
(:func:`problem`), how both paths are timed (:func:`compare_paths`); and their measuring loop (:func:`measure_items`,
:func:`study_fields`)."""

import argparse
import dataclasses
import os

import jax

import fnn
from experiments import _cli

ROWS, FEATURES = 256, 1024  # elementwise modules, LayerNorm, dense
IMAGE = (64, 28, 28, 32)  # conv2d input, NHWC
LOGITS = (1024, 1000)  # losses: rows x classes
SEQUENCE = (64, 512, 64)  # conv1d and 1-D pooling input, NWC
TOKENS, VOCAB, WIDTH = (64, 128), 8192, 256  # embedding ids [N, T], table [V, D]; positions [N, T, D]
ATTENTION = (2, 512, 4, 64)  # the attention op's q, k, v: [B, T, H, D]
SELF_ATTENTION = (8, 256, 256)  # the self-attention block's input [N, T, D_model], 4 heads of 64
MARGIN = 0.02  # the harness's practical-equivalence margin (experiments/README.md: the harness checked)
PATHS = ("custom", "autodiff")  # the two paths compared, custom against autodiff


def _attention_op():
    """The attention leaf over ``q``, with ``k`` and ``v`` of :data:`ATTENTION`'s shape made by its init."""

    def init(key, input_shape):
        k_key, v_key = jax.random.split(key)
        return input_shape, {p: jax.random.normal(k, ATTENTION) for p, k in (("k", k_key), ("v", v_key))}

    return dataclasses.replace(fnn.nn._attention.attention_leaf(), init=init)


def _in_context(module, shape, *, train):
    """``module`` with its state (at init) and key fixed (``fnn.context.bind``): a plain leaf to differentiate."""
    return fnn.context.bind(module, state=module.init_state(shape[1:]), key=jax.random.key(0), train=train)


def modules():
    """name -> (module, input shape incl. batch) for every leaf module measured (a vocabulary for integer ids)."""
    flat = (ROWS, FEATURES)
    return {
        "dense": (fnn.nn.dense(FEATURES, bias=True), flat),
        "relu": (fnn.nn.relu, flat),
        "sigmoid": (fnn.nn.sigmoid, flat),
        "tanh": (fnn.nn.tanh, flat),
        "leaky_relu": (fnn.nn.leaky_relu(0.01), flat),
        "gelu": (fnn.nn.gelu, flat),
        "softplus": (fnn.nn.softplus(1.0), flat),
        "layer_norm": (fnn.nn.layer_norm(), flat),
        "conv2d": (fnn.nn.conv2d(32, 3), IMAGE),
        "conv2d_stride2": (fnn.nn.conv2d(64, 3, stride=2), IMAGE),
        "conv1d": (fnn.nn.conv1d(64, 3), SEQUENCE),
        "avg_pool": (fnn.nn.avg_pool((2, 2)), IMAGE),
        "max_pool": (fnn.nn.max_pool((2, 2)), IMAGE),
        "max_pool_3x3_stride2": (fnn.nn.max_pool((3, 3), stride=2, padding="SAME"), IMAGE),
        "avg_pool_1d": (fnn.nn.avg_pool((4,)), SEQUENCE),
        "group_norm": (fnn.nn.group_norm(8), IMAGE),
        "softmax": (fnn.nn.softmax, flat),
        "embedding": (fnn.nn.embedding(VOCAB, WIDTH), TOKENS, VOCAB),
        "positional_embedding": (fnn.nn.positional_embedding(), (*TOKENS, WIDTH)),
        "attention": (_attention_op(), ATTENTION),
        "self_attention": (fnn.nn.attention(4, 64), SELF_ATTENTION),
        "batch_norm": (_in_context(fnn.nn.batch_norm(), flat, train=True), flat),
        "batch_norm_images": (_in_context(fnn.nn.batch_norm(), IMAGE, train=True), IMAGE),
        "batch_norm_eval": (_in_context(fnn.nn.batch_norm(), IMAGE, train=False), IMAGE),
        "dropout": (_in_context(fnn.nn.dropout(0.5), flat, train=True), flat),
    }


def losses():
    """name -> (loss, kind of targets) for every loss measured."""
    return {
        "cross_entropy": (fnn.losses.cross_entropy, "class"),
        "mse": (fnn.losses.mse, "real"),
        "logistic": (fnn.losses.logistic, "binary"),
        "multiclass_hinge": (fnn.losses.multiclass_hinge(), "class"),
    }


ITEMS = (*modules(), *losses())


def kind(name):
    """``"module"`` for a leaf module of :func:`modules`, ``"loss"`` for a loss of :func:`losses`."""
    return "module" if name in modules() else "loss"


def problem(name, seed, module_problem, loss_problem):
    """Item ``name``'s problem, as a study builds it: ``module_problem(name, key)`` for a leaf module,
    ``loss_problem(name, key)`` for a loss, ``key`` being ``fold_in(key(seed), the item's index in ITEMS)``, so that
    every study draws an item's arrays alike."""
    key = jax.random.fold_in(jax.random.key(seed), ITEMS.index(name))
    return (module_problem if kind(name) == "module" else loss_problem)(name, key)


def compare_paths(fns, args, *, rounds, block_s):
    """``fns["custom"]`` timed against ``fns["autodiff"]`` on ``args`` with ``fnn.bench.compare`` (rounds of
    ``block_s`` seconds of back-to-back calls, the order alternating); ``{path: fnn.bench`` result ``}``."""
    pair = {"autodiff": fns["autodiff"], "custom": fns["custom"]}
    return fnn.bench.compare(pair, *args, baseline="autodiff", rounds=rounds, block_s=block_s)


# ---------------------------------------------------------------- the studies' options and measuring loop
def study_parser(description, *, rounds, block_s):
    """An argument parser with the options both studies take: ``--items`` (default: every item), ``--seed``,
    ``--json``, the timing flags ``--rounds`` and ``--block-s`` (these defaults) and ``_cli``'s flags; a study adds
    its own, then parses with :func:`parse_study_args`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--items", nargs="+", choices=ITEMS, default=list(ITEMS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write results as JSON")
    _cli.add_timing_flags(parser, rounds=rounds, block_s=block_s)
    _cli.add_flags(parser)
    return parser


def parse_study_args(parser, argv=None):
    """``parser``'s arguments (:func:`study_parser`'s), or a usage error for timing flags ``fnn.bench`` refuses."""
    args = parser.parse_args(argv)
    _cli.check_timing_flags(parser, args)
    return args


def measure_items(args, measure, describe, **options):
    """Measures each of ``args.items`` in turn, ``measure(name, rounds=, block_s=, seed=, **options) -> row``,
    printing ``describe(row)`` (one line) as each comes; returns ``(rows, load_before)``, the 1-, 5- and 15-minute
    load averages before the first (:func:`study_fields` records them)."""
    load_before = os.getloadavg()
    rows = []
    for name in args.items:
        rows.append(measure(name, rounds=args.rounds, block_s=args.block_s, seed=args.seed, **options))
        print(describe(rows[-1]), flush=True)
    return rows, load_before


def study_fields(args, load_before):
    """The fields both studies record of a run: ``rounds``, ``block_s``, ``seed``, and the load averages before the
    measuring (:func:`measure_items`) and now."""
    return {
        "rounds": args.rounds,
        "block_s": args.block_s,
        "seed": args.seed,
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
    }


def kib(n):
    """Bytes as KiB for a table: ``"1,024"``; ``"n/a"`` for ``None``."""
    return "n/a" if n is None else f"{n / 1024:,.0f}"


def interval(r):
    """A ratio with its interval for a table, ``"1.02 [0.98, 1.07]"``, from ``{"median": m, "ci95": [lo, hi]}``."""
    return f"{r['median']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
