"""fnn.bench: the statistics on synthetic timings (where the truth is known), and one real run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import bench


def rounds(ratio, *, n=16, base=1e-3, shared=0.10, own=0.02, seed=0):
    """Synthetic per-call timings of a baseline and a function ``ratio`` times as slow.

    Each round scales both by a shared factor (the machine's mood, lognormal
    with ``shared`` spread) and each by its own (``own`` spread), as on a
    noisy shared VM.
    """
    rng = np.random.default_rng(seed)
    mood = np.exp(rng.normal(0, shared, n))
    wall = {
        "base": base * mood * np.exp(rng.normal(0, own, n)),
        "other": ratio * base * mood * np.exp(rng.normal(0, own, n)),
    }
    cpu = {name: 2 * t for name, t in wall.items()}  # two busy threads
    return wall, cpu


def test_a_function_against_itself_is_a_tie_within_seven_percent():
    result = bench.summarize(*rounds(1.0), baseline="base")["other"]
    assert result.verdict == "tie"
    assert 0.93 <= result.ci_low <= 1 <= result.ci_high <= 1.07


def test_thirty_percent_more_work_is_slower():
    result = bench.summarize(*rounds(1.3), baseline="base")["other"]
    assert result.verdict == "slower"
    assert result.ci_low <= 1.3 <= result.ci_high and result.ci_low > 1
    assert result.cpu_ratio == pytest.approx(1.3, rel=0.05)


def test_less_work_is_faster():
    assert bench.summarize(*rounds(0.8), baseline="base")["other"].verdict == "faster"


def test_the_baseline_is_its_own_tie():
    result = bench.summarize(*rounds(1.3), baseline="base")["base"]
    assert (result.ratio, result.ci_low, result.ci_high, result.cpu_ratio, result.verdict) == (1, 1, 1, 1, "tie")


def test_the_interval_covers_the_true_ratio_about_as_often_as_it_claims():
    """A 95% interval over 16 rounds should hold the true ratio in most repetitions.

    The median's bootstrap interval is known to undercover a little at small
    samples; 85% of 100 repetitions is the bar (a broken interval, e.g. the
    quartiles or a mean's normal interval of the wrong data, falls far short
    or far over).
    """
    covered = [bench.summarize(*rounds(1.1, seed=s), baseline="base")["other"] for s in range(100)]
    hits = sum(r.ci_low <= 1.1 <= r.ci_high for r in covered)
    assert hits >= 85
    assert np.median([r.ci_high - r.ci_low for r in covered]) < 0.1


def test_round_ratios_cancel_the_shared_load():
    """Shared slowdowns of 30% per round leave the ratio's interval tight."""
    result = bench.summarize(*rounds(1.05, shared=0.3, own=0.01), baseline="base")["other"]
    assert result.verdict == "slower" and result.ci_high - result.ci_low < 0.03


def test_same_timings_same_interval():
    a, b = (bench.summarize(*rounds(1.1), baseline="base", seed=3)["other"] for _ in range(2))
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)


def test_identical_ratios_give_a_point_interval():
    wall = {"base": [1.0, 2.0, 3.0] * 2, "same": [1.0, 2.0, 3.0] * 2}
    result = bench.summarize(wall, wall, baseline="base")["same"]
    assert (result.ratio, result.ci_low, result.ci_high, result.verdict) == (1, 1, 1, "tie")


@pytest.mark.parametrize(
    "low, high, margin, expected",
    [
        (1.005, 1.03, 0.0, "slower"),  # strict: the interval excludes 1
        (1.005, 1.03, 0.02, "tie"),  # but part of it lies within 2%
        (1.021, 1.03, 0.02, "slower"),  # all of it beyond 2%
        (0.97, 0.995, 0.0, "faster"),
        (0.97, 0.995, 0.02, "tie"),
        (0.97, 0.98, 0.02, "faster"),  # below 1 / 1.02 = 0.9804
        (0.97, 0.981, 0.02, "tie"),
        (0.99, 1.01, 0.0, "tie"),
    ],
)
def test_verdict_with_and_without_a_margin(low, high, margin, expected):
    assert bench.verdict(low, high, margin) == expected


