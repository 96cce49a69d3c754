"""fnn.testing.check_module / check_loss catch what they must, pass what is right; fnn.inspect.wrong_rules localises.

Each deliberately broken rule below is fnn's own forward with a backward
that is wrong in one way; the test names the check that must catch it and
where. fnn's correct modules pass the same checks in tests/test_modules.py.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fnn
from fnn import losses, nn
from fnn._gradcheck import dtypes as _dtypes
from fnn.module import leaf, loss, structural
from fnn.nn._embeddings import EMBEDDING
from fnn.testing import _finite


def wrong(report):
    """The positions of the rules a :func:`fnn.inspect.wrong_rules` report finds wrong on their own."""
    return tuple(r.position for r in report.failed if r.own)


def with_backward(module, backward):
    """``module``'s own init and forward with another ``backward(params, saved, g, right) -> (dparams, dx)``,
    ``right`` being what the module's own backward returns."""
    return leaf(
        module.name,
        init=module.init,
        forward=module.forward,
        backward=lambda p, s, g: backward(p, s, g, module.backward(p, s, g)),
    )


def failed(report):
    """``{name: check}`` of the failed checks."""
    return {c.name: c for c in report.failed}


DENSE = nn.dense(3, bias=True)
LAYER_NORM = nn.layer_norm()


def _layer_norm_without_last_term(params, saved, g, right):
    zhat, sigma = saved
    d = g * params["gamma"]
    dz = (d - jnp.mean(d, axis=-1, keepdims=True)) / sigma  # forgets - zhat mean(d zhat)
    return right[0], dz


def _relu_x_forward(params, x):
    return jnp.where(x > 0, x, 0.0), x


# (id, module, check that must fail, where it must point)
BROKEN_MODULES = [
    ("wrong_sign", with_backward(DENSE, lambda p, s, g, r: (r[0], -r[1])), "backward", "dx"),
    ("missing_term", with_backward(LAYER_NORM, _layer_norm_without_last_term), "backward", "dx"),
    ("bias_not_summed", with_backward(DENSE, lambda p, s, g, r: ({**r[0], "b": g}, r[1])), "structure",
     "dparams['b']"),
    ("float64_for_float32", with_backward(nn.tanh, lambda p, s, g, r: ((), r[1].astype(jnp.float64))),
     "dtype[float32]", "dx"),
    ("dropped_bias_gradient", with_backward(DENSE, lambda p, s, g, r: ({"w": r[0]["w"]}, r[1])), "structure",
     "(structure)"),
    ("dropped_weight_gradient_zeroed", with_backward(DENSE, lambda p, s, g, r: ({**r[0], "w": 0 * r[0]["w"]}, r[1])),
     "backward", "dparams['w']"),
    ("wrong_only_at_zero", leaf("relu", init=nn.relu.init, forward=_relu_x_forward,
                                backward=lambda p, x, g: ((), jnp.where(x >= 0, g, 0.0))), "edge_values", "at 0.0"),
]  # fmt: skip


@pytest.mark.parametrize("name, module, check, where", BROKEN_MODULES, ids=[b[0] for b in BROKEN_MODULES])
def test_a_broken_rule_fails_the_check_that_should_catch_it(name, module, check, where):
    edges = (0.0,) if name == "wrong_only_at_zero" else ()
    report = fnn.testing.check_module(module, (5,), edge_values=edges)
    assert check in failed(report), str(report)
    assert failed(report)[check].where.startswith(where), str(report)
    with pytest.raises(AssertionError, match=rf"(?s){re.escape(check)} +FAILED.*{re.escape(where)}"):
        report.assert_ok()


