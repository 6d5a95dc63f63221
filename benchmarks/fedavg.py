"""FedAvg round time vs the TensorFlow arithmetic inside it, and peak memory vs cohort size.

Synthetic EMNIST-shaped data (28x28x1, 62 classes, ~100 examples per client, non-IID: each
client draws most labels from a few classes), batch 20, one local epoch, client SGD 0.1.
Models: a 2x200 MLP and the small EMNIST CNN (two 3x3 convs, pooling, dense 128).

Baseline, same process and run, its rounds alternating with fedsim's so that both see the same
machine conditions: one Keras model, the client's local training in one compiled
`tf.function` per client, a numpy weighted average. Prints the median seconds per round
(rounds 2..R) of both, their ratio (bar: <= 1.10 at 10 clients per round), and the peak RSS of
fedsim at 10 and 200 clients per round, each measured in its own process with client datasets
built on access (as ClientData does), so the figure is fedsim's, not the inputs' (bar: <= 1.2x).

    .venv/bin/python benchmarks/fedavg.py [--rounds 6] [--models mlp cnn]
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

from fedsim import learning  # noqa: E402
from fedsim.learning import optimizers  # noqa: E402
from fedsim.simulation import EMNIST_INPUT_SPEC, emnist_like_client_arrays  # noqa: E402

BATCH, CLASSES = 20, 62
INPUT_SPEC = EMNIST_INPUT_SPEC


def keras_model(kind: str) -> keras.Model:
    if kind == "mlp":
        layers = [keras.layers.Flatten(), keras.layers.Dense(200, activation="relu"), keras.layers.Dense(200, activation="relu")]
    else:
        layers = [
            keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(2), keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
        ]
    return keras.Sequential([keras.Input((28, 28, 1)), *layers, keras.layers.Dense(CLASSES)])


def client_arrays(num_clients: int, seed: int = 0) -> list:
    return emnist_like_client_arrays(num_clients, seed=seed)


def datasets(arrays: list) -> list:
    return [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(BATCH) for x, y in arrays]


def build_process(kind: str):
    def model_fn():
        return learning.from_keras_model(
            keras_model(kind), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), input_spec=INPUT_SPEC
        )

    return learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1))


def fedsim_rounds(kind: str, client_data: list):
    """Yields (seconds, weights) per round of fedsim's FedAvg; first yields the initial weights."""
    process = build_process(kind)
    state = process.initialize()
    yield None, [np.array(w) for w in process.get_model_weights(state).trainable]
    while True:
        start = time.perf_counter()
        state = process.next(state, client_data).state
        seconds = time.perf_counter() - start
        yield seconds, [np.array(w) for w in process.get_model_weights(state).trainable]


def baseline_rounds(kind: str, initial: list, client_data: list):
    """Yields (seconds, weights) per round of the same arithmetic in plain TensorFlow + numpy."""
    model = keras_model(kind)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def local_training(weights, dataset):
        for variable, value in zip(model.trainable_variables, weights):
            variable.assign(value)
        examples = tf.constant(0.0)
        for batch in dataset:
            with tf.GradientTape() as tape:
                loss = loss_fn(batch["y"], model(batch["x"], training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            for variable, grad in zip(model.trainable_variables, grads):
                variable.assign_sub(0.1 * grad)
            examples += tf.cast(tf.shape(batch["y"])[0], tf.float32)
        return [tf.convert_to_tensor(v) for v in model.trainable_variables], examples

    weights = list(initial)
    while True:
        start = time.perf_counter()
        total, weight_sum = None, 0.0
        for dataset in client_data:
            new_weights, n = local_training(weights, dataset)
            n = float(n)
            deltas = [(w.numpy() - w0) * n for w, w0 in zip(new_weights, weights)]
            total = deltas if total is None else [t + d for t, d in zip(total, deltas)]
            weight_sum += n
        weights = [w + t / weight_sum for w, t in zip(weights, total)]
        yield time.perf_counter() - start, weights


def time_both(kind: str, client_data: list, rounds: int) -> tuple:
    """Alternates fedsim and baseline rounds, so both see the same machine conditions."""
    fedsim = fedsim_rounds(kind, client_data)
    _, initial = next(fedsim)
    baseline = baseline_rounds(kind, initial, client_data)
    fedsim_seconds, baseline_seconds = [], []
    for _ in range(rounds):
        seconds, fedsim_weights = next(fedsim)
        fedsim_seconds.append(seconds)
        seconds, baseline_weights = next(baseline)
        baseline_seconds.append(seconds)
    difference = max(float(np.abs(a - b).max()) for a, b in zip(fedsim_weights, baseline_weights))
    return statistics.median(fedsim_seconds[1:]), statistics.median(baseline_seconds[1:]), difference


class LazyClientDatasets:
    """Builds client i's dataset when the context asks for it, as ClientData does; holds none."""

    def __init__(self, num_clients: int):
        self.num_clients = num_clients

    def __len__(self) -> int:
        return self.num_clients

    def __getitem__(self, index: int) -> tf.data.Dataset:
        return datasets(client_arrays(1, seed=1000 + index))[0]


def memory_child(kind: str, num_clients: int) -> None:
    client_data = LazyClientDatasets(num_clients)
    process = build_process(kind)
    state = process.initialize()
    for _ in range(2):
        state = process.next(state, client_data).state
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--models", nargs="*", default=["mlp", "cnn"])
    parser.add_argument("--memory-child", nargs=2, metavar=("MODEL", "CLIENTS"))
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return
    client_data = datasets(client_arrays(args.clients))
    print(f"FedAvg, {args.clients} clients/round, ~100 examples each, batch {BATCH}, 1 epoch, {args.rounds} rounds")
    print(f"{'model':>5} {'fedsim s/round':>15} {'baseline s/round':>17} {'ratio':>6} {'max |dw|':>9} {'RSS@10 MiB':>11} {'RSS@200 MiB':>12} {'RSS ratio':>9}")
    for kind in args.models:
        fedsim_seconds, baseline_seconds, difference = time_both(kind, client_data, args.rounds)
        rss = []
        for cohort in (10, 200):
            out = subprocess.run([sys.executable, __file__, "--memory-child", kind, str(cohort)], check=True, capture_output=True, text=True)
            rss.append(int(out.stdout.split()[-1]) / 1024)
        print(
            f"{kind:>5} {fedsim_seconds:>15.4f} {baseline_seconds:>17.4f} {fedsim_seconds / baseline_seconds:>6.3f} "
            f"{difference:>9.1e} {rss[0]:>11.0f} {rss[1]:>12.0f} {rss[1] / rss[0]:>9.3f}"
        )


if __name__ == "__main__":
    main()
