"""Streaming: record files, the reader's order, shards, last batch and transforms, fit from a stream, resume, bad data.

The reader is tested directly (no compilation) wherever that suffices; the
fits share one small model and dataset, so each compiles a few small programs.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import fnn
from fnn.data import Batches, Records, Stream, write_records

DATA = fnn.data.synthetic(500, 64, shape=(4, 4, 1), classes=3, seed=0)
MODEL = fnn.nn.serial(fnn.nn.flatten(), fnn.nn.dense(16), fnn.nn.relu, fnn.nn.dense(3))
PARAMS = MODEL.init(jax.random.key(0), (4, 4, 1))[1]
KEY = jax.random.key(3)
BATCH = 32  # 500 = 15 * 32 + 20: a last smaller batch of 20


def no_check(x, y):
    pass


def finite_inputs(x, y):
    """What fit checks a batch's inputs with."""
    fnn.validate.check_inputs(x, "train")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("records") / "train"
    return Records(write_records(folder, DATA.x_train, DATA.y_train, shard_bytes=64 * 200))


def batches(stream, *, process=0, processes=1, devices=1, shuffle=True, check=no_check):
    key_data = jax.random.key_data(KEY)
    return Batches(
        stream,
        BATCH,
        key_data,
        "threefry2x32",
        shuffle,
        devices=devices,
        local_devices=devices // processes,
        process=process,
        processes=processes,
        check=check,
    )


def epoch_rows(b, epoch=1):
    """Every row one process reads in an epoch, its full batches then its share of the last one, as (x, y)."""
    chunks = list(b.epoch(epoch, 0, 4))  # 15 full batches: chunks of 4, 4, 4 and 3 steps
    assert [len(x) for x, _ in chunks] == [4, 4, 4, 3]
    x_last, y_last = b.last(epoch)
    x = np.concatenate([*(x.reshape(-1, *x.shape[2:]) for x, _ in chunks), x_last[0]])
    return x, np.concatenate([*(y.reshape(-1) for _, y in chunks), y_last[0]])


# --- record files ------------------------------------------------------------------------


def test_records_round_trip_across_shards(records):
    assert len(records) == 500 and len(records._x) == 3  # 200 records of 64 bytes to a shard
    idx = np.array([499, 0, 200, 123, 399, 400, 199])
    x, y = records.read(idx)
    np.testing.assert_array_equal(x, DATA.x_train[idx])
    np.testing.assert_array_equal(y, DATA.y_train[idx])
    x7, y7 = records[7]
    np.testing.assert_array_equal(x7, DATA.x_train[7])
    assert y7 == DATA.y_train[7]


def test_write_records_refuses_a_folder_with_records_and_unlike_chunks(records, tmp_path):
    with pytest.raises(fnn.InputError, match="already holds records"):
        write_records(records.folder, DATA.x_train, DATA.y_train)
    chunks = [(DATA.x_train[:10], DATA.y_train[:10]), (DATA.x_train[10:20].astype(np.float64), DATA.y_train[10:20])]
    with pytest.raises(fnn.InputError, match="a chunk of records .*<f8.* unlike the first chunk's .*<f4"):
        write_records(tmp_path / "mixed", chunks)
    assert not (tmp_path / "mixed" / "records.json").exists()


@pytest.fixture
def copy(tmp_path):
    folder = tmp_path / "copy"
    write_records(folder, DATA.x_train, DATA.y_train)
    return folder


def test_truncated_record_file_is_refused(copy):
    path = copy / "x-00000.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(fnn.DataError, match=r"x-00000.npy \(records 0..499\) is not a whole .npy file.*truncated"):
        Records(copy)


def test_corrupt_record_file_names_its_records(copy):
    path = copy / "x-00000.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # a byte of the last record
    path.write_bytes(bytes(data))
    with pytest.raises(fnn.DataError, match=r"x-00000.npy: records 0..499 fail their checksum: the file is corrupted"):
        Records(copy)
    Records(copy, verify=False)  # headers and sizes are fine


def test_records_manifest_must_match_the_files(copy):
    manifest = json.loads((copy / "records.json").read_text())
    manifest["x"]["shape"] = [16]
    (copy / "records.json").write_text(json.dumps(manifest))
    with pytest.raises(fnn.DataError, match=r"holds \(500, 4, 4, 1\) float32, but the manifest says \(500, 16\)"):
        Records(copy)
    (copy / "records.json").unlink()
    with pytest.raises(fnn.DataError, match="has no records.json"):
        Records(copy)


# --- the reader: order, shards, the last batch, transforms -------------------------------