def test_a_wrong_rule_gives_a_wrong_forward_mode_and_the_forward_checks_say_so():
    """Forward mode is the rule's transpose: a wrong dx rule moves the JVP, and both forward checks fail."""
    report = fnn.testing.check_module(BROKEN_MODULES[0][1], (5,), checks=["forward_mode", "forward_sweep"])
    assert set(failed(report)) == {"forward_mode", "forward_sweep"}, str(report)
    assert all(c.error > 0.1 for c in report.failed), str(report)
    right = fnn.testing.check_module(DENSE, (5,), checks=["forward_mode", "forward_sweep"])
    assert right.ok, str(right)


def test_a_leaf_wrongly_declared_linear_fails_the_forward_checks_only():
    """``linear=True`` makes forward mode run the forward on the tangent: right for average pooling, wrong for tanh."""
    tanh = leaf("tanh", init=nn.tanh.init, forward=nn.tanh.forward, backward=nn.tanh.backward, linear=True)
    report = fnn.testing.check_module(tanh, (5,), checks=["backward", "custom", "forward_mode", "forward_sweep"])
    assert set(failed(report)) == {"forward_mode", "forward_sweep"}, str(report)
    pool = fnn.testing.check_module(nn.avg_pool((2,)), (4, 3), checks=["forward_mode", "forward_sweep"])
    assert pool.ok and nn.avg_pool((2,))._kind.linear, str(pool)
    scaled = leaf(
        "dense", init=nn.dense(5).init, forward=nn.dense(5).forward, backward=nn.dense(5).backward, linear=True
    )
    _, params = scaled.init(jax.random.key(0), (5,))
    with pytest.raises(fnn.UsageError, match="dense: declared linear=True, but it has parameters"):
        jax.jvp(lambda p: scaled.by_rules.apply(p, jnp.ones((2, 5), params["w"].dtype)), (params,), (params,))


def test_the_broken_rules_messages_say_what_is_wrong():
    bias = failed(fnn.testing.check_module(BROKEN_MODULES[2][1], (5,), checks=["structure"]))["structure"]
    assert "float64[4, 3], expected float64[3]" in bias.detail
    dropped = failed(fnn.testing.check_module(BROKEN_MODULES[4][1], (5,), checks=["structure"]))["structure"]
    assert "missing dparams['b']" in dropped.detail
    dtype = failed(fnn.testing.check_module(BROKEN_MODULES[3][1], (5,), checks=["dtypes"]))["dtype[float32]"]
    assert "float64[4, 5], expected float32[4, 5]" in dtype.detail


def test_an_output_that_breaks_inits_promise_fails():
    promises_too_much = leaf("dense", init=lambda key, shape: ((7,), DENSE.init(key, shape)[1]), forward=DENSE.forward,
                             backward=DENSE.backward)  # fmt: skip
    found = failed(fnn.testing.check_module(promises_too_much, (5,), checks=["output"]))["output"]
    assert found.where == "y" and found.detail == "output shape (4, 3), but init promises (4, 7)"


def test_a_rule_right_except_at_an_edge_passes_every_random_draw():
    report = fnn.testing.check_module(BROKEN_MODULES[-1][1], (5,), checks=["backward", "custom", "finite_differences"])
    assert report.ok, str(report)


def test_a_loss_that_ignores_its_upstream_cotangent_fails():
    ignores_g = loss("cross_entropy", forward=losses.cross_entropy.forward,
                     backward=lambda saved, g: losses.cross_entropy.backward(saved, jnp.ones_like(g)))  # fmt: skip
    report = fnn.testing.check_loss(ignores_g, (5,), targets=lambda rng, s: rng.integers(0, s[-1], s[:-1]))
    assert {"backward", "custom", "finite_differences"} <= set(failed(report)), str(report)
    assert failed(report)["backward"].where.startswith("doutputs")


def test_a_rule_that_cuts_the_second_order_fails_only_there():
    cut = with_backward(nn.tanh, lambda p, t, g, r: ((), g * (1 - jax.lax.stop_gradient(t) ** 2)))
    report = fnn.testing.check_module(cut, (5,))
    assert set(failed(report)) == {"custom_grad_of_grad", "finite_differences_2"}, str(report)


