"""Streaming training data: speed against arrays, memory on a dataset larger than memory, and per-process shards.

Three studies of :class:`fnn.data.Stream` on the notes' recipe (784-500-10,
no biases, SGD 0.5, batch 100):

* ``speed``: MNIST from arrays (``fnn.data.load``) and streamed from record
  files (``fnn.data.stream``), in interleaved rounds in one process: the
  training time of ``--epochs`` epochs (the sum of the epochs' seconds,
  compilation excluded), its ratio with a bootstrap interval, and whether
  both end with the same parameters and test error (the same order, so they
  should, bit for bit).
* ``memory``: MNIST written ``--copies`` times over with random shifts of up
  to 2 pixels, at least 4 GiB of records on disk (written a chunk at a time
  by a child process), then one epoch trained from them in a fresh child
  process whose anonymous memory (``RssAnon``, the process's own memory, not
  the page cache holding the files) is sampled every 5 ms; its peak and the
  throughput are reported.
* ``shards``: two processes on 127.0.0.1 (``jax.distributed``, one CPU
  device each) train one epoch from the same records, each counting the
  records it reads at the source; the counts must be disjoint and together
  every record, and the parameters those of one process with two devices
  and the same global batch.

    python -m experiments.streaming --study speed --json experiments/results/streaming_speed.json
    python -m experiments.streaming --study memory --json experiments/results/streaming_memory.json
    python -m experiments.streaming --study shards --json experiments/results/streaming_shards.json
"""

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from experiments import _cli
from experiments._common import machine, run_field, run_fields, write_json

RECIPE = {"batch_size": 100, "optimizer": 0.5}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", choices=("speed", "memory", "shards"), required=True)
    parser.add_argument("--epochs", type=int, default=10, help="speed: epochs per run")
    parser.add_argument("--rounds", type=int, default=6, help="speed: interleaved rounds")
    parser.add_argument("--copies", type=int, default=23, help="memory: shifted copies of MNIST's training set")
    parser.add_argument("--folder", help="memory: where to write the records (default: a temporary folder)")
    parser.add_argument("--json", metavar="PATH", help="write results as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--arg", action="append", default=[], help=argparse.SUPPRESS)
    _cli.add_flags(parser)
    return parser.parse_args(argv)


def recipe():
    import jax

    import fnn

    model = fnn.nn.mlp([784, 500, 10])
    return model, model.init(jax.random.key(0), (784,))[1]


def digest(params):
    import hashlib

    import jax

    return hashlib.sha256(b"".join(np.asarray(p).tobytes() for p in jax.tree.leaves(params))).hexdigest()


# --------------------------------------------------------------------------- speed
def speed(args):
    import jax

    import fnn
    from fnn import bench

    model, params = recipe()
    sources = {"arrays": fnn.data.load("mnist"), "stream": fnn.data.stream("mnist")}
    key = jax.random.key(1)
    wall, cpu, last = {name: [] for name in sources}, {name: [] for name in sources}, {}
    for r in range(args.rounds):
        for name in sources if r % 2 == 0 else reversed(sources):
            tic = time.process_time()
            trained, history = fnn.fit(
                model, params, sources[name], epochs=args.epochs, shuffle_key=key, progress=False, **RECIPE
            )
            wall[name].append(float(sum(history.epoch_s)))
            cpu[name].append(time.process_time() - tic)
            last[name] = {"params_sha256": digest(trained), "test_error": run_field(history, "test_error")}
            print(f"round {r + 1} {name:6s}: {wall[name][-1]:.2f} s for {args.epochs} epochs", flush=True)
    summary = bench.summarize(wall, cpu, baseline="arrays")
    stream = summary["stream"]
    print(
        f"stream / arrays: {stream.ratio:.3f}x [{stream.ci_low:.3f}, {stream.ci_high:.3f}] (95% CI), "
        f"target <= 1.10x; same parameters: {last['stream']['params_sha256'] == last['arrays']['params_sha256']}, "
        f"test error {last['stream']['test_error']:.4f} vs {last['arrays']['test_error']:.4f}"
    )
    return {
        "study": "speed",
        **machine(),
        "epochs": args.epochs,
        "rounds": args.rounds,
        "train_s": wall,
        "cpu_s": cpu,
        "ratio": stream.ratio,
        "ratio_ci": [stream.ci_low, stream.ci_high],
        "median_train_s": {name: result.median_s for name, result in summary.items()},
        "results": last,
        "same_params": last["stream"]["params_sha256"] == last["arrays"]["params_sha256"],
        "target_ratio": 1.10,
        "met": stream.ci_high <= 1.10,
    }


