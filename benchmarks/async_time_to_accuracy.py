"""Time to accuracy on a virtual clock: synchronous FedAvg vs buffered asynchronous (FedBuff).

Workload: synthetic EMNIST-like data (`emnist_like_client_arrays`, 62 classes), 100 clients of
80 to 120 examples, a 784-62 softmax model, batch 20, client SGD 0.05 (one epoch), server SGD
1.0, example-weighted. A `LatencyModel` makes 10% of the clients 10x slower (1 s vs 10 s per
training task, no jitter). Test accuracy on 2,000 held-out examples (other clients, same
distribution), evaluated after every round / version.

- sync: `run_training_process`, 10 clients per round drawn uniformly; a round lasts as long as
  its slowest client.
- async: `run_async_training_process`, 10 clients training at once, a server step every K
  accepted updates (K = 5 and 10), FedBuff's staleness weight 1/sqrt(1+s).

Both see the same number of client updates (`--updates`, default 1,000). Printed: the target
(the sync run's final accuracy minus 1 point), the virtual time each reaches it, the speed-up,
and each run's final and best accuracy. Figures are virtual seconds: they do not depend on this machine.

    .venv/bin/python benchmarks/async_time_to_accuracy.py [--updates 1000] [--buffers 5 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json

import keras
import numpy as np
import tensorflow as tf

import fedsim as tff
from fedsim import simulation

NUM_CLIENTS = 100
COHORT = 10


def client_arrays():
    ids = [f"client_{i:03d}" for i in range(NUM_CLIENTS)]
    arrays = dict(zip(ids, simulation.emnist_like_client_arrays(NUM_CLIENTS, seed=0)))
    test = simulation.emnist_like_client_arrays(20, seed=1)
    test_x = np.concatenate([x for x, _ in test]).reshape(-1, 784)[:2000]
    test_y = np.concatenate([y for _, y in test])[:2000]
    return ids, arrays, (test_x, test_y)


def build(arrays):
    def dataset(client_id):
        x, y = arrays[client_id]
        return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x.reshape(-1, 784), y=y)).batch(20)

    spec = dataset(next(iter(arrays))).element_spec

    def keras_model():
        return keras.Sequential([keras.Input((784,)), keras.layers.Dense(62, kernel_initializer="zeros")])

    def model_fn():
        return tff.learning.models.from_keras_model(
            keras_model(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), input_spec=spec)

    process = tff.learning.algorithms.build_weighted_fed_avg(model_fn, lambda: tff.learning.optimizers.build_sgdm(0.05))
    return process, dataset


def accuracy_fn(process, test):
    x, y = test

    def accuracy(state) -> float:
        kernel, bias = (np.asarray(w) for w in process.get_model_weights(state).trainable)
        return float(np.mean(np.argmax(x @ kernel + bias, axis=1) == y))

    return accuracy


def run_sync(process, dataset, ids, latency, accuracy, rounds):
    sample = simulation.build_uniform_sampling_fn(ids, random_seed=0)
    clock, curve = 0.0, []

    class Clock(simulation.Callback):
        def on_round_end(self, round_num, metrics):
            nonlocal clock
            clock += latency.round_seconds(sample(round_num, COHORT), round_num)

    def evaluate(state, round_num):
        return {"accuracy": accuracy(state)}

    simulation.run_training_process(
        process, lambda r: [dataset(c) for c in sample(r, COHORT)], rounds,
        evaluation_fn=evaluate, evaluation_selection_fn=lambda r: r, callbacks=[Clock(), Recorder(curve, lambda: clock)],
        verbose=0)
    return curve


class Recorder(simulation.Callback):
    """(virtual time, accuracy) after each step; the clock callback runs first."""

    def __init__(self, curve, clock):
        super().__init__()
        self.curve, self.clock = curve, clock

    def on_round_end(self, round_num, metrics):
        self.curve.append((self.clock(), metrics["evaluation/accuracy"]))


def run_async(process, dataset, ids, latency, accuracy, updates, buffer_size):
    curve = []
    result = simulation.run_async_training_process(
        process, ids, dataset, total_versions=updates // buffer_size, buffer_size=buffer_size, concurrency=COHORT,
        latency=latency, evaluation_fn=lambda state, _: {"accuracy": accuracy(state)},
        evaluation_selection_fn=lambda v: v, seed=0, verbose=0)
    for version in result.versions:
        curve.append((version.virtual_time, version.metrics["evaluation"]["accuracy"]))
    staleness = [u.staleness for v in result.versions for u in v.updates]
    return curve, float(np.mean(staleness)), int(np.max(staleness))


def time_to(curve, target):
    return next((t for t, accuracy in curve if accuracy >= target), float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=1000, help="client updates per run")
    parser.add_argument("--buffers", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--json", help="write the curves here")
    args = parser.parse_args()
    ids, arrays, test = client_arrays()
    process, dataset = build(arrays)
    accuracy = accuracy_fn(process, test)
    latency = simulation.LatencyModel(ids, base_seconds=1.0, slow_fraction=0.1, slow_factor=10.0, seed=0)
    curves = {"sync": run_sync(process, dataset, ids, latency, accuracy, args.updates // COHORT)}
    stale = {}
    for k in args.buffers:
        curves[f"async K={k}"], *stale[f"async K={k}"] = run_async(process, dataset, ids, latency, accuracy, args.updates, k)
    target = curves["sync"][-1][1] - 0.01
    sync_time = time_to(curves["sync"], target)
    print(f"{NUM_CLIENTS} clients, 10% 10x slower; {args.updates} client updates per run; "
          f"target = sync final accuracy - 1 point = {target:.4f}")
    print(f"{'run':<12} {'virtual s to target':>20} {'speed-up':>9} {'final acc':>10} {'best acc':>9} {'virtual s total':>16} "
          f"{'staleness mean/max':>19}")
    for name, curve in curves.items():
        reached = time_to(curve, target)
        staleness = "-" if name == "sync" else f"{stale[name][0]:.2f} / {stale[name][1]}"
        best = max(accuracy for _, accuracy in curve)
        print(f"{name:<12} {reached:>20.1f} {sync_time / reached:>8.2f}x {curve[-1][1]:>10.4f} {best:>9.4f} {curve[-1][0]:>16.1f} "
              f"{staleness:>19}")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump({"target": target, "curves": curves}, stream)


if __name__ == "__main__":
    main()
