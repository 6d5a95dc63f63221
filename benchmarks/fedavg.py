"""A FedAvg round in fedsim vs the plain-TensorFlow lower bound of the same arithmetic, per pipeline.

Workload (TFF's simulation benchmark): synthetic EMNIST-shaped data, 100 clients of about 107
examples each (21 to 304, lognormal, non-IID by label skew); K clients sampled per round (the
same sample for every runner); batch 20; client SGD 0.02, server SGD 1.0; example-weighted.
Models: a 784-200-200-62 MLP and TFF's EMNIST CNN (conv 32 3x3, conv 64 3x3, max-pool 2,
dropout 0.25, dense 128, dropout 0.5, dense 62).

Pipelines (how each client's dataset is built, the caller's code, timed apart):

- bare: `from_tensor_slices(arrays).batch(20)`;
- tutorial: as TFF's tutorials preprocess, `shuffle(100, seed=1).batch(20).map(format).prefetch(2)`;
- repeat5: `repeat(5).shuffle(100, seed=1).batch(20)` (five local epochs);
- sqlite: `ClientData.preprocess(tutorial)` over TFF's SQLite format, created for the sampled ids.

Runners of one parallelism N run in one child process, their rounds interleaved so they see the
same machine conditions; the median seconds per round over rounds 2..R. The child has
`TF_NUM_INTRAOP_THREADS=cores // N`: each of N clients side by side gets its share of the cores
for its ops, the sizing fedsim's context picks by itself (`fedsim.core.op_threads`) and the
fastest for the plain-TF loop too (on 2 cores, x2: one thread per op, a 26% shorter MLP round
than TensorFlow's default of all cores per op). TFF runs at its own defaults.

- raw xN: the lower bound at N clients side by side. One `tf.function` per client epoch traced
  once with a dynamic example dimension, batches sliced from the client's tensors with
  `tf.range` (the same number of examples per epoch and epochs as the pipeline), numpy
  weighted average; N model copies on N threads.
- fedsim xN: `process.next(state, datasets)` with `max_parallel_clients=N`. Its ratio is to
  raw xN: the same parallelism.

Also (not with --no-children): peak RSS at 10 vs 500 clients per round (child processes,
clients read lazily from ClientData) and seconds from process start to the end of round 1.
With --tff PYTHON (TFF 0.87's venv: ../shared/tools/setup_tff_venv.sh), TFF runs the same
pipelines on the same arrays in a child process (`tff_fedavg.py`), between the pipelines' runs.

    .venv/bin/python benchmarks/fedavg.py [--rounds 10] [--models mlp cnn] [--cohorts 10 50]
        [--pipelines bare tutorial repeat5 sqlite] [--parallel 1 2] [--tff /tmp/tffenv/bin/python]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
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


SHUFFLE_BUFFER, PREFETCH, REPEAT_EPOCHS = 100, 2, 5


def _format(batch):
    """The tutorials' `map` step (reshape features, labels to one column), kept to the model's shapes."""
    return collections.OrderedDict(x=tf.reshape(batch["x"], [-1, 28, 28, 1]), y=tf.reshape(batch["y"], [-1]))


PIPELINES = {
    "bare": lambda dataset: dataset.batch(BATCH),
    "tutorial": lambda dataset: dataset.shuffle(SHUFFLE_BUFFER, seed=1).batch(BATCH).map(_format).prefetch(PREFETCH),
    "repeat5": lambda dataset: dataset.repeat(REPEAT_EPOCHS).shuffle(SHUFFLE_BUFFER, seed=1).batch(BATCH),
    "sqlite": None,  # ClientData.preprocess(tutorial) over SQLite
}
EPOCHS = {"repeat5": REPEAT_EPOCHS}


def pipeline_datasets(arrays: list, ids: list, pipeline: str = "bare") -> list:
    return [PIPELINES[pipeline](tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=arrays[i][0], y=arrays[i][1])))
            for i in ids]


def tff_datasets(arrays: list, ids: list) -> list:
    return pipeline_datasets(arrays, ids, "bare")


def in_memory_client_data(arrays: list):
    from fedsim.simulation.datasets import TestClientData

    data = TestClientData({f"{i:03d}": collections.OrderedDict(x=x, y=y) for i, (x, y) in enumerate(arrays)})
    return data.preprocess(lambda dataset: dataset.batch(BATCH))


def sqlite_client_data(arrays: list, directory: str, preprocess=PIPELINES["tutorial"]):
    from fedsim.simulation.datasets import SqlClientData, write_sqlite

    path = os.path.join(directory, "emnist_like.sqlite")
    if not os.path.exists(path):
        write_sqlite(path, {"train": {f"{i:03d}": {"x": x, "y": y} for i, (x, y) in enumerate(arrays)}})
    features = {"x": tf.io.FixedLenFeature([28, 28, 1], tf.float32), "y": tf.io.FixedLenFeature([], tf.int32)}
    return SqlClientData(path, "train", features).preprocess(preprocess)


# Runners ---------------------------------------------------------------------------------------

class _RawWorker:
    """One model copy and its traced epoch (a thread of the lower bound runs one)."""

    def __init__(self, kind: str, over_datasets: bool, model: keras.Model = None):
        self.model = keras_model(kind) if model is None else model  # `model`: another architecture
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


class Raw:
    """The lower bound: per-client tf.function over the client's tensors, numpy averaging;
    `parallel` model copies train that many clients side by side."""

    def __init__(self, kind: str, initial: list, over_datasets: bool = False, model: keras.Model = None,
                 parallel: int = 1, epochs: int = 1):
        self.workers = [_RawWorker(kind, over_datasets, model) for _ in range(parallel)]
        self.model = self.workers[0].model
        self.weights = [np.array(w) for w in initial]
        self.over_datasets = over_datasets
        self.epochs = epochs
        self.pool = concurrent.futures.ThreadPoolExecutor(parallel) if parallel > 1 else None

    def _client(self, worker: _RawWorker, data) -> tuple:
        if self.over_datasets:
            return worker.epoch(self.weights, data)
        x, y = data
        if self.epochs > 1:  # the same examples per epoch as repeat(E) gives
            x, y = np.concatenate([x] * self.epochs), np.concatenate([y] * self.epochs)
        return worker.epoch(self.weights, x, y)

    def round(self, arrays: list, ids: list) -> tuple:
        """(seconds, training accuracy)."""
        inputs = tff_datasets(arrays, ids) if self.over_datasets else [arrays[i] for i in ids]
        started = time.perf_counter()
        if self.pool is None:
            outputs = [self._client(self.workers[0], data) for data in inputs]
        else:
            n = len(self.workers)

            def run(k):
                return [(i, self._client(self.workers[k], inputs[i])) for i in range(k, len(inputs), n)]

            pairs = [pair for chunk in self.pool.map(run, range(n)) for pair in chunk]
            outputs = [output for _, output in sorted(pairs, key=lambda pair: pair[0])]  # averaged in client order
        total, weight_sum, correct, seen = None, 0.0, np.float32(0), np.float32(0)
        for weights, hits, count in outputs:
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
        if self.feed in PIPELINES and PIPELINES[self.feed] is not None:
            datasets = pipeline_datasets(arrays, ids, self.feed)
        elif self.feed == "datasets":
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


def compare(kind: str, cohort: int, rounds: int, arrays: list, directory: str, pipeline: str, parallel: list) -> dict:
    """One pipeline: fedsim xN and raw xN for each N, rounds interleaved."""
    runners = {f"fedsim x{n}": Fedsim(kind, pipeline, directory, n) for n in parallel}
    initial = next(iter(runners.values())).initial_weights()
    for n in parallel:
        runners[f"raw x{n}"] = Raw(kind, initial, parallel=n, epochs=EPOCHS.get(pipeline, 1))
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
    return {"seconds": medians, "build": build, "accuracies": dict(accuracies)}


def compare_child(kind: str, cohort: str, rounds: str, pipeline: str, parallel: str) -> None:
    """`compare` at one parallelism, in a process whose TensorFlow threads are sized for it."""
    with tempfile.TemporaryDirectory() as directory:
        result = compare(kind, int(cohort), int(rounds), client_arrays(), directory, pipeline, [int(parallel)])
    print(json.dumps(result))


def compare_in_children(kind: str, cohort: int, rounds: int, pipeline: str, parallel: list) -> dict:
    """`compare` for each parallelism N in a child with `TF_NUM_INTRAOP_THREADS=cores // N`."""
    merged: dict = {"seconds": {}, "build": {}, "accuracies": {}}
    for n in parallel:
        environment = dict(os.environ, TF_NUM_INTRAOP_THREADS=str(max(1, (os.cpu_count() or 1) // n)))
        out = subprocess.run([sys.executable, __file__, "--compare-child", kind, str(cohort), str(rounds), pipeline, str(n)],
                             env=environment, capture_output=True, text=True, timeout=7200)
        if out.returncode != 0:
            raise RuntimeError(f"the x{n} child failed: {out.stderr.strip().splitlines()[-3:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        for key in merged:
            merged[key].update(result[key])
    return merged


def tff_child(python: str, kind: str, cohort: int, rounds: int, pipeline: str, arrays_path: str) -> dict:
    """TFF's median s/round on the same arrays and pipeline, from TFF's venv (None if it fails)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tff_fedavg.py")
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        # files, not pipes: a helper TFF leaves behind cannot hold the run open
        out = subprocess.run([python, script, arrays_path, kind, str(cohort), str(rounds), pipeline],
                             stdout=stdout, stderr=stderr, text=True, timeout=3600)
        stdout.seek(0)
        stderr.seek(0)
        out.stdout, out.stderr = stdout.read(), stderr.read()
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        print(f"  (TFF run failed: {out.stderr.strip().splitlines()[-1:] if out.stderr else out.returncode})")
        return {}
    return json.loads(lines[-1])


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
    parser.add_argument("--pipelines", nargs="*", default=list(PIPELINES), choices=list(PIPELINES))
    parser.add_argument("--parallel", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--tff", metavar="PYTHON", help="TFF 0.87 venv's python: adds TFF's column")
    parser.add_argument("--no-children", action="store_true", help="skip the memory and start-up measurements")
    parser.add_argument("--memory-child", nargs=2, metavar=("MODEL", "CLIENTS"))
    parser.add_argument("--startup-child", nargs=3, metavar=("MODEL", "RUNNER", "ARRAYS"))
    parser.add_argument("--compare-child", nargs=5, metavar=("MODEL", "CLIENTS", "ROUNDS", "PIPELINE", "PARALLEL"))
    args = parser.parse_args()
    if args.compare_child:
        return compare_child(*args.compare_child)
    if args.memory_child:
        return memory_child(args.memory_child[0], int(args.memory_child[1]))
    if args.startup_child:
        return startup_child(*args.startup_child)
    arrays = client_arrays()
    sizes = [len(y) for _, y in arrays]
    print(f"FedAvg: {NUM_CLIENTS} clients, {np.mean(sizes):.0f} examples on average ({min(sizes)} to {max(sizes)}), batch {BATCH}, "
          f"client SGD {CLIENT_LR}, server SGD {SERVER_LR}; median s/round over rounds 2..{args.rounds}; "
          f"machine: {os.cpu_count()} cores, TensorFlow {tf.__version__}. fedsim xN is divided by raw xN (same parallelism).")
    with tempfile.TemporaryDirectory() as directory:
        arrays_path = os.path.join(directory, "arrays.npz")
        np.savez(arrays_path, **{f"{k}{i}": v for i, pair in enumerate(arrays) for k, v in zip("xy", pair)})
        for kind in args.models:
            for cohort in args.cohorts:
                print(f"\n{kind.upper()}, {cohort} clients/round")
                columns = [f"{who} x{n}" for n in args.parallel for who in ("raw", "fedsim")]
                header = "".join(f"{c:>18}" for c in columns) + (f"{'TFF 0.87':>18}{'fedsim/TFF':>12}" if args.tff else "")
                print(f"  {'pipeline':<10}{header}{'build s':>9}")
                for pipeline in args.pipelines:
                    result = compare_in_children(kind, cohort, args.rounds, pipeline, args.parallel)
                    sec = result["seconds"]
                    cells = []
                    for n in args.parallel:
                        raw, ours = sec[f"raw x{n}"], sec[f"fedsim x{n}"]
                        cells += [f"{raw:>18.4f}", f"{ours:>9.4f} ({ours / raw:4.2f}x)"]
                    if args.tff:
                        tff = tff_child(args.tff, kind, cohort, args.rounds, pipeline, arrays_path).get("median_seconds")
                        best = min(sec[f"fedsim x{n}"] for n in args.parallel)
                        cells += [f"{tff:>9.4f} ({tff / sec['raw x1']:4.2f}x)" if tff else f"{'-':>18}",
                                  f"{tff / best:>11.2f}x" if tff else f"{'-':>12}"]
                    build = max(result["build"].values()) if result["build"] else 0.0
                    print(f"  {pipeline:<10}{''.join(cells)}{build:>9.4f}", flush=True)
                    accuracies = result["accuracies"]
                    first = f"fedsim x{args.parallel[0]}"
                    differing = [name for name in accuracies if name.startswith("fedsim") and accuracies[name] != accuracies[first]]
                    if differing and kind == "mlp":  # the CNN's dropout draws differ between runners
                        print(f"    per-round accuracies differ between fedsim runners: {differing}")
                    if pipeline == "bare" and kind == "mlp" and f"raw x{args.parallel[0]}" in accuracies:
                        same = accuracies[first] == accuracies[f"raw x{args.parallel[0]}"]
                        print(f"    bare pipeline: fedsim's per-round accuracies {'equal' if same else 'DIFFER FROM'} the raw loop's")
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
