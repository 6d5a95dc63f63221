"""What record-level DP costs in time: a FedAvg round with DP-SGD clients against plain SGD clients.

Workload: `fedavg.py`'s (synthetic EMNIST-shaped clients of about 110 examples, batch 20, the
MLP and TFF's EMNIST CNN), 10 clients per round, the local context one client at a time. DP-SGD computes per-example
gradients with `tf.vectorized_map` (one vectorized backward pass per batch) plus the batch's
forward pass for the metrics; plain SGD one backward pass per batch. Beside each, the plain-TF
lower bound of the same arithmetic (`fedavg.Raw`: one traced epoch per client, batches sliced
from tensors, numpy averaging; for DP-SGD its step computes per-example gradients with the same
`tf.vectorized_map`, clips, sums, noises). Median s/round over rounds 2..R, the four runners'
rounds interleaved.

    .venv/bin/python benchmarks/dp_sgd_cost.py [--rounds 6] [--models mlp cnn]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fedavg  # noqa: E402

import fedsim  # noqa: E402
from fedsim import learning  # noqa: E402
from fedsim.learning import optimizers  # noqa: E402
from fedsim.simulation import EMNIST_INPUT_SPEC  # noqa: E402


def _process(kind: str, optimizer_fn):
    def model_fn():
        return learning.from_keras_model(fedavg.keras_model(kind), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                         input_spec=EMNIST_INPUT_SPEC)

    return learning.build_weighted_fed_avg(model_fn, optimizer_fn)


class _RawDpWorker:
    """The lower bound's worker with a DP-SGD step: per-example gradients (vectorized), clipped to
    `clip`, summed, Gaussian noise of stddev `noise * clip`, divided by the batch size."""

    def __init__(self, kind: str, clip: float, noise: float):
        self.model = fedavg.keras_model(kind)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        variables = self.model.trainable_variables
        accuracy = keras.metrics.SparseCategoricalAccuracy()

        def example_gradients(example):
            x, y = example
            with tf.GradientTape() as tape:
                loss = loss_fn(y[None], self.model(x[None], training=True))
            return tape.gradient(loss, variables)

        def step(x, y):
            grads = tf.vectorized_map(example_gradients, (x, y))
            norms = tf.sqrt(tf.add_n([tf.reduce_sum(tf.reshape(g * g, [tf.shape(g)[0], -1]), axis=1) for g in grads]))
            factors = tf.minimum(1.0, clip / tf.maximum(norms, 1e-12))
            count = tf.cast(tf.shape(y)[0], tf.float32)
            for variable, g in zip(variables, grads):
                total = tf.reduce_sum(g * tf.reshape(factors, [-1] + [1] * (g.shape.rank - 1)), axis=0)
                variable.assign_sub(fedavg.CLIENT_LR * (total + noise * clip * tf.random.normal(tf.shape(total))) / count)
            accuracy.update_state(y, self.model(x, training=True))

        @tf.function(input_signature=[[tf.TensorSpec(v.shape, v.dtype) for v in variables],
                                      tf.TensorSpec([None, 28, 28, 1], tf.float32), tf.TensorSpec([None], tf.int32)])
        def sliced_epoch(weights, x, y):
            for variable, value in zip(variables, weights):
                variable.assign(value)
            accuracy.reset_state()
            n = tf.shape(y)[0]
            for i in tf.range((n + fedavg.BATCH - 1) // fedavg.BATCH):
                step(x[i * fedavg.BATCH:tf.minimum((i + 1) * fedavg.BATCH, n)], y[i * fedavg.BATCH:tf.minimum((i + 1) * fedavg.BATCH, n)])
            return [tf.convert_to_tensor(v) for v in variables], accuracy.variables[0], accuracy.variables[1]

        self.epoch = sliced_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    args = parser.parse_args()
    arrays = fedavg.client_arrays()
    context = fedsim.LocalExecutionContext(max_parallel_clients=1)  # one client at a time, as the lower bound
    print(f"FedAvg, 10 clients/round, batch {fedavg.BATCH}; median s/round over rounds 2..{args.rounds}")
    print(f"  {'model':<5} {'raw SGD s':>10} {'SGD':>7} {'raw DP-SGD s':>13} {'DP-SGD':>7} {'raw DP/SGD':>11} {'DP/SGD':>7}")
    for kind in args.models:
        processes = {
            "sgd": _process(kind, lambda: optimizers.build_sgdm(fedavg.CLIENT_LR)),
            "dp": _process(kind, lambda: optimizers.build_dp_sgd(fedavg.CLIENT_LR, l2_norm_clip=1.0, noise_multiplier=1.0)),
        }
        states = {name: process.initialize() for name, process in processes.items()}
        initial = [np.array(w) for w in processes["sgd"].get_model_weights(states["sgd"]).trainable]
        raws = {"raw_sgd": fedavg.Raw(kind, initial), "raw_dp": fedavg.Raw(kind, initial)}
        raws["raw_dp"].workers = [_RawDpWorker(kind, clip=1.0, noise=1.0)]
        seconds = {name: [] for name in [*processes, *raws]}
        for round_num in range(1, args.rounds + 1):
            ids = fedavg.sample(round_num, 10)
            for name, process in processes.items():
                datasets = fedavg.pipeline_datasets(arrays, ids, "bare")
                started = time.perf_counter()
                with fedsim.execution_context(context):
                    states[name] = process.next(states[name], datasets).state
                seconds[name].append(time.perf_counter() - started)
            for name, raw in raws.items():
                seconds[name].append(raw.round(arrays, ids)[0])
        raw_sgd, sgd, raw_dp, dp = (statistics.median(seconds[name][1:]) for name in ("raw_sgd", "sgd", "raw_dp", "dp"))
        print(f"  {kind:<5} {raw_sgd:10.3f} {sgd / raw_sgd:6.2f}x {raw_dp:13.3f} {dp / raw_dp:6.2f}x {raw_dp / raw_sgd:10.2f}x "
              f"{dp / sgd:6.2f}x")


if __name__ == "__main__":
    main()
