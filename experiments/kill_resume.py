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

    python -m experiments.kill_resume --runs 20 --json experiments/results/kill_resume.json
    python -m experiments.kill_resume --model bn_dropout --json experiments/results/kill_resume_bn_dropout.json
    python -m experiments.kill_resume --data stream --runs 12 --json experiments/results/kill_resume_stream.json
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
    parser.add_argument("--seed", type=int, default=0, help="seeds the moments of the kills")
    parser.add_argument("--json", metavar="PATH", help="write results as JSON")
    parser.add_argument("--worker", metavar="DIR", help=argparse.SUPPRESS)  # child: train with checkpoints in DIR
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)  # child: train without
    _cli.add_flags(parser)
    return parser.parse_args(argv)


def train(args, checkpoint_dir):
    """Trains the recipe (resuming from ``checkpoint_dir`` if it holds a checkpoint); prints a JSON summary."""
    import jax

    import fnn

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
    *trained, history = fnn.fit(model, params, data, epochs=args.epochs, progress=False, callbacks=callbacks, **options)
    digest = hashlib.sha256(b"".join(np.asarray(p).tobytes() for p in jax.tree.leaves(trained))).hexdigest()
    rows = [{k: v for k, v in row.items() if k != "epoch_s"} for row in history.rows()]
    print(json.dumps({"params_sha256": digest, "history": rows, "resumed_from": restored}), flush=True)


def child(args, *extra):
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
        *extra,
    ]


def finish(args, folder):
    """Runs the child to the end; returns its JSON summary."""
    out = subprocess.run(child(args, "--worker", str(folder)), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    tic = time.perf_counter()
    reference = json.loads(
        subprocess.run(child(args, "--reference"), capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    reference_s = time.perf_counter() - tic
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
            result = finish(args, folder)
            same = result["params_sha256"] == reference["params_sha256"] and result["history"] == reference["history"]
            runs.append({**kill, "resumed_from_step": result["resumed_from"], "identical": same})
            moment = (
                "after it finished"
                if kill["finished_before_kill"]
                else "while saving"
                if kill["saving_at_kill"]
                else "while training"
            )
            print(
                f"run {i + 1:2d}: killed {moment} ({kill['kill_after_s']:.2f} s after its first checkpoint), "
                f"resumed from step {result['resumed_from']}: {'identical' if same else 'DIFFERENT'}",
                flush=True,
            )
    identical = sum(r["identical"] for r in runs)
    killed = sum(not r["finished_before_kill"] for r in runs)
    print(
        f"\n{identical} of {len(runs)} runs resumed to the uninterrupted result bit for bit "
        f"({killed} killed while running, {sum(r['saving_at_kill'] for r in runs)} of them while saving)"
    )
    result = {
        "dataset": args.dataset,
        "model": args.model,
        "data": args.data,
        "epochs": args.epochs,
        "every_steps": args.every_steps,
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
