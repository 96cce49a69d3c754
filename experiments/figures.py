"""Draws the results page's figures from the committed result files, training nothing.

Each figure is one PNG, drawn from JSON files in ``experiments/results/``:

- ``recipe_curves.png``: test and train error per epoch of the notes' recipe, both gradient paths
  (``mnist_two_layer.json``, ``mnist_linear.json``), against the notes' 2.6% and about 7.5%;
- ``module_costs.png``: per module, the hand-written rule's time and temporary memory over autodiff's
  (``module_costs.json``, ``module_costs_state.json``);
- ``attention_cost.png``: the attention gradient's temporary memory and time against sequence length, per path
  (``attention_cost.json``);
- ``peers.png``: fnn against Flax NNX and PyTorch (``peer_pooled.json``) and against the notes' PyTorch code
  (``speed_vs_torch.json``);
- ``kill_resume.png``: runs killed with SIGKILL and resumed (``kill_resume.json``, ``kill_resume_bn_dropout.json``);
- ``compare_grads.png``: per MLP configuration, the custom and backprop paths' step time, temporary memory and
  gradient error against autodiff and float64 (``compare_grads.json``, ``compare_grads_rerun.json``);
- ``modes.png``: the full Jacobian by forward and by reverse mode, time and FLOPs against inputs and outputs
  (``modes.json``).

Every figure names the machine its numbers were measured on (the files' ``device`` and ``jax_version``).

    python -m experiments.figures                  # writes docs/_static/figures/*.png
    python -m experiments.figures --out /tmp/figs --results experiments/results
"""

import argparse
import json
import statistics
from pathlib import Path

from matplotlib.patches import Patch
from matplotlib.ticker import NullFormatter

from experiments import _cli
from experiments._common import pyplot

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
OUT = ROOT / "docs" / "_static" / "figures"
ANNOTATION = {"textcoords": "offset points", "xytext": (6, -10), "fontsize": 8}
PATH_COLORS = {"custom": "C0", "autodiff": "C1", "autodiff_tiled": "C2", "jax_nn": "C3", "backprop": "C4"}


# ---------------------------------------------------------------- reading the results, finishing a figure
def load(results, name, *, optional=False):
    """The parsed JSON file ``results/name``; ``None`` for a missing ``optional`` one.

    Raises:
        ValueError: the file is missing (and not optional), unreadable or not JSON.
    """
    path = Path(results) / name
    if optional and not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ValueError(f"cannot read the results file {path}: {reason}") from exc


def load_present(results, files):
    """``[(name, parsed JSON), ...]`` of ``files``: the first required, the others drawn only if present."""
    loaded = [(name, load(results, name, optional=i > 0)) for i, name in enumerate(files)]
    return [(name, result) for name, result in loaded if result is not None]


def interval(centers, lows, highs):
    """Matplotlib's asymmetric error bars ``[[c - low, ...], [high - c, ...]]`` for an interval around each center."""
    return [[c - low for c, low in zip(centers, lows)], [high - c for c, high in zip(centers, highs)]]


def machine(*results):
    """Names the machines the results were measured on, e.g. ``"cpu: Intel Xeon x 2 cores, JAX 0.10.2"``."""
    names = []
    for result in results:
        name = result["device"] + (f", JAX {result['jax_version']}" if "jax_version" in result else "")
        if name not in names:
            names.append(name)
    return "; ".join(names)


def finish(fig, path, title, files, results):
    """Titles the figure, notes its source files and machine at its foot, writes it (PNG, 100 dpi) and closes it."""
    fig.suptitle(title)
    fig.text(0.01, 0.01, f"from {', '.join(files)}; measured on {machine(*results)}", fontsize=8, color="0.3")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