def test_an_epoch_reads_every_record_once_in_the_runs_order(records):
    b = batches(Stream(records, DATA.x_test, DATA.y_test))
    order = np.asarray(jax.random.permutation(jax.random.fold_in(KEY, 2), 500))
    np.testing.assert_array_equal(b.order(2), order)
    x, y = epoch_rows(b, epoch=2)
    np.testing.assert_array_equal(x, DATA.x_train[order])
    np.testing.assert_array_equal(y, DATA.y_train[order])
    assert not np.array_equal(b.order(1), b.order(2))  # a new order every epoch
    np.testing.assert_array_equal(
        batches(Stream(records, DATA.x_test, DATA.y_test), shuffle=False).order(1), range(500)
    )


class Counting:
    """A list source that counts the records read from it."""

    def __init__(self, x, y):
        self.x, self.y, self.reads = x, y, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads.append(i)
        return self.x[i], self.y[i]


def shift(x, rng):
    return np.roll(x, rng.integers(-2, 3), axis=0)


def test_processes_read_disjoint_shares_that_make_up_the_one_process_epoch():
    """Two processes of 4 devices each: disjoint reads, all records together, and (transforms included) their rows
    interleave to exactly the one-process epoch's rows; the last batch of 20 is split 3 rows a device: 12 | 8 + 4
    zeros."""
    whole = Counting(DATA.x_train, DATA.y_train)
    x_one, y_one = epoch_rows(batches(Stream(whole, DATA.x_test, DATA.y_test, transform=shift), devices=8))
    shares = []
    for p in range(2):
        source = Counting(DATA.x_train, DATA.y_train)
        b = batches(Stream(source, DATA.x_test, DATA.y_test, transform=shift), process=p, processes=2, devices=8)
        source.reads.clear()  # record 0, read for its shapes
        shares.append((epoch_rows(b), source.reads))
    (x0, y0), reads0 = shares[0]
    (x1, y1), reads1 = shares[1]
    assert len(x0) == len(x1) == 15 * 16 + 12
    assert set(reads0).isdisjoint(reads1) and sorted(reads0 + reads1) == list(range(500))
    full = 15 * 16
    interleaved = np.stack([x0[:full].reshape(15, 16, 4, 4, 1), x1[:full].reshape(15, 16, 4, 4, 1)], 1)
    np.testing.assert_array_equal(interleaved.reshape(-1, 4, 4, 1), x_one[: 15 * 32])
    np.testing.assert_array_equal(np.concatenate([x0[full:], x1[full:]])[:20], x_one[15 * 32 :][:20])
    assert len(x_one) == 15 * 32 + 24  # one process reads the 20 and pads to 3 rows a device
    np.testing.assert_array_equal(x1[full + 8 :], 0)  # padding
    np.testing.assert_array_equal(np.concatenate([y0[full:], y1[full:]])[:20], y_one[15 * 32 :][:20])
    assert not np.array_equal(x_one, DATA.x_train[batches(Stream(whole, DATA.x_test, DATA.y_test)).order(1)])


@pytest.mark.slow  # starting the worker processes takes seconds
def test_worker_processes_read_what_threads_read(records):
    """Grain worker processes (the source and the transform pickled to them) give the rows threads give."""
    images = fnn.data.random_shift(1)
    threads = epoch_rows(batches(Stream(records, DATA.x_test, DATA.y_test, transform=images)))
    workers = epoch_rows(batches(Stream(records, DATA.x_test, DATA.y_test, transform=images, workers=2)))
    for a, b in zip(threads, workers):
        np.testing.assert_array_equal(a, b)


def test_each_record_draws_from_its_own_stream(records):
    """Records' generators do not overlap: 64 draws each, no two records alike (Philox counts within a record)."""
    noise = batches(Stream(records, DATA.x_test, DATA.y_test, transform=lambda x, rng: rng.random(x.shape, x.dtype)))
    x = epoch_rows(noise)[0][:100].reshape(100, -1)
    assert len({row.tobytes() for row in x}) == 100
    assert not (x[1:, :8, None] == x[:-1, None, :]).any()  # no record's first draws among its neighbour's


def test_random_shift_runs_per_record_and_repeats(records):
    images = fnn.data.random_shift(1)
    b = batches(Stream(records, DATA.x_test, DATA.y_test, transform=images))
    first, again = epoch_rows(b)[0], epoch_rows(b)[0]
    np.testing.assert_array_equal(first, again)
    plain = DATA.x_train[b.order(1)]
    moved = [not np.array_equal(a, p) for a, p in zip(first, plain)]
    assert 0.5 < np.mean(moved) < 1.0  # 8 of 9 offsets move an image
    assert set(np.unique(first)) <= set(np.unique(plain)) | {0.0}


# --- fit from a stream -------------------------------------------------------------------


def fit(data, **kwargs):
    return fnn.fit(MODEL, PARAMS, data, epochs=2, batch_size=BATCH, shuffle_key=KEY, progress=False, **kwargs)