def test_the_margin_is_symmetric_in_log_ratio():
    """Swapping baseline and function swaps faster and slower, margin or not."""
    wall, cpu = rounds(1.03, own=0.005)
    swapped = {"base": wall["other"], "other": wall["base"]}, {"base": cpu["other"], "other": cpu["base"]}
    for margin in (0.0, 0.02, 0.05):
        there = bench.summarize(wall, cpu, baseline="base", margin=margin)["other"]
        back = bench.summarize(*swapped, baseline="base", margin=margin)["other"]
        flipped = {"faster": "slower", "slower": "faster", "tie": "tie"}
        assert back.verdict == flipped[there.verdict] and there.margin == margin
    assert bench.summarize(wall, cpu, baseline="base", margin=0.02)["other"].verdict == "slower"
    assert bench.summarize(wall, cpu, baseline="base", margin=0.05)["other"].verdict == "tie"


def test_a_margin_turns_a_one_percent_difference_into_a_tie():
    """A true 1% difference, resolved by a tight interval, is slower strictly and a tie within 2%."""
    wall, cpu = rounds(1.01, shared=0.3, own=0.002)
    assert bench.summarize(wall, cpu, baseline="base")["other"].verdict == "slower"
    assert bench.summarize(wall, cpu, baseline="base", margin=0.02)["other"].verdict == "tie"
    assert bench.summarize(*rounds(1.3), baseline="base", margin=0.02)["other"].verdict == "slower"


def test_summarize_errors():
    wall, cpu = rounds(1.0)
    with pytest.raises(ValueError, match=r"baseline 'nope' is not one of the timed functions \['base', 'other'\]"):
        bench.summarize(wall, cpu, baseline="nope")
    with pytest.raises(ValueError, match=r"the same number of rounds, at least 6; got \[15, 16\]"):
        bench.summarize({"base": wall["base"], "other": wall["other"][:-1]}, cpu, baseline="base")
    for bad, error in (
        (-0.01, ValueError),
        (1.0, ValueError),
        (float("nan"), ValueError),
        (True, TypeError),
        ("2%", TypeError),
    ):
        with pytest.raises(
            error, match=r"summarize: margin must be .*in \[0, 1\) \(0.02 means differences within 2% are a tie\)"
        ):
            bench.summarize(wall, cpu, baseline="base", margin=bad)
        with pytest.raises(error, match=r"verdict: margin must be .*in \[0, 1\)"):
            bench.verdict(0.9, 1.1, bad)
    for margin in (np.float32(0.02), np.float64(0.02), jnp.float64(0.02)):
        assert bench.verdict(1.05, 1.1, margin) == "slower"
        assert type(bench.summarize(wall, cpu, baseline="base", margin=margin)["other"].margin) is float


def test_compare_times_real_functions():
    x = jnp.ones((64, 64), jnp.float32)
    results = bench.compare(
        {"one": lambda x: x @ x, "two": lambda x: (x @ x) @ x}, x, baseline="one", rounds=6, block_s=0.005
    )
    assert list(results) == ["one", "two"]
    for r in results.values():
        assert r.compile_s > 0 and r.calls >= 1 and len(r.wall_s) == len(r.cpu_s) == 6
        assert r.q1_s <= r.median_s <= r.q3_s and r.verdict in bench.VERDICTS
    assert set(results["two"].to_dict()) >= {"median_s", "ratio", "ci_low", "ci_high", "cpu_ratio", "verdict", "margin"}


def test_compare_counts_the_work_and_sets_the_rate_against_the_limit():
    x = jnp.ones((64, 64), jnp.float32)
    results = bench.compare({"one": lambda x: x @ x}, x, baseline="one", rounds=6, block_s=0.005, rate=1e9)
    one = results["one"]
    assert one.flops == 2 * 64**3  # the product's model FLOPs
    assert one.xla_flops == pytest.approx(2 * 64**3, rel=0.01) or np.isnan(one.xla_flops)  # a backend may count none
    assert one.limit == "1 GFLOP/s"
    assert one.flops_per_s == pytest.approx(one.flops / one.median_s)
    assert one.machine_fraction == pytest.approx(one.flops_per_s / 1e9)
    unset = bench.compare({"one": lambda x: x @ x}, x, baseline="one", rounds=6, block_s=0.005, rate=False)["one"]
    assert np.isnan(unset.machine_fraction) and unset.flops == one.flops


