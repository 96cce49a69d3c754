"""Kill training at random moments with SIGKILL, resume it, and compare with an uninterrupted run.

Each run trains the notes' recipe (784-500-10 on MNIST, SGD 0.5, batch 100;
with ``--model bn_dropout`` the same net with batch norm and dropout after
the hidden layer, batches reshuffled every epoch, so that the running
statistics and the dropout masks must resume too; with ``--data stream``
the recipe streamed from record files, reshuffled every epoch, so that the
reader's position must resume too) in a child process that
saves a checkpoint every ``--every-steps`` steps and keeps the last two. The
parent kills the child at a random moment after its first checkpoint (while
it trains or while it saves), checks that the newest checkpoint loads (the
resumed run starts from it), resumes the run to the end in a fresh process,
and compares the final parameters (and state: SHA-256 of their bytes) and the
history (losses and errors of every epoch) with an uninterrupted run's, bit
for bit.

With ``--devices N --resume-devices M`` (and ``--sharding``,
``--resume-sharding``: ``replicated`` or ``fsdp``) the killed run trains on
``N`` simulated CPU devices and is resumed on ``M``: the same run, its sums
over each batch taken in another order. SGD at step 0.5 amplifies that
float32 rounding over the steps, so the yardstick is measured: the largest
difference between the uninterrupted runs on the two meshes. A resumed run
counts as the same run when its parameters are within that distance of the
uninterrupted ``N``-device run's and its history's error rates are equal.

    python -m experiments.kill_resume --runs 20 --json experiments/results/kill_resume.json
    python -m experiments.kill_resume --model bn_dropout --json experiments/results/kill_resume_bn_dropout.json
    python -m experiments.kill_resume --data stream --runs 12 --json experiments/results/kill_resume_stream.json
    python -m experiments.kill_resume --runs 5 --batch-size 200 --devices 8 --sharding fsdp --resume-devices 4 \
        --json experiments/results/kill_resume_8_to_4.json
"""

import argparse
import hashlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments import _cli
from experiments._common import device_description, write_json


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="killed runs")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--every-steps", type=int, default=50, help="save a checkpoint every this many steps")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument(
        "--model",
        choices=("recipe", "bn_dropout"),
        default="recipe",
        help="the notes' 784-500-10 net, or it with batch norm and dropout after the hidden layer",
    )
    parser.add_argument(
        "--data",
        choices=("arrays", "stream"),
        default="arrays",
        help="train from arrays (fnn.data.load), or streamed from record files (fnn.data.stream), shuffled",
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--devices", type=int, default=1, help="simulated CPU devices of the killed run")
    parser.add_argument(
        "--resume-devices", type=int, help="simulated CPU devices of the resumed run (default: --devices)"
    )
    parser.add_argument("--sharding", choices=("replicated", "fsdp"), default="replicated")
    parser.add_argument("--resume-sharding", choices=("replicated", "fsdp"), help="(default: --sharding)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the moments of the kills")
    parser.add_argument("--json", metavar="PATH", help="write results as JSON")
    parser.add_argument("--worker", metavar="DIR", help=argparse.SUPPRESS)  # child: train with checkpoints in DIR
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)  # child: train without
    parser.add_argument("--params-out", help=argparse.SUPPRESS)  # child: write the trained parameters here (.npz)
    _cli.add_flags(parser)
    args = parser.parse_args(argv)
    args.resume_devices = args.devices if args.resume_devices is None else args.resume_devices
    args.resume_sharding = args.sharding if args.resume_sharding is None else args.resume_sharding
    return args