def test_a_rule_that_differs_between_runs_fails_determinism_only():
    rng = np.random.default_rng(0)

    def noise():  # a few ulps of noise on every run, as a non-deterministic kernel gives
        return jax.pure_callback(lambda: np.float64(1 + 1e-15 * rng.uniform()), jax.ShapeDtypeStruct((), jnp.float64))

    noisy = with_backward(nn.tanh, lambda p, s, g, r: ((), r[1] * noise()))
    report = fnn.testing.check_module(noisy, (5,), checks=["backward", "custom", "custom_jit", "determinism"])
    assert set(failed(report)) == {"determinism"}, str(report)
    assert failed(report)["determinism"].where.startswith("dx (")


def test_a_gradient_in_the_wrong_container_is_named_with_the_one_expected():
    as_list = with_backward(DENSE, lambda p, s, g, r: ([r[0]["w"], r[0]["b"]], r[1]))
    found = failed(fnn.testing.check_module(as_list, (5,), checks=["structure"]))["structure"]
    assert "dparams is a list of 2, expected a dict with keys 'b', 'w'" in found.detail, found.detail
    assert "expected ({'b': *, 'w': *}, *), got ([*, *], *)" in found.detail and "Return (dparams, dx)" in found.detail
    in_a_net = nn.serial(nn.dense(4), with_backward(DENSE, lambda p, s, g, r: (tuple(r[0].values()), r[1])))
    found = failed(fnn.testing.check_module(in_a_net, (5,), checks=["structure"]))["structure"]
    assert "dparams[1] is a tuple of 2, expected a dict with keys 'b', 'w'" in found.detail, found.detail


# ------------------------------------------------------------------ tolerances that follow the conditioning
#: Batch norm cancels most of the gradient of the weight in front of it (dparams[4]['w'], entries ~1e-4 of the
#: others'): an ill-conditioned leaf, on which correct rules missed the rounding tolerance at these seeds.
ILL_CONDITIONED = nn.serial(nn.dense(3), nn.batch_norm(), nn.relu, nn.dropout(0.5), nn.dense(3), nn.batch_norm())
AGREEMENT = ["backward", "custom", "custom_jit", "custom_vmap", "custom_grad_of_grad"]


@pytest.mark.parametrize("seed", [0, 2, 4])
def test_a_correct_network_with_an_ill_conditioned_gradient_passes(seed):
    fnn.testing.assert_module(ILL_CONDITIONED, (4,), batch_size=6, train=True, seed=seed, checks=AGREEMENT)


def test_the_tolerance_rises_with_the_conditioning_of_a_leaf_only_and_still_catches_a_wrong_rule_there():
    rtol = _dtypes.rtol(np.float64)
    ill = fnn.testing.check_module(ILL_CONDITIONED, (4,), batch_size=6, train=True, checks=AGREEMENT)
    for name in ("backward", "custom_jit"):
        assert ill[name].where.startswith("dparams[4]['w']") and ill[name].tolerance > 100 * rtol, str(ill)
    well = fnn.testing.check_module(DENSE, (5,), checks=AGREEMENT)
    assert {well[name].tolerance for name in AGREEMENT} == {rtol}, str(well)
    off_by_1e6 = with_backward(nn.dense(3), lambda p, s, g, r: ({"w": r[0]["w"] * (1 + 1e-6)}, r[1]))
    net = nn.serial(*ILL_CONDITIONED.children[:4], off_by_1e6, nn.batch_norm())
    report = fnn.testing.check_module(net, (4,), batch_size=6, train=True, checks=["backward"])
    assert failed(report)["backward"].where.startswith("dparams[4]['w']"), str(report)