def test_flops_counts_a_loop_body_once():
    a = jnp.ones((16, 16), jnp.float32)

    def loop(a, n):
        return jax.lax.scan(lambda c, _: (c @ a, None), a, None, length=n)[0]

    one, ten = (bench.flops(jax.jit(loop, static_argnums=1).lower(a, n)) for n in (1, 10))
    if jax.default_backend() == "cpu":  # XLA's cost model, which other backends may not give for a lowered program
        assert one == pytest.approx(2 * 16**3, rel=0.01) and ten == pytest.approx(one, rel=0.01)  # as documented
    model = [bench.model_flops(lambda a, n=n: loop(a, n), a).flops for n in (1, 10)]
    assert model == [2 * 16**3, 10 * 2 * 16**3]  # the program's own count: a scan's body times its length


def test_model_flops_count_every_path_alike_and_say_what_they_cannot_count():
    model = fnn.nn.mlp([784, 500, 10])
    params = model.init(jax.random.key(0), (784,))[1]
    x, labels = jnp.ones((100, 784), jnp.float32), jnp.zeros(100, int)
    forward = 100 * 2 * (784 * 500 + 500 * 10)
    for path in fnn.PATHS:
        grads = fnn.value_and_grad(model, fnn.losses.cross_entropy, path=path)
        counted = bench.model_flops(grads, params, x, labels)
        assert counted.flops == forward + 2 * forward - 100 * 2 * 784 * 500, path  # the unused dx of x not counted
        assert (counted.dtype, counted.precision, counted.note) == ("float32", "default", ""), path
    conv = fnn.nn.conv2d(8, 3, stride=2)
    y = jax.ShapeDtypeStruct((32, 14, 14, 8), jnp.float32)
    w = conv.init(jax.random.key(0), (28, 28, 3))[1]
    assert (
        bench.model_flops(conv.apply, w, jnp.ones((32, 28, 28, 3), jnp.float32)).flops == 2 * np.prod(y.shape) * 9 * 3
    )
    a = jnp.ones((8, 8), jnp.bfloat16)
    with jax.default_matmul_precision("highest"):
        counted = bench.model_flops(lambda a: a @ a, a)
    assert (counted.dtype, counted.precision) == ("bfloat16", "highest")
    looped = bench.model_flops(
        lambda a: jax.lax.while_loop(lambda c: c[0][0, 0] < 9, lambda c: (c[0] @ a, 0), (a, 0)), a
    )
    assert np.isnan(looped.flops) and "while loop" in looped.note