def train(args, checkpoint_dir):
    """Trains the recipe (resuming from ``checkpoint_dir`` if it holds a checkpoint); prints a JSON summary."""
    import fnn

    fnn.parallel.use_cpu_devices(args.devices)  # before JAX starts
    import jax

    nn, options = fnn.nn, {}
    if args.data == "stream":
        data = fnn.data.stream(args.dataset)
        options = {"shuffle_key": jax.random.key(1)}
    else:
        data = fnn.data.load(args.dataset)
    if args.model == "bn_dropout":
        model = nn.serial(nn.dense(500), nn.batch_norm(), nn.relu, nn.dropout(0.2), nn.dense(10))
        options = {"shuffle_key": jax.random.key(1)}
    else:
        model = nn.mlp([784, 500, 10])
    _, params = model.init(jax.random.key(0), (784,))
    restored = None
    if checkpoint_dir is not None:
        with fnn.checkpoint.Checkpoints(checkpoint_dir, keep=2) as checkpoints:
            restored = checkpoints.latest()
    callbacks = []
    if checkpoint_dir is not None:
        callbacks.append(fnn.loop.Checkpointing(checkpoint_dir, every_steps=args.every_steps, keep=2, resume=True))
    options |= {"batch_size": args.batch_size, "devices": args.devices, "sharding": args.sharding}
    *trained, history = fnn.fit(model, params, data, epochs=args.epochs, progress=False, callbacks=callbacks, **options)
    leaves = [np.asarray(p) for p in jax.tree.leaves(trained)]
    digest = hashlib.sha256(b"".join(p.tobytes() for p in leaves)).hexdigest()
    if args.params_out:
        np.savez(args.params_out, *leaves)
    rows = [{k: v for k, v in row.items() if k != "epoch_s"} for row in history.rows()]
    print(json.dumps({"params_sha256": digest, "history": rows, "resumed_from": restored}), flush=True)


def child(args, *extra, resumed=False):
    """The command of a child run: on the killed run's devices and layout, or with ``resumed`` the resumed run's."""
    devices, sharding = (args.resume_devices, args.resume_sharding) if resumed else (args.devices, args.sharding)
    return [
        sys.executable,
        "-m",
        "experiments.kill_resume",
        "--epochs",
        str(args.epochs),
        "--every-steps",
        str(args.every_steps),
        "--dataset",
        args.dataset,
        "--model",
        args.model,
        "--data",
        args.data,
        "--batch-size",
        str(args.batch_size),
        "--devices",
        str(devices),
        "--sharding",
        sharding,
        *extra,
    ]


def finish(args, folder, params_out):
    """Runs the child to the end on the resumed run's devices, its parameters written to ``params_out``; returns its
    JSON summary."""
    command = child(args, "--worker", str(folder), "--params-out", str(params_out), resumed=True)
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def error_rates(summary):
    """Each epoch's training and test error of a child's summary."""
    return [[row[k] for k in ("train_err", "test_err")] for row in summary["history"]]


def largest_difference(a, b):
    """The largest ``|a - b|`` over the arrays of two ``.npz`` files of the same parameters."""
    with np.load(a) as x, np.load(b) as y:
        return max(float(np.max(np.abs(x[k] - y[k]))) for k in x.files)