# ---------------------------------------------------------------- one function per figure
def draw_recipe_curves(results, path):
    """Test (solid) and train (dashed) error per epoch: the two-layer net and the linear model, both paths."""
    panels = [  # file, model, the notes' test error (%), the error axis' scale
        ("mnist_two_layer.json", "784-500-10 ReLU", 2.6, "log"),
        ("mnist_linear.json", "linear 784-10", 7.5, "linear"),
    ]
    loaded = [load(results, name) for name, *_ in panels]
    markers = {"custom": "o", "autodiff": "x"}
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4.2))
    for ax, (name, label, notes, scale), result in zip(axes, panels, loaded):
        for run in result["runs"]:
            epochs = [row["epoch"] for row in run["history"]]
            run_label = run["grad"] + (", initial weights nudged one ulp" if run["nudged"] else "")
            style = {"color": "0.6", "lw": 1} if run["nudged"] else {"color": PATH_COLORS[run["grad"]]}
            style["marker"] = None if run["nudged"] else markers[run["grad"]]
            for split, line in (("test", "-"), ("train", "--"))[: 1 if run["nudged"] else 2]:
                errors = [100 * r[f"{split}_err"] for r in run["history"]]
                ax.plot(epochs, errors, line, label=f"{run_label} {split}", **style)
        ax.axhline(notes, color="k", ls=":", label=f"the notes: {notes}%")
        ax.set(xlabel="epoch", ylabel="error (%)", yscale=scale, title=f"{label} ({name})")
        ax.yaxis.set_major_formatter("{x:g}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    title = "The notes' recipe (SGD 0.5, batch 100, 10 epochs): error per epoch"
    finish(fig, path, title, [name for name, *_ in panels], loaded)


def draw_module_costs(results, path):
    """Per module: the custom path's wall time (median, 95% interval) and temporary bytes over autodiff's."""
    files = ["module_costs.json", "module_costs_state.json"]
    loaded, rows, seen = [], [], set()
    for name, result in load_present(results, files):  # an item measured in both files: the first file's
        mine = [row for row in result["rows"] if row["item"] not in seen]
        if mine:
            rows += [(len(loaded), row) for row in mine]
            loaded.append((name, result))
            seen.update(row["item"] for row in mine)
    fig, (ax_time, ax_mem) = pyplot().subplots(1, 2, figsize=(11, 0.28 * len(rows) + 1.6), sharey=True)
    ys = range(len(rows))[::-1]
    colors = [f"C{i}" for i, _ in rows]
    times = [row["time_ratio_wall"] for _, row in rows]
    medians = [t["median"] for t in times]
    errors = interval(medians, [t["ci95"][0] for t in times], [t["ci95"][1] for t in times])
    bars = ax_time.barh(ys, medians, xerr=errors, color=colors, capsize=2)
    ax_time.bar_label(bars, fmt="%.2f", fontsize=7, padding=8)
    bars = ax_mem.barh(ys, [row["temp_bytes_ratio"] for _, row in rows], color=colors)
    ax_mem.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax_time.set(yticks=list(ys), yticklabels=[row["item"] for _, row in rows], xlabel="time over autodiff's")
    ax_time.set(title="wall time (median, 95% interval)", xscale="log")
    ax_mem.set(xlabel="temporary bytes over autodiff's", title="temporary memory", xscale="log")
    for ax in (ax_time, ax_mem):
        ax.axvline(1, color="k", lw=1)
        ax.set_xlim(right=ax.get_xlim()[1] * 1.4)  # room for the labels
        ax.grid(alpha=0.3, axis="x", which="both")
    ax_mem.legend(handles=[Patch(color=f"C{i}", label=n) for i, (n, _) in enumerate(loaded)], fontsize=8)
    title = "Per module: the hand-written rule against autodiff (below 1: cheaper)"
    finish(fig, path, title, [n for n, _ in loaded], [r for _, r in loaded])


def draw_attention_cost(results, path):
    """The attention gradient's temporary memory and time per step against sequence length, for each path."""
    result = load(results, "attention_cost.json")
    fig, (ax_mem, ax_time) = pyplot().subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(row["path"] for row in result["rows"]):
        rows = [row for row in result["rows"] if row["path"] == name]
        seq_lens = [row["seq_len"] for row in rows]
        color = PATH_COLORS.get(name)
        ax_mem.plot(seq_lens, [row["temp_bytes"] / 2**20 for row in rows], "o-", color=color, label=name)
        medians = [row["step_s"] for row in rows]
        quartiles = interval(medians, *zip(*(row["step_s_quartiles"] for row in rows)))
        ax_time.errorbar(seq_lens, medians, yerr=quartiles, fmt="o-", color=color, capsize=2, label=name)
        if name == "custom":  # its ratios to autodiff, as the experiment reports them
            for row in rows:
                memory, time = row["temp_ratio_vs_autodiff"], row["time_ratio"]["median"]
                ax_mem.annotate(f"{memory:.2f}x", (row["seq_len"], row["temp_bytes"] / 2**20), **ANNOTATION)
                ax_time.annotate(f"{time:.2f}x", (row["seq_len"], row["step_s"]), **ANNOTATION)
    ax_mem.set(ylabel="temporary memory (MiB)", title="temporary memory of the gradient")
    ax_time.set(ylabel="seconds per gradient (median, quartiles)", title="time")
    for ax in (ax_mem, ax_time):
        ax.set(xlabel="sequence length T", xscale="log", yscale="log")
        ax.set_xticks(result["config"]["seq_lens"], [str(t) for t in result["config"]["seq_lens"]])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    config = result["config"]
    shape = f"[{config['batch']}, T, {config['heads']}, {config['head_dim']}]"
    title = f"Attention's gradient, q, k, v of {shape} (labels: custom over autodiff)"
    finish(fig, path, title, ["attention_cost.json"], [result])


def draw_peers(results, path):
    """Seconds per epoch against Flax NNX and PyTorch, seconds per run against the notes' code, and the ratios."""
    peers, notes = load(results, "peer_pooled.json"), load(results, "speed_vs_torch.json")
    fig, (ax_peer, ax_notes, ax_ratio) = pyplot().subplots(1, 3, figsize=(13, 4.2))
    for ax, runs, key in ((ax_peer, peers["rounds"], "epoch_s"), (ax_notes, notes["runs"], "wall_s")):
        for x, rounds in enumerate(runs.values()):
            seconds = [r[key] for r in rounds]
            ax.plot([x] * len(seconds), seconds, "o", color=f"C{x}", alpha=0.7)
            ax.hlines(statistics.median(seconds), x - 0.25, x + 0.25, color=f"C{x}")
        ax.set_xticks(range(len(runs)), list(runs))
        ax.set_xlim(-0.6, len(runs) - 0.4)
        ax.grid(alpha=0.3, axis="y")
    ax_peer.set(ylabel="seconds per epoch", title=f"pooled CNN, one epoch, {len(peers['rounds']['fnn'])} rounds")
    ax_notes.set(ylabel="seconds per run", title=f"the notes' recipe, {notes['epochs']} epochs, per run")
    measured = [  # (label, ratio, its interval); speed_vs_torch.json records no interval
        *((f"fnn / {c['peer']}", c["time_ratio"], c["time_ratio_ci95"]) for c in peers["comparisons"]),
        (f"fnn / notes' torch\n(medians of {len(notes['runs']['fnn'])} runs)", notes["ratio_fnn_to_torch"], None),
    ]
    labels, ratios, cis = zip(*measured)
    lows, highs = zip(*(ci or (r, r) for r, ci in zip(ratios, cis)))
    ax_ratio.errorbar(range(len(ratios)), ratios, yerr=interval(ratios, lows, highs), fmt="o", color="k", capsize=4)
    for x, ratio in enumerate(ratios):
        ax_ratio.annotate(f"{ratio:.2f}", (x, ratio), **ANNOTATION)
    for target in {comparison["target_ratio"] for comparison in peers["comparisons"]}:
        ax_ratio.axhline(target, color="0.5", ls=":", label=f"target against the peers: {target}")
    ax_ratio.legend(fontsize=8)
    ax_ratio.axhline(1, color="k", lw=1)
    ax_ratio.set_xticks(range(len(labels)), labels, fontsize=8)
    ax_ratio.set(ylabel="fnn's time over the peer's", title="time ratio (95% interval where measured)")
    ax_ratio.set_xlim(-0.6, len(labels) - 0.4)
    ax_ratio.grid(alpha=0.3, axis="y")
    files = ["peer_pooled.json", "speed_vs_torch.json"]
    finish(fig, path, "fnn against its peers, side by side", files, [peers, notes])


def draw_kill_resume(results, path):
    """Each killed run: when it was killed, the step it resumed from, while saving or not, bit for bit or not."""
    files = ["kill_resume.json", "kill_resume_bn_dropout.json"]
    loaded = load_present(results, files)
    fig, axes = pyplot().subplots(1, len(loaded), figsize=(5.5 * len(loaded), 4.2), squeeze=False)
    for ax, (name, result) in zip(axes[0], loaded):
        for saving, marker, what in ((False, "o", "training"), (True, "s", "saving")):
            for identical, color, verdict in ((True, "C2", "bit for bit"), (False, "C3", "differs")):
                runs = [r for r in result["runs"] if r["saving_at_kill"] == saving and r["identical"] == identical]
                if runs:
                    xs, ys = [r["kill_after_s"] for r in runs], [r["resumed_from_step"] for r in runs]
                    ax.plot(xs, ys, marker, color=color, label=f"killed while {what}, {verdict} ({len(runs)})")
        ax.axvline(result["kill_window_s"], color="0.5", ls=":", label="end of the kill window")
        model = result.get("model", "the notes' recipe")
        ax.set(xlabel="killed, seconds after the first checkpoint", ylabel="resumed from step")
        ax.set_title(f"{model} ({name}): {result['identical']} of {len(result['runs'])} identical", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    title = "Killed with SIGKILL at random moments, resumed from the newest checkpoint"
    finish(fig, path, title, [n for n, _ in loaded], [r for _, r in loaded])


def draw_compare_grads(results, path):
    """Per MLP configuration, sorted by work: each path's step time over autodiff's, temporary bytes and error."""
    files = ["compare_grads.json", "compare_grads_rerun.json"]
    loaded = load_present(results, files)
    runs = [{(row["config"], row["path"]): row for row in result["rows"]} for _, result in loaded]
    first, paths = runs[0], ["custom", "backprop"]
    base = {config: first[config, "autodiff"] for config in loaded[0][1]["grid"]["configs"]}
    configs = sorted(base, key=lambda c: (base[c]["dtype"] != "float32", base[c]["step_flop"]))  # float32 first
    labels = [
        f"{b['width']}x{b['batch']}x{b['depth']}{'' if b['dtype'] == 'float32' else ' ' + b['dtype']}, "
        f"{b['step_flop'] / 1e9:.3g} GFLOP"
        for b in map(base.get, configs)
    ]
    ys = range(len(configs))[::-1]
    fig, (ax_time, ax_mem, ax_err) = pyplot().subplots(
        1, 3, figsize=(13, 0.34 * len(configs) + 2.4), sharey=True, gridspec_kw={"width_ratios": (2, 1, 1)}
    )
    margin = loaded[0][1]["grid"]["margin"]
    ax_time.axvspan(1 - margin, 1 + margin, color="0.88", label=f"the harness's {margin:.0%} margin")
    styles = [{"marker": "o"}, {"marker": "D", "mfc": "white"}]  # the first run, the rerun
    slots = [(name, r) for name in paths for r in range(len(runs))]
    for slot, (name, r) in enumerate(slots):
        offset = 0.36 - 0.72 * slot / max(len(slots) - 1, 1)
        rows = [runs[r][config, name] for config in configs]
        ratios = [row["ratio_to_autodiff"] for row in rows]
        errors = interval(ratios, [row["ci_low"] for row in rows], [row["ci_high"] for row in rows])
        style = {"color": PATH_COLORS[name], "capsize": 2, "ms": 4, "ls": "none", **styles[r]}
        ax_time.errorbar(ratios, [y + offset for y in ys], xerr=errors, label=f"{name} ({loaded[r][0]})", **style)
    for p, name in enumerate(paths):  # compiled, not timed: the same in every run
        ratios = [first[config, name]["temp_bytes"] / base[config]["temp_bytes"] for config in configs]
        bars = ax_mem.barh([y + 0.2 - 0.4 * p for y in ys], ratios, 0.4, color=PATH_COLORS[name], label=name)
        ax_mem.bar_label(bars, fmt="%.2f", fontsize=6, padding=2)
    for p, name in enumerate(["autodiff", *paths]):
        errors = [(first[config, name]["max_rel_err"], y + 0.25 - 0.25 * p) for config, y in zip(configs, ys)]
        drawn = [(error, y) for error, y in errors if error > 0]  # float64 autodiff is the reference itself
        ax_err.plot(*zip(*drawn), "o^v"[p], color=PATH_COLORS[name], ms=5, label=name)
        for config, (error, y) in zip(configs, errors):
            if error <= 0:
                beside = min(e for e in (first[config, n]["max_rel_err"] for n in paths) if e > 0)
                ax_err.annotate(f"{name}: 0", (beside, y), textcoords="offset points", xytext=(8, -3), fontsize=7)
    ax_time.set(yticks=list(ys), xlabel="step time over autodiff's (median, 95% interval)")
    ax_time.set_yticklabels(labels, fontsize=8)
    ax_time.set_ylim(-0.7, len(configs) + 2.4)  # room for the legends above the rows
    ax_time.set_title("one SGD step; width x batch x depth, by work", fontsize=10)
    ax_mem.set(xlabel="temporary bytes over autodiff's", xlim=(0, 1.3))
    ax_mem.set_title("temporary memory of the step", fontsize=10)
    ax_err.set(xscale="log", xlabel="largest relative error of the gradient")
    ax_err.set_xlim(right=ax_err.get_xlim()[1] * 10)
    ax_err.set_title("against the float64 gradient", fontsize=10)
    float32 = sum(base[config]["dtype"] == "float32" for config in configs)
    for ax in (ax_time, ax_mem, ax_err):
        ax.axhline(len(configs) - float32 - 0.5, color="0.5", ls="--", lw=0.8)
        ax.grid(alpha=0.3, axis="x", which="both")
        ax.legend(fontsize=8, loc="upper center", ncol=2)
    for ax in (ax_time, ax_mem):
        ax.axvline(1, color="k", lw=1)
    title = "Gradient paths against autodiff, per MLP configuration (below 1: cheaper)"
    finish(fig, path, title, [n for n, _ in loaded], [r for _, r in loaded])


def draw_modes(results, path):
    """The full Jacobian by jacfwd and by jacrev: time and FLOPs as the inputs grow, and as the outputs grow."""
    result = load(results, "modes.json")
    fig, axes = pyplot().subplots(2, 2, figsize=(11, 7.6), sharey="row")
    methods = {
        "jacfwd": "jax.jacfwd (forward mode)",
        "jacrev": "jax.jacrev (reverse mode)",
        "forward": "one forward pass",
    }
    colors = {"jacfwd": "C0", "jacrev": "C1", "forward": "0.5"}
    hidden = "-".join(str(h) for h in result["hidden"])
    for column, (sweep, fixed) in enumerate((("n_in", "n_out"), ("n_out", "n_in"))):
        points = sorted((p for p in result["points"] if sweep in p["sweeps"]), key=lambda p: p[sweep])
        xs = [p[sweep] for p in points]
        ax_time, ax_flop = axes[:, column]
        for i, point in enumerate(points):  # who wins at this point, by the round-by-round comparison
            verdict = point["pairs"]["jacfwd/jacrev"]["verdict"]
            if verdict != "tie":
                low = (xs[i - 1] * xs[i]) ** 0.5 if i else xs[i] / 1.5
                high = (xs[i] * xs[i + 1]) ** 0.5 if i + 1 < len(xs) else xs[i] * 1.5
                for ax in (ax_time, ax_flop):
                    ax.axvspan(low, high, color=colors["jacrev" if verdict == "slower" else "jacfwd"], alpha=0.08, lw=0)
        for name, label in methods.items():
            rows = [p["methods"][name] for p in points]
            medians = [1e3 * row["median_s"] for row in rows]
            quartiles = interval(medians, [1e3 * row["q1_s"] for row in rows], [1e3 * row["q3_s"] for row in rows])
            style = {"color": colors[name], "label": label, "ls": ":" if name == "forward" else "-"}
            ax_time.errorbar(xs, medians, yerr=quartiles, fmt="o", capsize=2, ms=4, **style)
            ax_flop.plot(xs, [row["flops"] for row in rows], marker="o", ms=4, **style)
        for point, x in zip(points, xs):
            ratio = point["pairs"]["jacfwd/jacrev"]["ratio"]
            digits = 2 if ratio < 1 else 1 if ratio < 10 else 0
            ax_time.annotate(f"{ratio:.{digits}f}x", (x, 1e3 * point["methods"]["jacfwd"]["median_s"]), **ANNOTATION)
        fixed_value = points[0][fixed]
        ax_time.set_title(f"time as {sweep} grows ({fixed} = {fixed_value})", fontsize=10)
        ax_flop.set_title(f"FLOPs as {sweep} grows ({fixed} = {fixed_value})", fontsize=10)
        for ax in (ax_time, ax_flop):
            ax.set(xscale="log", yscale="log", xlabel=sweep)
            ax.set_xticks(xs, [str(x) if i == 0 or x / xs[i - 1] > 1.5 else "" for i, x in enumerate(xs)])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("ms per Jacobian (median, quartiles)")
    axes[1, 0].set_ylabel("FLOPs (XLA's cost analysis)")
    handles, names = axes[0, 0].get_legend_handles_labels()
    handles += [Patch(color=c, alpha=0.25) for c in (colors["jacfwd"], colors["jacrev"])]
    names += ["forward mode faster", "reverse mode faster"]
    axes[0, 0].legend(handles, names, fontsize=8, title="labels: jacfwd's time over jacrev's", title_fontsize=8)
    title = (
        f"Full Jacobian of an MLP n_in-{hidden}-n_out: forward mode's cost grows with the inputs, "
        "reverse mode's with the outputs"
    )
    finish(fig, path, title, ["modes.json"], [result])


#: Every figure the results page shows: file name -> the function that draws it.
FIGURES = {
    "recipe_curves.png": draw_recipe_curves,
    "module_costs.png": draw_module_costs,
    "attention_cost.png": draw_attention_cost,
    "peers.png": draw_peers,
    "kill_resume.png": draw_kill_resume,
    "compare_grads.png": draw_compare_grads,
    "modes.png": draw_modes,
}


def main(argv=None):
    """Draws every figure of :data:`FIGURES` into ``--out``; returns the paths written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder for the PNGs (default: {OUT.relative_to(ROOT)})")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help=f"folder of the JSON files (default: {RESULTS.relative_to(ROOT)})"
    )
    _cli.add_flags(parser)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in FIGURES.items():
        try:
            draw(args.results, args.out / name)
        except KeyError as exc:
            raise ValueError(f"cannot draw {name}: a results file lacks the field {exc}") from exc
        written.append(args.out / name)
        print(f"wrote {args.out / name}")
    return written


if __name__ == "__main__":
    _cli.run(main)
