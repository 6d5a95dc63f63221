"""`make demo`: the main job on the embedded default (the local simulation context).

For now: a federated computation over a few simulated clients (a broadcast, client work in
TensorFlow, a weighted mean and a secure sum), printed with its type signature and result.
"""

from __future__ import annotations

import collections
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fedsim  # noqa: E402

BATCH = collections.OrderedDict(x=(tf.float32, [None, 2]), y=(tf.float32, [None]))
MODEL = collections.OrderedDict(w=(tf.float32, [2]), b=tf.float32)


def build_round() -> fedsim.FederatedComputation:
    """One round of federated linear regression: each client takes a gradient step."""

    @fedsim.tf_computation(MODEL, fedsim.SequenceType(BATCH))
    def client_update(model, dataset):
        w, b = model["w"], model["b"]
        examples = tf.constant(0.0)
        for batch in dataset:
            with tf.GradientTape() as tape:
                tape.watch([w, b])
                loss = tf.reduce_mean((tf.linalg.matvec(batch["x"], w) + b - batch["y"]) ** 2)
            grad_w, grad_b = tape.gradient(loss, [w, b])
            w, b = w - 0.1 * grad_w, b - 0.1 * grad_b
            examples += tf.cast(tf.shape(batch["y"])[0], tf.float32)
        return collections.OrderedDict(model=collections.OrderedDict(w=w, b=b), examples=examples, participated=tf.constant(1))

    @fedsim.federated_computation(fedsim.FederatedType(MODEL, fedsim.SERVER), fedsim.FederatedType(fedsim.SequenceType(BATCH), fedsim.CLIENTS))
    def federated_round(model, datasets):
        outputs = fedsim.federated_map(client_update, (fedsim.federated_broadcast(model), datasets))
        new_model = fedsim.federated_mean(outputs.model, weight=outputs.examples)
        participants = fedsim.federated_secure_sum_bitwidth(outputs.participated, 16)
        return new_model, participants

    return federated_round


def make_client_data(num_clients: int, seed: int = 0) -> list:
    rng = np.random.RandomState(seed)
    true_w, true_b = np.array([2.0, -1.0], np.float32), np.float32(0.5)
    datasets = []
    for _ in range(num_clients):
        n = rng.randint(20, 60)
        x = rng.randn(n, 2).astype(np.float32)
        y = (x @ true_w + true_b + 0.01 * rng.randn(n)).astype(np.float32)
        datasets.append(tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(10))
    return datasets


def main() -> int:
    federated_round = build_round()
    print(f"type signature: {federated_round.type_signature}")
    datasets = make_client_data(num_clients=5)
    model = collections.OrderedDict(w=np.zeros(2, np.float32), b=np.float32(0.0))
    for round_number in range(1, 11):
        model, participants = federated_round(model, datasets)
        print(f"round {round_number:2d}: w={np.round(model['w'], 3)} b={model['b']:.3f} clients={participants}")
    print(f"serialized size: {len(fedsim.serialize_computation(federated_round))} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