#: A bias right before batch norm has a true gradient of exactly zero: autodiff's and the rule's are both rounding
#: noise of the terms the normalisation cancels. Not a network the tolerance was tuned on.
BIAS_BEFORE_NORM = nn.serial(
    nn.dense(6, bias=True), nn.batch_norm(), nn.gelu, nn.dense(5), nn.batch_norm(), nn.tanh, nn.dense(3)
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_gradient_that_is_exactly_zero_is_held_to_the_noise_of_what_it_sums(seed):
    report = fnn.testing.check_module(BIAS_BEFORE_NORM, (7,), batch_size=7, train=True, seed=seed, checks=AGREEMENT)
    assert report.ok, str(report)
    counted_twice = with_backward(nn.dense(6, bias=True), lambda p, s, g, r: ({**r[0], "b": r[0]["b"] + g[0]}, r[1]))
    wrong = nn.serial(counted_twice, *BIAS_BEFORE_NORM.children[1:])
    report = fnn.testing.check_module(wrong, (7,), batch_size=7, train=True, seed=seed, checks=["backward"])
    assert failed(report)["backward"].where.startswith("dparams[0]['b']"), str(report)


def test_a_loss_whose_floating_targets_must_be_exact_keeps_the_rounding_tolerance():
    # Labels 0/1 nudged by an ulp are no labels (the logistic loss gives NaN): a loss's targets are never nudged.
    logistic = losses.logistic
    doubled = loss("logistic", forward=logistic.forward, backward=lambda s, g: 2 * logistic.backward(s, g))
    labels = lambda rng, shape: rng.integers(0, 2, shape).astype(np.float64)  # noqa: E731
    report = fnn.testing.check_loss(doubled, (3,), targets=labels, checks=["backward", "custom", "custom_jit"])
    assert {c.name for c in report.failed} == {"backward", "custom", "custom_jit"}, str(report)
    assert {c.tolerance for c in report.rows} == {_dtypes.rtol(np.float64)}, str(report)


# ------------------------------------------------------------------ integer inputs: an embedding
def _embedding(dx):
    """A lookup ``y = table[ids]``; backward sums ``G`` into the table's rows by fnn's embedding rule (in a fixed
    order: a scatter-add's colliding rows would fail the determinism check on a GPU); ``dx(ids)`` for the ids."""

    def init(key, input_shape):
        return (*input_shape, 3), {"table": jax.random.normal(key, (7, 3))}

    def backward(params, ids, g):
        return EMBEDDING.backward(params, ids, g)[0], dx(ids)

    return leaf("embedding", init=init, forward=lambda p, ids: (p["table"][ids], ids), backward=backward)


IDS = np.array([[0, 3, 3], [6, 1, 0]])


def test_an_integer_input_is_checked_and_gets_no_gradient():
    report = fnn.testing.check_module(_embedding(lambda ids: None), IDS.shape[1:], x=IDS)
    assert report.ok, str(report)
    assert report["finite_differences"].where.startswith("dparams['table']")
    drawn = fnn.testing.check_module(
        _embedding(lambda ids: None), (4,), batch_size=5, x=lambda rng, s: rng.integers(0, 7, s)
    )
    assert drawn.ok, str(drawn)


def test_a_gradient_for_an_integer_input_is_caught():
    report = fnn.testing.check_module(_embedding(lambda ids: jnp.zeros(ids.shape)), IDS.shape[1:], x=IDS)
    assert failed(report)["structure"].where == "dx", str(report)
    assert "an integer input gets no gradient" in failed(report)["structure"].detail


# ------------------------------------------------------------------ finite differences
def test_a_kink_within_the_step_is_left_out_not_failed():
    x = np.random.default_rng(0).standard_normal((4, 5))
    x[1, 2] = 1e-9  # relu's kink lies within the step of this entry
    report = fnn.testing.check_module(nn.relu, (5,), x=x, checks=["finite_differences"])
    assert report.ok and "19 directions, 1 left out" in report["finite_differences"].detail, str(report)


@given(
    a=st.floats(-3, 3),
    b=st.floats(-3, 3),
    kink=st.floats(-2.5, 2.5),
    jump=st.floats(0.1, 10),
    sign=st.sampled_from([-1.0, 1.0]),
)
def test_a_kink_anywhere_in_the_stencil_is_left_out_or_harmless(a, b, kink, jump, sign):
    # phi(t) = a t + b t^2 + jump max(t - kink h, 0): a kink at kink h, within the larger step's stencil (2h).
    # The slope at 0 is a, plus the jump if the kink lies below 0.
    h, jump = _finite.step(np.zeros(1)), sign * jump
    estimates = []
    for f in _finite.STEPS:
        t = f * h * np.arange(-2.0, 3.0)
        estimates.append(_finite.estimate((a * t + b * t * t + jump * np.maximum(t - kink * h, 0))[None], f * h))
    truth = a + (jump if kink < 0 else 0.0)
    found = _finite.compare(np.array([truth]), *estimates)
    assert found is None or found.ok  # the right slope is never called wrong
    wrong = _finite.compare(np.array([truth + 0.5 * abs(jump) + 0.5]), *estimates)
    assert wrong is None or not wrong.ok  # a slope off by half the jump (or more) is never passed


@given(
    rows=st.lists(st.integers(1, 3), min_size=1, max_size=2),
    n_in=st.integers(1, 6),
    n_out=st.integers(1, 4),
    bias=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_a_correct_rule_passes_at_any_shape_and_seed(rows, n_in, n_out, bias, seed):
    report = fnn.testing.check_module(
        nn.dense(n_out, bias=bias),
        (*rows[1:], n_in),
        batch_size=rows[0],
        seed=seed,
        checks=["structure", "backward", "finite_differences"],
    )
    assert report.ok, str(report)


def test_large_leaves_are_checked_along_random_directions():
    report = fnn.testing.check_module(nn.dense(3), (300,), batch_size=2, checks=["finite_differences"])
    assert report.ok and "64 directions" in report["finite_differences"].detail, report  # 32 in w, 32 in x
    assert "along random direction" in report["finite_differences"].where


# ------------------------------------------------------------------ the report and the API
def test_the_report_is_a_table_of_every_check():
    report = fnn.testing.check_module(DENSE, (5,))
    assert report.ok and report.keys == (
        "output", "structure", "backward", "custom", "custom_jit", "custom_vmap", "custom_grad_of_grad",
        "forward_mode", "forward_sweep", "finite_differences", "finite_differences_2", "dtype[float32]",
        "dtype[bfloat16]", "edge_values", "determinism", "context", "saved",
    )  # fmt: skip
    text = str(report)
    assert text.startswith(f"check_module({DENSE!r}, input (4, 5), seed 0, products at precision highest): ok")
    assert all(name in text for name in report.keys)
    assert report["forward_mode"].status == report["forward_sweep"].status == "passed"
    assert report["saved"].status == "info" and "B computed" in report["saved"].detail
    assert 0 < report.worst_ratio() < 1
    with pytest.raises(KeyError, match="no row named 'nope'"):
        report["nope"]


def test_the_same_seed_gives_the_same_report_and_another_seed_other_draws():
    first, again = (fnn.testing.check_module(DENSE, (5,), checks=["finite_differences"]) for _ in range(2))
    other = fnn.testing.check_module(DENSE, (5,), checks=["finite_differences"], seed=1)
    assert first == again and first["finite_differences"].error != other["finite_differences"].error


def test_the_checker_runs_with_float64_off():
    with jax.enable_x64(False):
        report = fnn.testing.assert_module(DENSE, (5,), checks=["backward", "dtypes", "finite_differences"])
    assert report["backward"].tolerance < 1e-11  # float64, turned on inside the checker


def test_params_and_edge_values_given_by_the_caller_are_used():
    params = {"w": np.ones((5, 3)), "b": np.zeros(3)}
    report = fnn.testing.check_module(DENSE, (5,), params=params, edge_values=(0.0, lambda s: np.full(s, 1e3)))
    assert report.ok
    assert "0.0, <lambda>" in report["edge_values"].detail


def test_assert_forms_raise_with_the_report():
    broken = BROKEN_MODULES[0][1]
    with pytest.raises(
        AssertionError,
        match=r"check_module\(dense, input \(4, 5\), seed 0, products at precision highest\): \d+ FAILED",
    ):
        fnn.testing.assert_module(broken, (5,), checks=["backward"])
    assert fnn.testing.assert_loss(losses.mse, (3,), targets=np.zeros((4, 3)), checks=["backward"]).ok


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: fnn.testing.check_module(jnp.tanh, (5,)), TypeError, "module must be an fnn module"),
        (lambda: fnn.testing.check_module(DENSE, 5), ValueError, r"input_shape must be a tuple of positive ints"),
        (lambda: fnn.testing.check_module(DENSE, (5,), checks=["jvp"]), ValueError, r"unknown checks \['jvp'\]"),
        (lambda: fnn.testing.check_module(DENSE, (5,), dtypes=[jnp.float64]), ValueError, "got float64"),
        (lambda: fnn.testing.check_module(DENSE, (5,), dtypes=[jnp.int32]), ValueError, "got int32"),
        (lambda: fnn.testing.check_module(DENSE, (5,), seed=-1), ValueError, "seed must be a non-negative int"),
        (lambda: fnn.testing.check_module(DENSE, (5,), x=np.zeros((4, 6))), ValueError,
         r"x has shape \(4, 6\), expected the shape checked, \(4, 5\)"),
        (lambda: fnn.testing.check_module(DENSE, (5,), edge_values=(np.zeros(3),), checks=["edge_values"]),
         AssertionError, "does not broadcast"),
        (lambda: fnn.testing.check_module(fnn.nn._linear.MATMUL, (5,)), ValueError, "matmul has no init; pass"),
        (lambda: fnn.testing.check_loss(nn.relu, (5,), targets=np.zeros(4)), TypeError, "loss must be an fnn loss"),
        (lambda: fnn.testing.check_loss(losses.mse, (3,), targets=None), TypeError, "pass targets="),
        (lambda: fnn.testing.check_loss(losses.mse, (3,), targets=np.zeros(3)), ValueError,
         r"targets must have the batch axis first, 4 rows \(batch_size=\); got shape \(3,\)"),
    ],
    ids=["not_a_module", "shape_not_tuple", "unknown_check", "dtype_float64", "dtype_int", "seed", "x_shape",
         "edge_shape", "no_init", "not_a_loss", "no_targets", "targets_rows"],
)  # fmt: skip
def test_argument_errors(call, error, message):
    with pytest.raises(error, match=message):
        result = call()
        result.assert_ok()  # an edge value's error is the check's finding, reported as failed


