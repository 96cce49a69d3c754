"""The checker's float64 tolerance on networks it was not tuned on: false alarms on correct rules, catches of wrong.

The agreement checks (``backward``, ``custom``, ``custom_jit``,
``custom_vmap``, ``custom_grad_of_grad``, ``forward_mode``,
``forward_sweep``) hold each leaf to a tolerance measured on the draw itself
(``fnn/_gradcheck/compare.py``). This study draws random networks of dense
layers (with and without biases), batch norm in training mode, layer norm,
dropout and smooth or kinked activations, always with a batch norm and often
with a bias right in front of one (whose true gradient is exactly zero), and
checks each at several seeds:

- **false alarms**: correct networks must pass every check;
- **catches**: the same networks with one wrong rule swapped in (a bias
  gradient that counts one row twice, else a dense weight gradient off by
  ``1e-6``) must fail the ``backward`` check at the wrong leaf.

Writes ``runs/checker_held_out.json`` (``--out``).

Run: ``python -m experiments.checker_held_out [--networks 40 --seeds 2]``
"""

import argparse
import time

import jax
import numpy as np

import fnn
from experiments import _cli, _common
from fnn import nn
from fnn.module import leaf

CHECKS = ("backward", "custom", "custom_jit", "custom_vmap", "custom_grad_of_grad", "forward_mode", "forward_sweep")
ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "tanh": nn.tanh, "sigmoid": nn.sigmoid}


def with_backward(module, backward):
    """``module``'s init and forward with ``backward(params, saved, g, right)``, ``right`` its own backward's result."""
    return leaf(
        module.name,
        init=module.init,
        forward=module.forward,
        backward=lambda p, s, g: backward(p, s, g, module.backward(p, s, g)),
    )


def _bias_row_twice(p, s, g, right):
    return {**right[0], "b": right[0]["b"] + g[0]}, right[1]


def _weight_off(p, s, g, right):
    return {**right[0], "w": right[0]["w"] * (1 + 1e-6)}, right[1]


def draw_network(rng):
    """``(layers, description)``: a random serial network with at least one batch norm."""
    layers, names = [], []
    width = int(rng.integers(3, 7))
    for i in range(int(rng.integers(2, 4))):
        bias = bool(rng.integers(0, 2))
        layers.append(nn.dense(width, bias=bias))
        names.append(f"dense({width}{', bias' if bias else ''})")
        norm = "batch_norm" if i == 0 or rng.random() < 0.6 else ("layer_norm" if rng.random() < 0.5 else None)
        if norm:
            layers.append(nn.batch_norm() if norm == "batch_norm" else nn.layer_norm())
            names.append(norm)
        act = rng.choice(list(ACTIVATIONS))
        layers.append(ACTIVATIONS[act])
        names.append(str(act))
        if rng.random() < 0.3:
            layers.append(nn.dropout(0.3))
            names.append("dropout(0.3)")
        width = int(rng.integers(3, 7))
    layers.append(nn.dense(3))
    names.append("dense(3)")
    return layers, " > ".join(names)


def broken_variants(layers):
    """``[(name, layers with one wrong rule, where the backward check must point)]`` for ``layers``."""
    found = []
    for i, layer in enumerate(layers):
        settings = {s.name: s.value for s in layer.settings}
        before_norm = i + 1 < len(layers) and layers[i + 1].name == "batch_norm"
        if layer.name == "dense" and settings.get("bias") and before_norm:
            found.append(("bias_row_twice", i, with_backward(layer, _bias_row_twice), f"dparams[{i}]['b']"))
        if layer.name == "dense" and not found:
            found.append(("weight_off_1e-6", i, with_backward(layer, _weight_off), f"dparams[{i}]['w']"))
    return [(name, [*layers[:i], broken, *layers[i + 1 :]], where) for name, i, broken, where in found]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", type=int, default=40, help="random networks drawn")
    parser.add_argument("--seeds", type=int, default=2, help="checker seeds per network")
    parser.add_argument("--draw-seed", type=int, default=2026, help="seeds the networks drawn (held out: not 0)")
    parser.add_argument("--out", default="runs/checker_held_out.json")
    _cli.add_flags(parser)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(args.draw_seed)
    rows, tic = [], time.perf_counter()
    for n in range(args.networks):
        layers, description = draw_network(rng)
        batch, n_in = int(rng.integers(5, 9)), int(rng.integers(3, 8))
        for seed in range(args.seeds):
            check = dict(batch_size=batch, train=True, seed=seed, checks=CHECKS)
            report = fnn.testing.check_module(nn.serial(*layers), (n_in,), **check)
            row = {"network": description, "seed": seed, "failed": [c.name for c in report.failed], "caught": {}}
            for name, broken, where in broken_variants(layers):
                wrong = fnn.testing.check_module(nn.serial(*broken), (n_in,), **{**check, "checks": ["backward"]})
                found = wrong["backward"]
                row["caught"][name] = found.status == "failed" and found.where.startswith(where)
            rows.append(row)
            print(f"{n:3d}/{seed} {'ok' if not row['failed'] else row['failed']} {row['caught']} {description}")
        jax.clear_caches()  # each network compiles its own programs: a long study would run out of code memory
    alarms = [r for r in rows if r["failed"]]
    tried = [ok for r in rows for ok in r["caught"].values()]
    summary = {
        "draws": len(rows),
        "false_alarms": len(alarms),
        "broken_rules_tried": len(tried),
        "broken_rules_caught": int(sum(tried)),
        "wall_s": time.perf_counter() - tic,
    }
    print(summary)
    _common.write_json(
        args.out, {"machine": _common.machine(), "args": vars(args), "summary": summary, "alarms": alarms, "rows": rows}
    )


if __name__ == "__main__":
    _cli.run(main)