# --------------------------------------------------------------------------- memory
def write_shifted(folder, copies):
    """Child: MNIST's training set ``copies`` times, each image shifted by its own offset, as records."""
    import fnn

    data = fnn.data.load("mnist", layout="image")
    shift = fnn.data.random_shift(2)
    rng = np.random.default_rng(0)

    def chunks():
        for _ in range(copies):
            x = np.stack([shift.random_map(image, rng) for image in data.x_train]).reshape(len(data.x_train), -1)
            yield x, data.y_train

    tic = time.perf_counter()
    fnn.data.write_records(folder, chunks())
    size = sum(p.stat().st_size for p in Path(folder).iterdir())
    print(json.dumps({"bytes": size, "write_s": time.perf_counter() - tic}))


class PeakMemory:
    """Samples ``RssAnon`` (and ``VmRSS``) of this process from ``/proc/self/status`` every ``period`` seconds."""

    def __init__(self, period=0.005):
        self.period, self.peak, self.peak_rss, self.samples = period, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read():
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("RssAnon", "VmRSS"):
                fields[name] = int(value.split()[0]) * 1024
        return fields

    def _run(self):
        while not self._stop.is_set():
            fields = self.read()
            self.peak, self.peak_rss = max(self.peak, fields["RssAnon"]), max(self.peak_rss, fields["VmRSS"])
            self.samples += 1
            time.sleep(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def train_streamed(folder):
    """Child: one epoch of the recipe from the records in ``folder``, its anonymous memory sampled throughout."""
    import jax

    import fnn

    before = PeakMemory.read()
    with PeakMemory() as memory:
        tic = time.perf_counter()
        test = fnn.data.load("mnist")
        records = fnn.data.Records(folder)
        open_s = time.perf_counter() - tic
        model, params = recipe()
        stream = fnn.data.Stream(records, test.x_test, test.y_test)
        _, history = fnn.fit(model, params, stream, epochs=1, shuffle_key=jax.random.key(1), progress=False, **RECIPE)
    print(
        json.dumps(
            {
                "records": len(records),
                "rss_anon_before": before["RssAnon"],
                "peak_rss_anon": memory.peak,
                "peak_rss": memory.peak_rss,
                "samples": memory.samples,
                "open_and_verify_s": open_s,
                **run_fields(history, "compile_s"),
                "epoch_s": float(history.epoch_s[0]),
                "records_per_s": len(records) / float(history.epoch_s[0]),
                **run_fields(history, "test_error"),  # of the one epoch
            }
        )
    )


def child(study, *extra):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.streaming", "--study", study, "--child", *extra],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"child {extra} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(args):
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        folder = str(Path(tmp) / "records")
        written = child("memory", "write", "--arg", folder, "--arg", str(args.copies))
        print(f"wrote {written['bytes'] / 2**30:.2f} GiB of records in {written['write_s']:.0f} s", flush=True)
        trained = child("memory", "train", "--arg", folder)
    gib = trained["peak_rss_anon"] / 2**30
    print(
        f"one epoch of {trained['records']} records in {trained['epoch_s']:.1f} s "
        f"({trained['records_per_s']:.0f} records/s); peak RssAnon {gib:.2f} GiB (target <= 1.5 GiB), "
        f"peak RSS with the page cache's mapped files {trained['peak_rss'] / 2**30:.2f} GiB"
    )
    return {
        "study": "memory",
        **machine(),
        "copies": args.copies,
        "bytes_on_disk": written["bytes"],
        "write_s": written["write_s"],
        **trained,
        "peak_rss_anon_gib": gib,
        "target_gib": 1.5,
        "met": written["bytes"] >= 4 * 2**30 and gib <= 1.5,
    }


# --------------------------------------------------------------------------- shards
class CountingRecords:
    """Records that note every index read for training (``read``), for the shards study."""

    def __init__(self, records):
        self.records, self.read_indices = records, []

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def read(self, indices):
        self.read_indices.extend(int(i) for i in indices)
        return self.records.read(indices)


def train_shard(process, processes, port, devices):
    """Child: one epoch of the recipe streamed, as ``process`` of ``processes`` (or alone with ``devices``)."""
    import jax

    jax.config.update("jax_num_cpu_devices", devices)
    if processes > 1:
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=processes, process_id=process)
    import fnn

    stream = fnn.data.stream("mnist")
    counting = CountingRecords(stream.train)
    stream = fnn.data.Stream(counting, stream.x_test, stream.y_test)
    model, params = recipe()
    trained, history = fnn.fit(
        model, params, stream, epochs=1, shuffle_key=jax.random.key(1), progress=False, devices=jax.devices(), **RECIPE
    )
    leaves = [np.asarray(jax.device_get(p)).tolist() for p in jax.tree.leaves(trained)]
    print(
        json.dumps(
            {
                "process": process,
                "devices": jax.device_count(),
                "read": counting.read_indices,
                "params": leaves,
                **run_fields(history, "test_error"),  # of the one epoch
            }
        )
    )