# ------------------------------------------------------------------ wrong_rules
BAD_SIGMOID = nn.activation("sigmoid", lambda x: (jax.nn.sigmoid(x),) * 2, lambda s, g: g * s * (1 + s))


def ten_leaf_net(block_activation=nn.sigmoid):
    return nn.serial(
        nn.dense(6, bias=True),
        nn.tanh,
        nn.residual(nn.serial(nn.dense(6), block_activation, nn.layer_norm())),
        nn.gelu,
        nn.dense(6),
        nn.relu,
        nn.dense(6),
        nn.softplus(),
        nn.dense(3),
    )


def batch(model, seed=0):
    _, params = model.init(jax.random.key(seed), (5,))
    x = jax.random.normal(jax.random.key(seed + 1), (4, 5))
    return params, x, jax.random.randint(jax.random.key(seed + 2), (4,), 0, 3)


@pytest.mark.slow  # about 10 s: ten leaves, each checked alone
def test_wrong_rules_names_the_one_broken_leaf_among_ten():
    model = ten_leaf_net(BAD_SIGMOID)
    report = fnn.inspect.wrong_rules(model, losses.cross_entropy, *batch(model))
    assert wrong(report) == ("serial[2] residual serial[1] sigmoid",), str(report)
    assert report.rows[0].position == wrong(report)[0] and report.rows[0].where.startswith("dx")
    assert report.rows[0].status == "WRONG" and isinstance(report, fnn.testing.Report)
    inherited = {r.position for r in report if not r.passed and not r.own}
    assert inherited == {"serial", "serial[2] residual", "serial[2] residual serial"}  # the wrong leaf's ancestors
    assert all(
        r.passed for r in report if r.position.endswith(("dense", "tanh", "gelu", "layer_norm", "cross_entropy"))
    )
    assert "WRONG" in str(report).splitlines()[2]  # the first row, after the subject and the header


