"""A FedAvg round in fedsim vs the plain-TensorFlow lower bound of the same arithmetic.

Workload (TFF's simulation benchmark): synthetic EMNIST-shaped data, 100 clients of about 107
examples each (21 to 304, lognormal, non-IID by label skew); K clients sampled per round (the
same sample for every runner); batch 20; one local epoch; client SGD 0.02, server SGD 1.0;
example-weighted. Models: a 784-200-200-62 MLP and TFF's EMNIST CNN (conv 32 3x3, conv 64 3x3,
max-pool 2, dropout 0.25, dense 128, dropout 0.5, dense 62).

Runners, in one process, their rounds interleaved so they see the same machine conditions;
the median seconds per round over rounds 2..R:

- raw: the lower bound. One `tf.function` per client epoch traced once with a dynamic example
  dimension, batches sliced from the client's tensors with `tf.range`, numpy weighted average.
- fedsim (a): `process.next(state, datasets)`, the clients' datasets built that round as TFF's
  tutorials build them, `from_tensor_slices(arrays).batch(20)` (building them is timed apart:
  it is the caller's code, and the raw runner has no datasets to build).
- fedsim (b): the datasets from `ClientData` (in memory, and TFF's SQLite format), preprocessed
  with `.batch(20)`, created for the sampled ids that round (creation timed apart as well).
- raw over tf.data (labelled extra): the raw loop iterating each client's `tf.data.Dataset`
  inside its `tf.function`, as the benchmark of the first wave did. It pays tf.data's fixed
  cost per client, so it is *not* the lower bound.

Also: 1 vs 2 clients trained side by side (`max_parallel_clients`), the MLP's per-round training
accuracy (fedsim vs raw: same data, order and initial weights), peak RSS at 10 vs 500 clients
per round (child processes, clients read lazily from ClientData), and seconds from process
start to the end of round 1 (child processes) for fedsim and the raw loop.

    .venv/bin/python benchmarks/fedavg.py [--rounds 10] [--models mlp cnn] [--cohorts 10 50] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

STARTED = time.time()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

# fedsim is imported where it is used, so the raw runner's start-up child never loads it.

BATCH, CLASSES, CLIENT_LR, SERVER_LR, NUM_CLIENTS = 20, 62, 0.02, 1.0, 100


# Workload --------------------------------------------------------------------------------------

def client_arrays(num_clients: int = NUM_CLIENTS, seed: int = 0) -> list:
    from fedsim.simulation import emnist_like_client_arrays

    sizes = np.clip(np.random.RandomState(seed).lognormal(np.log(95.0), 0.5, num_clients), 21, 304).astype(int)
    return [emnist_like_client_arrays(1, seed=seed * 100_003 + i, min_examples=n, max_examples=n)[0] for i, n in enumerate(sizes)]


def sample(round_num: int, cohort: int, num_clients: int = NUM_CLIENTS) -> list:
    return sorted(np.random.RandomState(1000 + round_num).choice(num_clients, cohort, replace=False).tolist())


def keras_model(kind: str, seed: int = 7) -> keras.Model:
    keras.utils.set_random_seed(seed)
    if kind == "mlp":
        layers = [keras.layers.Flatten(), keras.layers.Dense(200, activation="relu"), keras.layers.Dense(200, activation="relu")]
    else:
        layers = [
            keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(2), keras.layers.Dropout(0.25), keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"), keras.layers.Dropout(0.5),
        ]
    return keras.Sequential([keras.Input((28, 28, 1)), *layers, keras.layers.Dense(CLASSES)])


def build_process(kind: str):
    from fedsim import learning
    from fedsim.learning import optimizers
    from fedsim.simulation import EMNIST_INPUT_SPEC

    def model_fn():
        return learning.from_keras_model(
            keras_model(kind), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), input_spec=EMNIST_INPUT_SPEC,
            metrics=[keras.metrics.SparseCategoricalAccuracy()],
        )

    return learning.build_weighted_fed_avg(
        model_fn, lambda: optimizers.build_sgdm(CLIENT_LR), server_optimizer_fn=lambda: optimizers.build_sgdm(SERVER_LR)
    )


def tff_datasets(arrays: list, ids: list) -> list:
    return [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=arrays[i][0], y=arrays[i][1])).batch(BATCH) for i in ids]


def in_memory_client_data(arrays: list):
    from fedsim.simulation.datasets import TestClientData

    data = TestClientData({f"{i:03d}": collections.OrderedDict(x=x, y=y) for i, (x, y) in enumerate(arrays)})
    return data.preprocess(lambda dataset: dataset.batch(BATCH))


def sqlite_client_data(arrays: list, directory: str):
    from fedsim.simulation.datasets import SqlClientData, write_sqlite

    path = os.path.join(directory, "emnist_like.sqlite")
    if not os.path.exists(path):
        write_sqlite(path, {"train": {f"{i:03d}": {"x": x, "y": y} for i, (x, y) in enumerate(arrays)}})
    features = {"x": tf.io.FixedLenFeature([28, 28, 1], tf.float32), "y": tf.io.FixedLenFeature([], tf.int32)}
    return SqlClientData(path, "train", features).preprocess(lambda dataset: dataset.batch(BATCH))


# Runners ---------------------------------------------------------------------------------------

class Raw:
    """The lower bound: per-client tf.function over the client's tensors, numpy averaging."""

    def __init__(self, kind: str, initial: list, over_datasets: bool = False, model: keras.Model = None):
        self.model = keras_model(kind) if model is None else model  # `model`: another architecture
        self.weights = [np.array(w) for w in initial]
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        variables = self.model.trainable_variables
        accuracy = keras.metrics.SparseCategoricalAccuracy()

        def step(x, y):
            with tf.GradientTape() as tape:
                logits = self.model(x, training=True)
                loss = loss_fn(y, logits)
            for variable, gradient in zip(variables, tape.gradient(loss, variables)):
                variable.assign_sub(CLIENT_LR * gradient)
            accuracy.update_state(y, logits)

        @tf.function(input_signature=[[tf.TensorSpec(v.shape, v.dtype) for v in variables],
                                      tf.TensorSpec([None, 28, 28, 1], tf.float32), tf.TensorSpec([None], tf.int32)])
        def sliced_epoch(weights, x, y):
            for variable, value in zip(variables, weights):
                variable.assign(value)
            accuracy.reset_state()
            n = tf.shape(y)[0]
            for i in tf.range((n + BATCH - 1) // BATCH):
                step(x[i * BATCH:tf.minimum((i + 1) * BATCH, n)], y[i * BATCH:tf.minimum((i + 1) * BATCH, n)])
            return [tf.convert_to_tensor(v) for v in variables], accuracy.variables[0], accuracy.variables[1]

        @tf.function
        def dataset_epoch(weights, dataset):
            for variable, value in zip(variables, weights):
                variable.assign(value)
            accuracy.reset_state()
            for batch in dataset:
                step(batch["x"], batch["y"])
            return [tf.convert_to_tensor(v) for v in variables], accuracy.variables[0], accuracy.variables[1]

        self.epoch = dataset_epoch if over_datasets else sliced_epoch
        self.over_datasets = over_datasets

    def round(self, arrays: list, ids: list) -> tuple:
        """(seconds, training accuracy)."""
        inputs = tff_datasets(arrays, ids) if self.over_datasets else [arrays[i] for i in ids]
        started = time.perf_counter()
        total, weight_sum, correct, seen = None, 0.0, np.float32(0), np.float32(0)
        for data in inputs:
            weights, hits, count = self.epoch(self.weights, data) if self.over_datasets else self.epoch(self.weights, *data)
            n = float(count.numpy())
            deltas = [(w.numpy() - w0) * n for w, w0 in zip(weights, self.weights)]
            total = deltas if total is None else [t + d for t, d in zip(total, deltas)]
            weight_sum += n
            correct += hits.numpy()  # float32 sums and division, as Keras' metric and fedsim's sum_then_finalize
            seen += count.numpy()
        self.weights = [w + SERVER_LR * t / weight_sum for w, t in zip(self.weights, total)]
        return time.perf_counter() - started, float(correct / seen)


class Fedsim:
    def __init__(self, kind: str, feed: str, directory: str, parallel: int = 2):
        import fedsim

        self.fedsim = fedsim
        self.process = build_process(kind)
        self.state = self.process.initialize()
        self.feed = feed
        self.context = fedsim.LocalExecutionContext(max_parallel_clients=parallel)
        self.client_data = {"memory": in_memory_client_data, "sqlite": lambda a: sqlite_client_data(a, directory)}.get(feed)

    def initial_weights(self) -> list:
        return [np.array(w) for w in self.process.get_model_weights(self.state).trainable]

    def round(self, arrays: list, ids: list) -> tuple:
        """(seconds in next, seconds building the datasets, training accuracy)."""
        started = time.perf_counter()
        if self.feed == "datasets":
            datasets = tff_datasets(arrays, ids)
        else:
            if callable(self.client_data):
                self.client_data = self.client_data(arrays)
            datasets = [self.client_data.create_tf_dataset_for_client(f"{i:03d}") for i in ids]
        built = time.perf_counter()
        with self.fedsim.execution_context(self.context):
            output = self.process.next(self.state, datasets)
        self.state = output.state
        accuracy = float(output.metrics["client_work"]["train"]["sparse_categorical_accuracy"])
        return time.perf_counter() - built, built - started, accuracy


def compare(kind: str, cohort: int, rounds: int, arrays: list, directory: str, feeds: list, parallel: list) -> dict:
    runners = {}
    for feed in feeds:
        for threads in (parallel if feed == "datasets" else parallel[-1:]):
            runners[f"fedsim {feed} x{threads}"] = Fedsim(kind, feed, directory, threads)
    first = next(iter(runners.values()))
    initial = first.initial_weights()
    runners["raw"] = Raw(kind, initial)
    runners["raw over tf.data"] = Raw(kind, initial, over_datasets=True)
    seconds = collections.defaultdict(list)
    building = collections.defaultdict(list)
    accuracies = collections.defaultdict(list)
    for round_num in range(1, rounds + 1):
        ids = sample(round_num, cohort)
        for name, runner in runners.items():
            result = runner.round(arrays, ids)
            seconds[name].append(result[0])
            accuracies[name].append(result[-1])
            if len(result) == 3:
                building[name].append(result[1])
    medians = {name: statistics.median(values[1:]) for name, values in seconds.items()}
    build = {name: statistics.median(values[1:]) for name, values in building.items()}
    weights = {name: r.weights if isinstance(r, Raw) else [np.array(w) for w in r.process.get_model_weights(r.state).trainable]
               for name, r in runners.items()}
    difference = max(float(np.abs(a - b).max()) for a, b in zip(weights[next(iter(runners))], weights["raw"]))
    return {"seconds": medians, "build": build, "accuracies": dict(accuracies), "max_dw": difference}


# Child processes: memory and start-up ----------------------------------------------------------

MEMORY_CLIENTS = 500


def lazy_client_data():
    """500 clients generated when one is asked for (from its id), so no client is held in memory."""
    from fedsim.simulation.datasets import ClientData

    def make(client_id):
        seed = tf.strings.to_hash_bucket_fast(client_id, 2**31 - 1)
        seeds = tf.stack([seed, tf.constant(0, tf.int64)])
        n = 80 + tf.random.stateless_uniform([], seeds, maxval=41, dtype=tf.int64)
        x = tf.random.stateless_uniform(tf.stack([n, 28, 28, 1]), seeds + 1)
        y = tf.random.stateless_uniform(tf.stack([n]), seeds + 2, maxval=CLASSES, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=tf.cast(y, tf.int32)))

    ids = [f"{i:03d}" for i in range(MEMORY_CLIENTS)]
    return ClientData.from_clients_and_tf_fn(ids, make).preprocess(lambda dataset: dataset.batch(BATCH))