@pytest.fixture(scope="module")
def from_arrays():
    return fit(DATA)


def test_fit_from_a_stream_is_fit_from_arrays_bit_for_bit(records, from_arrays):
    params, history = fit(Stream(records, DATA.x_test, DATA.y_test), steps_per_call=4)
    want_params, want = from_arrays
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want_params)):
        np.testing.assert_array_equal(a, b)
    assert history.train_loss.tolist() == want.train_loss.tolist()
    assert history.test_err.tolist() == want.test_err.tolist()
    assert history.config["transform"] is None and history.config["n_train"] == 500


STREAM_EQUALS_ARRAYS_ON_THREE_DEVICES = """
import jax
jax.config.update("jax_num_cpu_devices", 3)
import types
import numpy as np
import fnn
from fnn import nn
rng = np.random.default_rng(0)
n = 203  # 6 * 33 + 5: a last batch of 5 rows over 3 devices
x, y = rng.standard_normal((n, 6)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)
x_test, y_test = x[:40], y[:40]
arrays = types.SimpleNamespace(x_train=x, y_train=y, x_test=x_test, y_test=y_test)
stream = fnn.data.Stream(list(zip(x, y)), x_test, y_test)
models = {  # batch norm: the batch's statistics; dropout: each row's mask; shuffled, and in data order
    "batch_norm_dropout": (
        nn.serial(nn.dense(8), nn.batch_norm(), nn.relu, nn.dropout(0.3), nn.dense(3)), jax.random.key(1)
    ),
    "plain_in_order": (nn.mlp([6, 8, 3], bias=True), None),
}
for name, (model, key) in models.items():
    params = model.init(jax.random.key(0), (6,))[1]
    state = {"state": model.init_state((6,))} if model._has_state else {}
    run = dict(epochs=2, batch_size=33, devices=3, shuffle_key=key, progress=False, **state)
    *want, want_history = fnn.fit(model, params, arrays, **run)
    *got, history = fnn.fit(model, params, stream, **run)
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    same = same and history.train_loss.tolist() == want_history.train_loss.tolist()
    print(name, "bitwise", same)
"""


def test_fit_from_a_stream_is_fit_from_arrays_bit_for_bit_on_devices_that_do_not_divide_the_last_batch():
    proc = subprocess.run(
        [sys.executable, "-c", STREAM_EQUALS_ARRAYS_ON_THREE_DEVICES],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},  # simulated devices, whatever accelerator the machine has
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all(line.endswith("bitwise True") for line in lines), proc.stdout


INTERRUPTED_WITH_WORKERS = """
import jax, fnn
if __name__ == "__main__":
    data = fnn.data.synthetic(2000, 64, shape=(4, 4, 1), classes=3, seed=0)
    model = fnn.nn.serial(fnn.nn.flatten(), fnn.nn.dense(16), fnn.nn.relu, fnn.nn.dense(3))
    params = model.init(jax.random.key(0), (4, 4, 1))[1]

    class Interrupt(fnn.loop.Callback):
        every_steps = 5

        def on_steps(self, run):
            if run.step == 10:
                raise KeyboardInterrupt

    stream = fnn.data.Stream(list(zip(data.x_train, data.y_train)), data.x_test, data.y_test, workers=2,
                             transform=fnn.data.random_shift(1))
    try:
        fnn.fit(model, params, stream, epochs=2, batch_size=32, steps_per_call=5, progress=False,
                callbacks=[Interrupt()])
    except KeyboardInterrupt:
        print("interrupted")
"""


def test_a_run_interrupted_while_workers_read_leaves_no_shared_memory_behind(tmp_path):
    script = tmp_path / "interrupted.py"  # worker processes import the main module: a file, not -c
    script.write_text(INTERRUPTED_WITH_WORKERS)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "interrupted", proc.stderr[-3000:]
    assert "leaked shared_memory" not in proc.stderr, proc.stderr[-3000:]


class Stop(Exception):
    pass


class StopAt(fnn.loop.Callback):
    """Raises Stop when the run reaches ``step`` of ``epoch`` (after the checkpoint of that step is saved)."""

    every_steps = 4

    def __init__(self, epoch, step):
        self.at = (epoch, step)

    def on_steps(self, run):
        if (run.epoch, run.step) == self.at:
            raise Stop