def test_wrong_rules_passes_a_correct_network_and_names_every_module():
    model = ten_leaf_net()
    report = fnn.inspect.wrong_rules(model, losses.cross_entropy, *batch(model))
    assert report.ok and wrong(report) == ()
    positions = {r.position for r in report}
    assert "serial[2] residual serial[2] layer_norm" in positions and "loss cross_entropy" in positions
    assert len(positions) == 9 + 3 + 1 + 1 + 1  # nine children, three in the block, the block, the root, the loss


def forgetful_residual(block):
    """``z + block(z)`` whose backward forgets the skip connection's ``G``: wrong wiring, right children."""
    return structural(
        "residual",
        init=block.init,
        apply=lambda p, z: z + block.apply(p, z),
        forward=lambda p, z: (lambda y, s: (z + y, s))(*block.forward(p, z)),
        backward=block.backward,
        children=(block,),
        rebuild=forgetful_residual,
    )


def test_wrong_rules_finds_a_wrong_wiring_rule_and_a_wrong_loss():
    model = nn.serial(nn.dense(5), forgetful_residual(nn.dense(5)), nn.dense(3))
    params, x, labels = batch(model)
    bad_loss = loss("mse", forward=losses.mse.forward, backward=lambda diff, g: g * diff / diff.size)  # forgets the 2
    report = fnn.inspect.wrong_rules(model, bad_loss, params, x, jax.random.normal(jax.random.key(3), (4, 3)))
    assert set(wrong(report)) == {"serial[1] residual", "loss mse"}, str(report)
    assert report["serial[1] residual dense"].passed


