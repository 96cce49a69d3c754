"""What the image experiments share: the input shape, the conv nets' options and builders, the shifted training.

``mnist_conv`` and ``mnist_conv_bn`` take the strided conv net's options
(:func:`add_net_args`, :func:`check_net_args`); ``mnist_pooled``,
``conv_in_loop`` and ``peer_pooled`` build the Flax tutorial's pooled CNN
(:func:`pooled_cnn`). The scripts that train on images train the same way
(:func:`train_shifted`: reshuffled batches, the ``--shift`` augmentation,
``fnn.data.random_shift``, and both splits evaluated at each epoch's end), and
count the work of a training step the same way (:func:`step_flops`).
"""

import argparse

import jax
import optax

import fnn
from experiments._common import RECIPE_SIZES, timed_fit

#: One MNIST image, batch axis excluded: ``[28, 28, 1]`` (NHWC).
INPUT_SHAPE = (28, 28, 1)
#: The Flax tutorial's training of the pooled CNN: batches of 32, AdamW at step 0.005 with these settings.
TUTORIAL_BATCH, TUTORIAL_LR = 32, 0.005
TUTORIAL_ADAMW = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4}


# ---------------------------------------------------------------- the strided conv net's options
def parse_conv(text):
    """``"5:32:2"`` as ``(kernel 5, channels 32, stride 2)``."""
    try:
        kernel, channels, stride = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a convolution is KERNEL:CHANNELS:STRIDE, e.g. 5:32:2; got {text!r}"
        ) from None
    return kernel, channels, stride


def add_net_args(parser):
    """The net's options: ``--convs``, ``--dense`` and the augmentation's ``--shift``."""
    parser.add_argument(
        "--convs",
        type=parse_conv,
        nargs="+",
        default=[(5, 32, 2), (3, 64, 2), (3, 64, 1)],
        help="convolutions as KERNEL:CHANNELS:STRIDE (default: 5:32:2 3:64:2 3:64:1)",
    )
    parser.add_argument("--dense", type=int, default=256, help="hidden dense width after the convolutions")
    parser.add_argument(
        "--shift",
        type=int,
        default=2,
        help="augment: translate each training image by up to this many pixels (0: none)",
    )


def check_net_args(parser, args):
    """``args``, or a usage error for a negative ``--shift``."""
    if args.shift < 0:
        parser.error(f"--shift must be 0 or more, got {args.shift}")
    return args


# ---------------------------------------------------------------- the pooled CNN
def pooled_cnn(bias=True, w_init="he"):
    """The Flax MNIST tutorial's CNN, ``[N, 28, 28, 1] -> [N, 10]`` (``SAME`` padding):

    ``conv 3x3 32 -> relu -> avg_pool 2x2 -> conv 3x3 64 -> relu -> avg_pool 2x2 -> flatten -> dense 256 -> relu ->
    dense 10``.
    """
    nn = fnn.nn
    return nn.serial(
        nn.conv2d(32, 3, bias=bias, w_init=w_init),
        nn.relu,
        nn.avg_pool((2, 2)),  # -> [N, 14, 14, 32]
        nn.conv2d(64, 3, bias=bias, w_init=w_init),
        nn.relu,
        nn.avg_pool((2, 2)),  # -> [N, 7, 7, 64]
        nn.flatten(),
        nn.dense(256, bias=bias, w_init=w_init),
        nn.relu,
        nn.dense(10, bias=bias, w_init=w_init),
    )


def recipe_or_pooled(name, lr):
    """``(net, input shape, optimizer)`` of a short run: ``"recipe"``, the notes' ``mlp([784, 500, 10])`` with SGD
    at ``lr``, or ``"pooled"``, :func:`pooled_cnn` with the Flax tutorial's AdamW at ``lr``
    (:data:`TUTORIAL_ADAMW`)."""
    if name == "recipe":
        return fnn.nn.mlp(list(RECIPE_SIZES)), RECIPE_SIZES[:1], lr
    return pooled_cnn(), INPUT_SHAPE, optax.adamw(lr, **TUTORIAL_ADAMW)


# ---------------------------------------------------------------- training
def shift_augment(pixels):
    """``fnn.fit``'s ``augment``: ``fnn.data.random_shift(pixels)``, or ``None`` (no augmentation) for 0."""
    return fnn.data.random_shift(pixels) if pixels else None


def train_shifted(model, params, data, args, optimizer):
    """:func:`experiments._common.timed_fit` with the image scripts' recipe: batches reshuffled every epoch (the key
    ``seed + 1``), the ``--shift`` augmentation, and both splits evaluated at each epoch's end, from
    ``model.init_state`` (``()`` for a model without state); ``params`` comes back as ``(params, state)``."""
    return timed_fit(
        model,
        params,
        data,
        args,
        optimizer,
        shuffle_key=jax.random.key(args.seed + 1),
        augment=shift_augment(args.shift),
        train_metrics="full",
        state=model.init_state(data.x_train.shape[1:]),
    )


def step_flops(model, params, data, args, optimizer):
    """XLA's FLOP count of one compiled training step at ``--batch-size`` (``fnn.inspect.compiled_cost``)."""
    update = fnn.train.optimizer_update(model, fnn.losses.cross_entropy, optimizer, path=args.path)
    batch = (data.x_train[: args.batch_size], data.y_train[: args.batch_size])
    compiled = jax.jit(update).lower(params, optimizer.init(params), batch).compile()
    return fnn.inspect.compiled_cost(compiled)["flops"]