def start(args, folder):
    """Starts a run with checkpoints in ``folder``; returns the process once its first checkpoint exists."""
    proc = subprocess.Popen(child(args, "--worker", str(folder)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and not any(p.name.isdigit() for p in folder.glob("*")):
        time.sleep(0.01)
    return proc


def training_window(args):
    """Seconds from a run's first checkpoint to its end, measured on one run left alone."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = start(args, Path(tmp) / "checkpoints")
        tic = time.perf_counter()
        proc.wait()
        return time.perf_counter() - tic


def kill_once(args, folder, rng, window_s):
    """Starts a run and SIGKILLs it at a moment drawn uniformly from its training after the first checkpoint."""
    proc = start(args, folder)
    delay = rng.uniform(0.0, window_s)
    time.sleep(delay)
    saving = any("tmp" in p.name for p in folder.glob("*"))
    finished = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return {"kill_after_s": delay, "saving_at_kill": saving, "finished_before_kill": finished}


def main(argv=None):
    args = parse_args(argv)
    if args.worker or args.reference:
        return train(args, args.worker)
    same_mesh = (args.devices, args.sharding) == (args.resume_devices, args.resume_sharding)
    scratch = tempfile.TemporaryDirectory()
    reference_params = Path(scratch.name) / "reference.npz"
    tic = time.perf_counter()
    reference = json.loads(
        subprocess.run(
            child(args, "--reference", "--params-out", str(reference_params)),
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    reference_s = time.perf_counter() - tic
    mesh_gap = None
    if not same_mesh:  # the yardstick: the same run, uninterrupted, on the resumed run's mesh
        other_params = Path(scratch.name) / "other_mesh.npz"
        command = child(args, "--reference", "--params-out", str(other_params), resumed=True)
        subprocess.run(command, capture_output=True, text=True, check=True)
        mesh_gap = largest_difference(other_params, reference_params)
        print(f"uninterrupted runs on the two meshes differ by up to {mesh_gap:.1e}", flush=True)
    window_s = 0.95 * training_window(args)
    print(
        f"uninterrupted run: {reference_s:.1f} s, params {reference['params_sha256'][:12]}; "
        f"kills drawn from the {window_s:.1f} s after the first checkpoint",
        flush=True,
    )
    rng = np.random.default_rng(args.seed)
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "checkpoints"
            kill = kill_once(args, folder, rng, window_s)
            result = finish(args, folder, Path(tmp) / "params.npz")
            gap = largest_difference(Path(tmp) / "params.npz", reference_params)
            if same_mesh:
                same = (
                    result["params_sha256"] == reference["params_sha256"] and result["history"] == reference["history"]
                )
            else:  # the error rates equal, the parameters within the meshes' own distance
                same = gap <= mesh_gap and error_rates(result) == error_rates(reference)
            errors_equal = error_rates(result) == error_rates(reference)
            error_gap = float(np.max(np.abs(np.subtract(error_rates(result), error_rates(reference)))))
            runs.append(
                {
                    **kill,
                    "resumed_from_step": result["resumed_from"],
                    "identical": same,
                    "largest_gap": gap,
                    "errors_equal": errors_equal,
                    "largest_error_rate_gap": error_gap,
                }
            )
            moment = (
                "after it finished"
                if kill["finished_before_kill"]
                else "while saving"
                if kill["saving_at_kill"]
                else "while training"
            )
            print(
                f"run {i + 1:2d}: killed {moment} ({kill['kill_after_s']:.2f} s after its first checkpoint), "
                f"resumed from step {result['resumed_from']}: {'identical' if same else 'DIFFERENT'}"
                f"{'' if same_mesh else f' (largest |difference| {gap:.1e}, error rates apart by {error_gap:.2%})'}",
                flush=True,
            )
    scratch.cleanup()
    identical = sum(r["identical"] for r in runs)
    killed = sum(not r["finished_before_kill"] for r in runs)
    how = "bit for bit" if same_mesh else f"within the meshes' own {mesh_gap:.1e}, the error rates equal"
    print(
        f"\n{identical} of {len(runs)} runs resumed to the uninterrupted result {how} "
        f"({killed} killed while running, {sum(r['saving_at_kill'] for r in runs)} of them while saving)"
    )
    result = {
        "dataset": args.dataset,
        "model": args.model,
        "data": args.data,
        "epochs": args.epochs,
        "every_steps": args.every_steps,
        "batch_size": args.batch_size,
        "devices": args.devices,
        "sharding": args.sharding,
        "resume_devices": args.resume_devices,
        "resume_sharding": args.resume_sharding,
        "mesh_gap": mesh_gap,
        "device": device_description(),
        "reference": reference,
        "reference_s": reference_s,
        "kill_window_s": window_s,
        "runs": runs,
        "identical": identical,
        "killed_while_running": killed,
    }
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    _cli.run(main)