# ------------------------------------------------------------------ precision
def _precisions(hlo):
    """The precision of every dot and convolution in a lowered program's text."""
    return re.findall(r"stablehlo\.(?:dot_general|convolution).*?precision = \[(\w+), (\w+)\]", hlo)


def test_the_checker_runs_every_product_at_full_precision_whatever_the_callers_setting(monkeypatch):
    from fnn._gradcheck import gradients as checker_gradients

    lowered = []

    def recording(compiled):
        def run(*args):
            lowered.append(compiled.lower(*args).as_text())
            return compiled(*args)

        return run

    for name in ("jit_draws", "jit_dtypes", "jit_on_paths", "jit_stencil"):  # every program the checker compiles
        monkeypatch.setattr(checker_gradients, name, recording(getattr(checker_gradients, name)))
    model = nn.serial(nn.conv2d(2, 3), nn.flatten(), nn.dense(3))
    with jax.default_matmul_precision("bfloat16"):  # a caller's lower setting changes nothing inside
        report = fnn.testing.check_module(model, (5, 5, 1), checks=["backward", "custom_jit", "dtypes"])
    found = [p for text in lowered for p in _precisions(text)]
    assert len(found) > 10 and set(found) == {("HIGHEST", "HIGHEST")}, set(found)
    assert "products at precision highest" in report.subject and report.ok, str(report)
