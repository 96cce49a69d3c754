"""The forward/reverse-mode experiment: a --quick run's JSON fields, and every way of computing the Jacobian agrees.

Tolerances: in float64 the four Jacobians (jacfwd, jacrev, the layer chain
multiplied from either side) and the three dL/dx (jax.grad, the reverse
sweep, jacfwd of the loss) are the same sums taken in different orders, so
they agree to 1e-12 relative to their largest entry (rounding is ~1e-16 per
operation over a few dozen terms). The --quick run is float32: 1e-5.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from experiments import modes

FLOAT64_RTOL = 1e-12
FLOAT32_RTOL = 1e-5


def relative_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.slow
def test_quick_run_records_times_work_counts_and_forward_mode_on_every_path(tmp_path):
    json_path, png_path = tmp_path / "modes.json", tmp_path / "modes.png"
    result = modes.main(["--quick", "--json", str(json_path), "--plot", str(png_path)])
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(result))
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["device"] and result["jax_version"] and result["quick"]
    assert len(result["load_average_before"]) == 3
    assert {tuple(s) for p in result["points"] for s in [p["sweeps"]]} >= {("n_in", "n_out"), ("n_in",)}

    for point in result["points"]:
        assert set(point["methods"]) == set(modes.METHODS)
        for name, m in point["methods"].items():
            for key in ("median_s", "q1_s", "q3_s", "ratio", "ci_low", "ci_high", "cpu_ratio", "verdict", "compile_s"):
                assert key in m, (name, key)
            assert m["q1_s"] <= m["median_s"] <= m["q3_s"] and m["ci_low"] <= m["ratio"] <= m["ci_high"]
            assert m["flops"] > 0 and m["temp_bytes"] >= 0 and m["bytes_accessed"] > 0
        assert point["methods"]["forward"]["ratio"] == 1.0 and point["methods"]["forward"]["flops_per_forward"] == 1.0
        assert set(point["pairs"]) == {
            "jacfwd/jacrev",
            "chain_from_input/chain_from_output",
            "jacfwd_loss/grad",
            "jacfwd_custom/jacrev_custom",
            "jacfwd_backprop/jacrev_backprop",
        }
        for pair in point["pairs"].values():
            assert pair["ci_low"] <= pair["ratio"] <= pair["ci_high"] and pair["verdict"] in ("faster", "slower", "tie")
        # The work counts are the compiled programs', not noisy: one VJP is a small multiple of the
        # forward pass; jacfwd of the scalar loss is n_in JVPs, at least n_in forward passes.
        m = point["methods"]
        assert m["grad"]["flops_per_forward"] < 3
        assert m["jacfwd_loss"]["flops"] >= point["n_in"] * m["forward"]["flops"]
        compared = {
            "jacfwd",
            "chain_from_input",
            "chain_from_output",
            "backprop_dx",
            "jacfwd_loss",
            *modes.BY_PATH["custom"],
            *modes.BY_PATH["backprop"],
        }
        assert set(point["max_rel_diff"]) == compared
        assert max(point["max_rel_diff"].values()) <= FLOAT32_RTOL, point["max_rel_diff"]

    for name in ("jax.jvp", "jax.jacfwd", "fnn.jvp(path='backprop')"):
        record = result["custom_path_forward_mode"][name]
        assert record["raised"] is None and record["max_rel_diff_vs_autodiff"] <= FLOAT32_RTOL, record
    assert result["memory"]["rows"] and {"forward", "grad_params", "jvp_x"} <= set(result["memory"]["rows"][0])


def test_every_jacobian_and_gradient_agrees_in_float64():
    model, args = modes.problem(5, 7, (6, 4), dtype=jnp.float64)
    params, x, label = args
    assert x.dtype == jnp.float64
    out = {name: jax.jit(fn)(*args) for name, fn in modes.methods(model).items()}
    reference = out["jacrev"]
    assert reference.shape == (7, 5) and reference.dtype == jnp.float64
    for name in (
        "jacfwd",
        "chain_from_input",
        "chain_from_output",
        *modes.BY_PATH["custom"],
        *modes.BY_PATH["backprop"],
    ):
        assert out[name].shape == (7, 5)
        assert relative_error(out[name], reference) <= FLOAT64_RTOL, name
    for name in ("backprop_dx", "jacfwd_loss"):
        assert out[name].shape == (5,)
        assert relative_error(out[name], out["grad"]) <= FLOAT64_RTOL, name
    # the weight gradient of the reverse sweep (fnn.value_and_grad, path="backprop") against jax.grad
    value, grads = out["backprop_params"]
    expected = jax.grad(lambda p: fnn.losses.cross_entropy.apply(model.apply(p, x), label))(params)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
        assert relative_error(got, want) <= FLOAT64_RTOL
    assert abs(float(value) - float(out["forward"])) <= FLOAT64_RTOL * abs(float(value))

    # each layer's explicit Jacobian (W^T, diag(1[z > 0])) is what jax.jacfwd of the layer gives
    explicit = modes.layer_jacobians(model, params, x, how="explicit")
    by_jacfwd = modes.layer_jacobians(model, params, x, how="jacfwd")
    assert [j.shape for j in explicit] == [(6, 5), (6, 6), (4, 6), (4, 4), (7, 4)]
    for a, b in zip(explicit, by_jacfwd):
        np.testing.assert_allclose(a, b, rtol=FLOAT64_RTOL, atol=0)
    with pytest.raises(ValueError, match="how must be"):
        modes.layer_jacobian(model.children[0], params[0], x, how="numerical")
