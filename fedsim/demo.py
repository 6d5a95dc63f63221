"""`make demo`: the main job on the embedded default (the local simulation context).

Federated Averaging of a small Keras model over 10 simulated clients with synthetic
EMNIST-shaped, non-IID data: 10 rounds with a progress bar, then federated evaluation.
This is a command-line entry point; it prints its results.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import collections  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import fedsim  # noqa: E402
from fedsim import learning, simulation  # noqa: E402


def model_fn() -> learning.VariableModel:
    keras_model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Flatten(),
        keras.layers.Dense(200, activation="relu"),
        keras.layers.Dense(62),
    ])
    return learning.from_keras_model(
        keras_model,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        input_spec=simulation.EMNIST_INPUT_SPEC,
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )


def _dataset(pixels, labels) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=pixels, y=labels)).batch(20)


def main(rounds: int = 10, num_clients: int = 10) -> int:
    train_data, test_data = [], []
    for pixels, labels in simulation.emnist_like_client_arrays(num_clients, seed=0):
        held_out = len(labels) // 5  # each client keeps a fifth of its examples for evaluation
        train_data.append(_dataset(pixels[held_out:], labels[held_out:]))
        test_data.append(_dataset(pixels[:held_out], labels[:held_out]))
    process = learning.build_weighted_fed_avg(
        model_fn,
        client_optimizer_fn=lambda: learning.optimizers.build_sgdm(0.05),
        server_optimizer_fn=lambda: learning.optimizers.build_sgdm(1.0),
    )
    print(f"next: {process.next.type_signature}\n")
    state = process.initialize()
    bar = simulation.ProgressBar(rounds, "round", stream=sys.stdout)
    for round_number in range(1, rounds + 1):
        output = process.next(state, train_data)
        state = output.state
        train = output.metrics["client_work"]["train"]
        bar.update(round_number, loss=train["loss"], accuracy=train["sparse_categorical_accuracy"])
    bar.close()
    evaluation = learning.build_federated_evaluation(model_fn)(process.get_model_weights(state), test_data)["eval"]
    print(f"federated evaluation on held-out examples: loss={evaluation['loss']:.4f} "
          f"accuracy={evaluation['sparse_categorical_accuracy']:.4f} examples={evaluation['num_examples']}")
    print(f"serialized next: {len(fedsim.serialize_computation(process.next))} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
