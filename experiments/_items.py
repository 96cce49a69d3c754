"""The leaf modules and losses the cost studies measure, with their shapes (``module_costs``, ``forward_costs``)."""

import dataclasses

import jax

import fnn

ROWS, FEATURES = 256, 1024  # elementwise modules, LayerNorm, dense
IMAGE = (64, 28, 28, 32)  # conv2d input, NHWC
LOGITS = (1024, 1000)  # losses: rows x classes
SEQUENCE = (64, 512, 64)  # conv1d and 1-D pooling input, NWC
TOKENS, VOCAB, WIDTH = (64, 128), 8192, 256  # embedding ids [N, T], table [V, D]; positions [N, T, D]
ATTENTION = (2, 512, 4, 64)  # the attention op's q, k, v: [B, T, H, D]
SELF_ATTENTION = (8, 256, 256)  # the self-attention block's input [N, T, D_model], 4 heads of 64
MARGIN = 0.02  # the harness's practical-equivalence margin (experiments/README.md: the harness checked)


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


def kib(n):
    """Bytes as KiB for a table: ``"1,024"``; ``"n/a"`` for ``None``."""
    return "n/a" if n is None else f"{n / 1024:,.0f}"


def interval(r):
    """A ratio with its interval for a table, ``"1.02 [0.98, 1.07]"``, from ``{"median": m, "ci95": [lo, hi]}``."""
    return f"{r['median']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