def memory_child(kind: str, cohort: int) -> None:
    """Two rounds of `cohort` clients read lazily from ClientData; prints the peak RSS (KiB)."""
    data = lazy_client_data()
    runner = Fedsim(kind, "memory", "")
    for round_num in range(2):
        ids = np.random.RandomState(round_num).choice(MEMORY_CLIENTS, cohort, replace=False)
        runner.state = runner.process.next(runner.state, _LazyDatasets(data, ids)).state
    print(_peak_rss_kib())


class _LazyDatasets:
    """The sampled clients' datasets, each created when the context asks for it (ClientData-style)."""

    def __init__(self, data, ids):
        self.data, self.ids = data, list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tf.data.Dataset:
        return self.data.create_tf_dataset_for_client(f"{self.ids[index]:03d}")


def _peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that across exec,
    so a child started by a large parent would report the parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def startup_child(kind: str, runner: str, arrays_path: str) -> None:
    with np.load(arrays_path) as stored:
        arrays = [(stored[f"x{i}"], stored[f"y{i}"]) for i in range(len(stored.files) // 2)]
    ids = sample(1, 10)
    if runner == "fedsim":
        Fedsim(kind, "datasets", "").round(arrays, ids)
    else:
        Raw(kind, [np.array(w) for w in keras_model(kind).trainable_weights]).round(arrays, ids)
    print(time.time() - STARTED)


def child(*arguments: str) -> float:
    started = time.time()
    out = subprocess.run([sys.executable, __file__, *arguments], check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1]), time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--models", nargs="*", default=["mlp", "cnn"])
    parser.add_argument("--cohorts", nargs="*", type=int, default=[10, 50])
    parser.add_argument("--feeds", nargs="*", default=["datasets", "memory", "sqlite"])
    parser.add_argument("--parallel", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--no-children", action="store_true", help="skip the memory and start-up measurements")
    parser.add_argument("--memory-child", nargs=2, metavar=("MODEL", "CLIENTS"))
    parser.add_argument("--startup-child", nargs=3, metavar=("MODEL", "RUNNER", "ARRAYS"))
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child[0], int(args.memory_child[1]))
    if args.startup_child:
        return startup_child(*args.startup_child)
    arrays = client_arrays()
    sizes = [len(y) for _, y in arrays]
    print(f"FedAvg: {NUM_CLIENTS} clients, {np.mean(sizes):.0f} examples on average ({min(sizes)} to {max(sizes)}), batch {BATCH}, "
          f"1 epoch, client SGD {CLIENT_LR}, server SGD {SERVER_LR}; median s/round over rounds 2..{args.rounds}; "
          f"machine: {os.cpu_count()} cores, TensorFlow {tf.__version__}")
    with tempfile.TemporaryDirectory() as directory:
        for kind in args.models:
            for cohort in args.cohorts:
                result = compare(kind, cohort, args.rounds, arrays, directory, args.feeds, args.parallel)
                raw = result["seconds"]["raw"]
                print(f"\n{kind.upper()}, {cohort} clients/round (raw = {raw:.4f} s/round)")
                print(f"  {'runner':<24} {'s/round':>9} {'/ raw':>7} {'build datasets s':>17}")
                for name, value in result["seconds"].items():
                    build = result["build"].get(name)
                    print(f"  {name:<24} {value:>9.4f} {value / raw:>7.3f} {'' if build is None else f'{build:>17.4f}'}")
                if kind == "mlp":
                    first = next(iter(result["accuracies"]))
                    print(f"  per-round training accuracy, {first}: {[round(a, 6) for a in result['accuracies'][first]]}")
                    print(f"  per-round training accuracy, raw:          {[round(a, 6) for a in result['accuracies']['raw']]}")
                    print(f"  max |weights(fedsim) - weights(raw)| after {args.rounds} rounds: {result['max_dw']:.2e}")
                    differing = [name for name, values in result["accuracies"].items() if values != result["accuracies"]["raw"]]
                    print(f"  runners whose per-round accuracies differ from raw's: {', '.join(differing) or 'none'}")
    if args.no_children:
        return
    for kind in args.models:
        rss = [child("--memory-child", kind, str(cohort))[0] / 1024 for cohort in (10, MEMORY_CLIENTS)]
        print(f"\n{kind.upper()} peak RSS, 2 rounds: 10 clients/round {rss[0]:.0f} MiB, 500 clients/round {rss[1]:.0f} MiB, "
              f"ratio {rss[1] / rss[0]:.3f}")
        with tempfile.TemporaryDirectory() as directory:
            arrays_path = os.path.join(directory, "arrays.npz")
            np.savez(arrays_path, **{f"{k}{i}": v for i, pair in enumerate(client_arrays()) for k, v in zip("xy", pair)})
            startup = {runner: child("--startup-child", kind, runner, arrays_path)[1] for runner in ("raw", "fedsim")}
        print(f"{kind.upper()} process start to end of round 1 (10 clients): raw {startup['raw']:.1f} s, "
              f"fedsim {startup['fedsim']:.1f} s, ratio {startup['fedsim'] / startup['raw']:.2f}")


if __name__ == "__main__":
    main()