def shards(args):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "experiments.streaming", "--study", "shards", "--child", "train"]
    with tempfile.TemporaryDirectory() as tmp:  # files, not pipes: a process blocked on a full pipe stalls the other
        logs = [(Path(tmp) / f"{p}.out", Path(tmp) / f"{p}.err") for p in range(2)]
        procs = []
        for p, (out, err) in enumerate(logs):
            with open(out, "w") as stdout, open(err, "w") as stderr:
                arguments = ["--arg", str(p), "--arg", "2", "--arg", str(port), "--arg", "1"]
                procs.append(subprocess.Popen([*command, *arguments], stdout=stdout, stderr=stderr))
        for proc, (_, err) in zip(procs, logs):
            if proc.wait(timeout=900):
                raise RuntimeError(f"a process failed:\n{err.read_text()[-3000:]}")
        parts = [json.loads(out.read_text().strip().splitlines()[-1]) for out, _ in logs]
    alone = child("shards", "train", "--arg", "0", "--arg", "1", "--arg", "0", "--arg", "2")
    reads = [set(part["read"]) for part in parts]
    counts = [len(part["read"]) for part in parts]
    diff = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / (np.abs(np.asarray(b)).max())))
        for part in parts
        for a, b in zip(part["params"], alone["params"])
    )
    disjoint = reads[0].isdisjoint(reads[1])
    complete = len(reads[0] | reads[1]) == len(alone["read"]) == sum(counts)
    print(
        f"records read per process: {counts} (one process alone: {len(alone['read'])}); disjoint: {disjoint}; "
        f"together every record once: {complete}; largest parameter difference from the one-process run, "
        f"relative to the largest parameter: {diff:.2e}; test error {parts[0]['test_error']:.4f} "
        f"vs {alone['test_error']:.4f}"
    )
    return {
        "study": "shards",
        **machine(),
        "processes": 2,
        "devices_per_process": 1,
        "records_read": counts,
        "records_read_alone": len(alone["read"]),
        "disjoint": disjoint,
        "together_all_once": complete,
        "max_relative_param_difference": diff,
        "test_error": [part["test_error"] for part in parts],
        "test_error_alone": alone["test_error"],
        "met": disjoint and complete and diff < 1e-5,
    }


def main(argv=None):
    args = parse_args(argv)
    if args.child == "write":
        return write_shifted(args.arg[0], int(args.arg[1]))
    if args.child == "train" and args.study == "memory":
        return train_streamed(args.arg[0])
    if args.child == "train":
        return train_shard(*(int(a) for a in args.arg))
    result = {"speed": speed, "memory": memory, "shards": shards}[args.study](args)
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    _cli.run(main)