@pytest.fixture
def rate_cache(tmp_path, monkeypatch):
    """An empty cache folder of fnn's own, and this process's rates forgotten; returns the cache file."""
    monkeypatch.setenv("FNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(bench, "_RATES", {})
    return tmp_path / "machine_rate.json"


def measuring(monkeypatch, *rates):
    """Makes every measurement of a size give ``rates`` (one FLOP/s per timed call)."""
    monkeypatch.setattr(bench, "_matmul_rates", lambda shape, dtype, precision: list(rates))


def test_the_machine_rate_is_measured_once_and_cached(rate_cache, monkeypatch):
    platform = jax.devices()[0].platform
    monkeypatch.setitem(bench.RATE_SIZES, platform, (64, 128))
    rate = bench.machine_rate()
    assert rate.flops_per_s == max(r for _, r in rate.shapes) == max(rate.samples) > 0
    assert [shape for shape, _ in rate.shapes] == [(64, 64, 64), (128, 128, 128)]
    assert rate.device == bench.device_description() and rate.dtype == "float32" and rate.jax_version == jax.__version__
    assert rate.precision == "default" and 0 < rate.spread[0] <= rate.spread[1] == 1.0
    monkeypatch.setattr(bench, "_RATES", {})  # a new process reads the file
    monkeypatch.setattr(bench, "_matmul_rates", lambda *a, **k: pytest.fail("measured again"))
    assert bench.machine_rate() == rate
    assert rate_cache.exists()


def test_the_cache_keeps_the_best_rate_ever_measured(rate_cache, monkeypatch):
    monkeypatch.setitem(bench.RATE_SIZES, jax.devices()[0].platform, (32,))
    measuring(monkeypatch, 5.0, 4.0)
    assert bench.machine_rate(refresh=True).flops_per_s == 5.0
    measuring(monkeypatch, 7.0)
    assert bench.machine_rate().flops_per_s == 5.0 and bench.machine_rate(refresh=True).flops_per_s == 7.0
    measuring(monkeypatch, 2.0)  # measured under load: the better rate stays
    assert bench.machine_rate(refresh=True).flops_per_s == 7.0
    monkeypatch.setattr(bench, "_RATES", {})
    assert bench.machine_rate().flops_per_s == 7.0  # the file holds the best
    measuring(monkeypatch, 9.0)
    assert bench.limit(6.0).flops_per_s == 7.0  # work below the limit leaves it
    assert bench.limit(8.0).flops_per_s == 9.0  # work above it: the limit was measured low, and is measured again


@pytest.mark.parametrize(
    "content",
    ["[1, 2, 3]", "null", "3", '"text"', "{not json", '{"%s": {"flops_per_s": 0}}', '{"%s": {"flops_per_s": -5}}'],
)
def test_any_cache_content_is_recovered_from(rate_cache, monkeypatch, content):
    monkeypatch.setitem(bench.RATE_SIZES, jax.devices()[0].platform, (32,))
    measuring(monkeypatch, 3.0)
    rate_cache.write_text(content)
    assert bench.machine_rate().flops_per_s == 3.0
    assert bench.MachineRate.from_dict(json.loads(rate_cache.read_text())[next(iter(bench._RATES))]).flops_per_s == 3.0


def test_a_cached_entry_that_is_not_a_valid_rate_is_measured_again(rate_cache, monkeypatch):
    monkeypatch.setitem(bench.RATE_SIZES, jax.devices()[0].platform, (32,))
    measuring(monkeypatch, 3.0)
    key, good = next(iter(json.loads((bench.machine_rate(), rate_cache.read_text())[1]).items()))
    for bad in (0, -5, "fast", True, float("nan"), None):
        rate_cache.write_text(json.dumps({key: {**good, "flops_per_s": bad}}))
        monkeypatch.setattr(bench, "_RATES", {})
        measuring(monkeypatch, 4.0)
        assert bench.machine_rate().flops_per_s == 4.0, bad
    for damaged in ({k: v for k, v in good.items() if k != "shapes"}, {**good, "samples": ["x"]}, [good]):
        assert bench.MachineRate.from_dict(damaged) is None


def test_an_unwritable_cache_folder_keeps_no_rate(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FNN_CACHE_DIR", str(blocker / "below"))
    measuring(monkeypatch, 3.0)
    monkeypatch.setattr(bench, "_RATES", {})
    assert bench.machine_rate().flops_per_s == 3.0


def test_matmul_rate_counts_the_products_it_ran():
    assert bench.matmul_rate((32, 16, 8), seconds=0.01, repeats=1) > 1e6


def test_compare_errors():
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="baseline 'b' is not one of"):
        bench.compare({"a": jnp.sin}, x, baseline="b")
    with pytest.raises(ValueError, match="compare: rounds must be an int >= 6, got 5"):
        bench.compare({"a": jnp.sin}, x, baseline="a", rounds=np.int64(5))
    with pytest.raises(ValueError, match=r"compare: block_s must be in \(0, inf\), got 0.0"):
        bench.compare({"a": jnp.sin}, x, baseline="a", block_s=0)
    with pytest.raises(ValueError, match="at least one function"):
        bench.compare({}, x, baseline="a")
    with pytest.raises(ValueError, match=r"compare: margin must be in \[0, 1\)"):
        bench.compare({"a": jnp.sin}, x, baseline="a", margin=-1)


def test_rounds_rotate_and_alternate():
    assert ["".join(bench.round_order(list("AB"), r)) for r in range(4)] == ["AB", "BA", "BA", "AB"]
    assert {"".join(bench.round_order(list("ABC"), r)) for r in range(6)} == {"ABC", "CBA", "BCA", "ACB", "CAB", "BAC"}


def test_a_function_entered_twice_is_compiled_once():
    x = jnp.ones((32, 32), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    results = bench.compare({"a": f, "b": f}, x, baseline="a", rounds=6, block_s=0.002)
    assert results["a"].compile_s == results["b"].compile_s and results["a"].calls == results["b"].calls


def test_the_self_check_experiment_runs(tmp_path):
    from experiments import bench_check

    result = bench_check.main(
        ["--rounds", "6", "--block-s", "0.002", "--copies", "2", "--json", str(tmp_path / "check.json")]
    )
    assert list(result["checks"]) == ["same function twice", "recompiled copy 1", "recompiled copy 2", "1.3x the work"]
    assert all({"ratio", "ci_low", "ci_high", "verdict", "ok"} <= set(c) for c in result["checks"].values())
    copies = [result["checks"][f"recompiled copy {i}"]["ratio"] for i in (1, 2)]
    assert result["resolution"] == max(abs(r - 1) for r in copies)
