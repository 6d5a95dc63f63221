"""What fedsim adds to a round over the TensorFlow arithmetic inside it.

A round: broadcast a 784-200-62 MLP's weights, each of 10 clients runs 5 SGD steps on batches
of 20 examples, and the server takes the example-weighted mean. The baseline does the same
arithmetic with one compiled `tf.function` per client call and a numpy weighted average, in
the same process and run. Prints the median seconds per round (rounds 2..R) of both and the
ratio, at one client at a time and at two side by side (each fedsim figure divided by the
baseline of the same parallelism).

    .venv/bin/python benchmarks/call_overhead.py [--rounds 15] [--clients 10]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fedsim  # noqa: E402

SIZES = [(784, 200), (200,), (200, 62), (62,)]
STEPS, BATCH = 5, 20
WEIGHTS_TYPE = [fedsim.TensorType(tf.float32, s) for s in SIZES]
DATA_TYPE = collections.OrderedDict(x=(tf.float32, [STEPS, BATCH, 784]), y=(tf.int32, [STEPS, BATCH]))


def local_training(weights, data):
    w1, b1, w2, b2 = weights
    for step in range(STEPS):
        with tf.GradientTape() as tape:
            tape.watch([w1, b1, w2, b2])
            hidden = tf.nn.relu(data["x"][step] @ w1 + b1)
            logits = hidden @ w2 + b2
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(data["y"][step], logits))
        grads = tape.gradient(loss, [w1, b1, w2, b2])
        w1, b1, w2, b2 = [v - 0.1 * g for v, g in zip([w1, b1, w2, b2], grads)]
    return [w1, b1, w2, b2], tf.constant(float(STEPS * BATCH))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()

    rng = np.random.RandomState(0)
    weights = [rng.randn(*s).astype(np.float32) * 0.05 for s in SIZES]
    clients = [
        collections.OrderedDict(
            x=rng.rand(STEPS, BATCH, 784).astype(np.float32), y=rng.randint(0, 62, (STEPS, BATCH)).astype(np.int32)
        )
        for _ in range(args.clients)
    ]

    client_update = fedsim.tf_computation(local_training, WEIGHTS_TYPE, DATA_TYPE)

    @fedsim.federated_computation(fedsim.FederatedType(WEIGHTS_TYPE, fedsim.SERVER), fedsim.FederatedType(DATA_TYPE, fedsim.CLIENTS))
    def federated_round(server_weights, client_data):
        outputs = fedsim.federated_map(client_update, (fedsim.federated_broadcast(server_weights), client_data))
        return fedsim.federated_mean(outputs[0], weight=outputs[1])

    compiled = tf.function(local_training)

    def baseline_round(server_weights):
        total, weight_sum = None, 0.0
        for data in clients:
            new_weights, n = compiled([tf.constant(w) for w in server_weights], data)
            n = float(n)
            scaled = [w.numpy() * n for w in new_weights]
            total = scaled if total is None else [t + s for t, s in zip(total, scaled)]
            weight_sum += n
        return [t / weight_sum for t in total]

    two_threads = concurrent.futures.ThreadPoolExecutor(2)

    def parallel_baseline_round(server_weights):
        """The baseline at fedsim's default parallelism: two clients side by side, averaged in order."""
        start = [tf.constant(w) for w in server_weights]
        outputs = list(two_threads.map(lambda data: compiled(start, data), clients))
        total, weight_sum = None, 0.0
        for new_weights, n in outputs:
            n = float(n)
            scaled = [w.numpy() * n for w in new_weights]
            total = scaled if total is None else [t + s for t, s in zip(total, scaled)]
            weight_sum += n
        return [t / weight_sum for t in total]

    def timed(round_fn):
        state, seconds = weights, []
        for _ in range(args.rounds):
            start = time.perf_counter()
            state = round_fn(state)
            seconds.append(time.perf_counter() - start)
        return state, statistics.median(seconds[1:])

    with fedsim.execution_context(fedsim.LocalExecutionContext(max_parallel_clients=2)):
        fedsim_state, fedsim_seconds = timed(lambda s: federated_round(s, clients))
    with fedsim.execution_context(fedsim.LocalExecutionContext(max_parallel_clients=1)):
        _, serial_seconds = timed(lambda s: federated_round(s, clients))
    baseline_state, baseline_seconds = timed(baseline_round)
    _, parallel_baseline_seconds = timed(parallel_baseline_round)
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(fedsim_state, baseline_state))
    print(f"{args.clients} clients x {STEPS} SGD steps of batch {BATCH}, 784-200-62 MLP, {args.rounds} rounds")
    print(f"baseline x1 median s/round: {baseline_seconds:.4f}  (tf.function per client + numpy weighted mean)")
    print(f"baseline x2 median s/round: {parallel_baseline_seconds:.4f}  (the same, two clients side by side)")
    print(f"fedsim x1   median s/round: {serial_seconds:.4f}  ratio to baseline x1: {serial_seconds / baseline_seconds:.3f}")
    print(f"fedsim x2   median s/round: {fedsim_seconds:.4f}  ratio to baseline x2: {fedsim_seconds / parallel_baseline_seconds:.3f}")
    print(f"max |weights difference| after {args.rounds} rounds: {difference:.2e}")


if __name__ == "__main__":
    main()