def test_a_streamed_run_stopped_mid_epoch_resumes_bit_for_bit(records, tmp_path):
    stream = Stream(records, DATA.x_test, DATA.y_test, transform=shift)
    want, want_history = fit(stream)
    folder = tmp_path / "run"
    with pytest.raises(Stop):
        fit(stream, callbacks=[fnn.loop.Checkpointing(folder, every_steps=4), StopAt(2, 8)])
    shutil.copytree(folder, tmp_path / "copy")
    # Resumed with the same chunks (the reader's saved position), then cut otherwise (a fresh reader at the step).
    for where, options in ((folder, {}), (tmp_path / "copy", {"steps_per_call": 2})):
        resume = fnn.loop.Checkpointing(where, every_steps=4, resume=True)
        params, history = fit(stream, callbacks=[resume], **options)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
            np.testing.assert_array_equal(a, b)
        assert [r["train_loss"] for r in history.rows()] == [r["train_loss"] for r in want_history.rows()]


# --- bad data ----------------------------------------------------------------------------


def test_a_label_outside_the_classes_names_the_record(records):
    y = DATA.y_train.copy()
    y[321] = 7
    with pytest.raises(fnn.DataError, match=r"listed: record 321: train labels must be class ids in \[0, 3\)"):
        fit(Stream(list(zip(DATA.x_train, y)), DATA.x_test, DATA.y_test, name="listed"))


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 4), np.float32), r"record 77 has x float32\[4, 4\].*expected x float32\[4, 4, 1\]"),
        (np.zeros((4, 4, 1), np.float64), r"record 77 has x float64\[4, 4, 1\].*expected x float32\[4, 4, 1\]"),
    ],
    ids=["shape", "dtype"],
)
def test_a_record_unlike_record_0_is_named(bad, message):
    pairs = list(zip(DATA.x_train, DATA.y_train))
    pairs[77] = (bad, DATA.y_train[77])
    b = batches(Stream(pairs, DATA.x_test, DATA.y_test, name="listed"), shuffle=False)
    with pytest.raises(fnn.DataError, match="listed: " + message):
        list(b.epoch(1, 0, 4))


def test_bad_records_and_transforms_are_named():
    pairs = list(zip(DATA.x_train, DATA.y_train))
    pairs[5] = DATA.x_train[5]
    with pytest.raises(fnn.DataError, match=r"record 5 is a ndarray, expected an \(x, y\) pair"):
        list(batches(Stream(pairs, DATA.x_test, DATA.y_test), shuffle=False).epoch(1, 0, 4))
    stream = Stream(list(zip(DATA.x_train, DATA.y_train)), DATA.x_test, DATA.y_test, transform=lambda x, rng: x[0])
    with pytest.raises(fnn.DataError, match=r"the transform turned record \d+'s x float32\[4, 4, 1\] into"):
        list(batches(stream).epoch(1, 0, 4))


@pytest.mark.parametrize(
    "records, what",
    [
        (
            [{"image": x, "label": y} for x, y in zip(DATA.x_train, DATA.y_train)],
            r"a dict with keys \['image', 'label'\]",
        ),
        ([(x, y, y) for x, y in zip(DATA.x_train, DATA.y_train)], "a tuple of 3"),
        (list(DATA.x_train), "a ndarray"),
    ],
    ids=["dict", "triple", "no_labels"],
)
def test_records_that_are_not_pairs_are_refused_from_record_0_naming_the_fix(records, what):
    with pytest.raises(fnn.DataError, match=rf"record 0 is {what}, expected an \(x, y\) pair; map the source to pairs"):
        fit(Stream(records, DATA.x_test, DATA.y_test))


def test_a_record_that_is_not_finite_is_named_by_its_own_index():
    x = DATA.x_train.copy()
    x[150, 2, 3, 0] = np.nan
    pairs = list(zip(x, DATA.y_train))
    with pytest.raises(fnn.DataError) as caught:
        list(
            batches(Stream(pairs, DATA.x_test, DATA.y_test, name="listed"), shuffle=False, check=finite_inputs).epoch(
                1, 0, 8
            )
        )
    assert str(caught.value) == (
        "listed: record 150: train inputs must be finite; 1 of 16 entries are NaN or infinite, the first nan at index "
        "(2, 3, 0)"
    )


def test_a_batch_size_that_divides_the_records_leaves_no_last_batch(records):
    """500 = 20 * 25: the last batch is empty ([1, 0, ...]) and the run equals the arrays' run."""
    options = {"epochs": 1, "batch_size": 25, "shuffle_key": KEY, "progress": False}
    streamed, _ = fnn.fit(MODEL, PARAMS, Stream(records, DATA.x_test, DATA.y_test), **options)
    want, _ = fnn.fit(MODEL, PARAMS, DATA, **options)
    for a, b in zip(jax.tree.leaves(streamed), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)


def test_streams_refuse_what_they_cannot_do(records):
    with pytest.raises(fnn.UsageError, match="needs a random-access source"):
        Stream(iter(range(3)), DATA.x_test, DATA.y_test)
    with pytest.raises(fnn.InputError, match="train_metrics='full' evaluates the whole training set"):
        fit(Stream(records, DATA.x_test, DATA.y_test), train_metrics="full")
