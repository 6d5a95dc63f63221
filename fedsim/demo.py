"""`make demo`: the main job on the embedded default (the local simulation context).

Federated Averaging of a small Keras model over 10 simulated clients with synthetic
EMNIST-shaped, non-IID data: 10 rounds with a progress bar, then federated evaluation. It ends
with the swap: the same process, two more rounds, on three silos through the serverless server
on the local stack (moto), checked against the same two rounds simulated.
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


def main(rounds: int = 10, num_clients: int = 10, silo_rounds: int = 2) -> int:
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
    bar = keras.utils.Progbar(rounds, unit_name="round", stateful_metrics=["loss", "accuracy"])
    for round_number in range(1, rounds + 1):
        output = process.next(state, train_data)
        state = output.state
        train = output.metrics["client_work"]["train"]
        bar.update(round_number, values=[("loss", train["loss"]), ("accuracy", train["sparse_categorical_accuracy"])])
    evaluation = learning.build_federated_evaluation(model_fn)(process.get_model_weights(state), test_data)["eval"]
    print(f"federated evaluation on held-out examples: loss={evaluation['loss']:.4f} "
          f"accuracy={evaluation['sparse_categorical_accuracy']:.4f} examples={evaluation['num_examples']}")
    print(f"serialized next: {len(fedsim.serialize_computation(process.next))} bytes")
    if silo_rounds:
        swap_to_silos(process, state, train_data[:3], silo_rounds)
    return 0


def swap_to_silos(process, state, silo_datasets: list, rounds: int) -> None:
    """The same loop with the AWS context swapped in: three silo agents, the local stack."""
    import threading

    from fedsim import aws
    from fedsim.core import context_stack

    silo_ids = ["hospital-a", "hospital-b", "hospital-c"]
    simulated = state
    for _ in range(rounds):
        simulated = process.next(simulated, silo_datasets).state
    with aws.LocalStack(silo_ids) as stack:
        agents = [aws.SiloAgent(stack.silo_config(silo), silo, dataset) for silo, dataset in zip(silo_ids, silo_datasets)]
        threads = [threading.Thread(target=agent.run, kwargs={"stop_after_rounds": rounds, "idle_timeout": 120}, daemon=True)
                   for agent in agents]
        for thread in threads:
            thread.start()
        with aws.execution_context(stack, silos=silo_ids, round_deadline_seconds=120) as context:
            served = state
            for round_number in range(1, rounds + 1):
                output = process.next(served, silo_ids)
                served = output.state
                print(f"serverless round {round_number}: loss={output.metrics['client_work']['train']['loss']:.4f} "
                      f"silos={','.join(context.last_report.rounds[0]['aggregated'])} {context.last_report.seconds:.2f}s")
        for thread in threads:
            thread.join(timeout=60)
    with context_stack.execution_context(fedsim.LocalExecutionContext()):
        simulated_weights = process.get_model_weights(simulated).trainable
    served_weights = process.get_model_weights(served).trainable
    difference = max(float(abs(a - b).max()) for a, b in zip(simulated_weights, served_weights))
    print(f"serverless vs simulated weights after {rounds} rounds: max |difference| = {difference:.2e}")


if __name__ == "__main__":
    sys.exit(main())
